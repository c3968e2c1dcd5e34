"""batch.py: folders: symlinks on either side, runs racing on one output folder, no empty folders left."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from psic_cli import batch
from psic_cli.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _images(folder, rgb_image, *names):
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb_image[:32, :48]).save(p)


def test_outputs_never_leave_the_output_folder(tiny_env, tmp_path, rgb_image):
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    _images(src, rgb_image, "sub/a.png", "b.png", "c.png")
    elsewhere.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)  # a folder symlink inside the output tree
    (out / "c.psic").symlink_to(elsewhere / "c.psic")  # a dangling file symlink where an output goes
    r = run("encode", src, "-o", out, "-m", "tiny-sh")
    assert r.exit_code == 5, r.stderr
    assert "sub is a symlink" in r.stderr and "c.psic is a symlink" in r.stderr
    assert "1 done" in r.stderr and "2 failed" in r.stderr
    assert list(elsewhere.iterdir()) == [] and (out / "b.psic").is_file()
    r = run("encode", src, "-o", out, "-m", "tiny-sh", "--force")  # --force does not write through them either
    assert r.exit_code == 5 and list(elsewhere.iterdir()) == []


def test_input_symlinks_outside_the_folder_need_the_flag(tiny_env, tmp_path, rgb_image):
    src, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    _images(src, rgb_image, "a.png")
    _images(outside, rgb_image, "secret.png")
    (src / "inner.png").symlink_to(src / "a.png")  # stays inside: followed
    (src / "leak.png").symlink_to(outside / "secret.png")
    r = run("encode", src, "-o", out, "-m", "tiny-sh")
    assert r.exit_code == 3, r.stderr
    assert "leak.png: symlink to outside the input folder" in r.stderr and "--follow-symlinks" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.psic", "inner.psic"]
    r = run("encode", src, "-o", out, "-m", "tiny-sh", "--follow-symlinks")
    assert r.exit_code == 0, r.stderr
    assert (out / "leak.psic").is_file()


def test_a_dev_zero_symlink_in_a_folder(tiny_env, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "z.psic").symlink_to("/dev/zero")
    r = run("decode", src, "-o", tmp_path / "views")
    assert r.exit_code == 3 and "symlink to outside" in r.stderr
    r = run("decode", src, "-o", tmp_path / "views", "--follow-symlinks")
    assert r.exit_code == 3 and "z.psic: is a character device" in r.stderr
    assert not (tmp_path / "views").exists()


def test_an_output_made_meanwhile_by_another_run_counts_as_skipped(tiny_env, tmp_path, rgb_image):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, rgb_image, "a.png", "b.png", "c.png")
    tasks, report = batch.plan("encode", src, out, ".psic", force=False)
    assert len(tasks) == 3
    out.mkdir()
    (out / "a.psic").write_bytes(b"written by the other run")
    done: list = []

    def racing(res):  # the other run also finishes c while we work on b
        done.append(res)
        (out / "c.psic").write_bytes(b"written by the other run")

    batch.run_batch("encode", tasks, report, {"model": "tiny-sh"}, 1, racing, out)
    assert report.failed == [] and report.skipped == 2 and report.done == 1, report
    assert (out / "c.psic").read_bytes() == b"written by the other run"
    assert [r.skipped for r in done] == [True, False, True]
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_no_empty_output_folders_after_a_wrong_key(tiny_env, tmp_path, rgb_image):
    from psic_cli.keys import generate_key, write_key

    src, coded = tmp_path / "in", tmp_path / "coded"
    _images(src, rgb_image, "a.png", "x/y/b.png")
    assert run("encode", src, "-o", coded, "-m", "tiny-sh").exit_code == 0
    other = tmp_path / "other.key"
    write_key(other, generate_key())
    r = run("decode", coded, "-o", tmp_path / "views", "--key", other)
    assert r.exit_code == 4 and "2 failed" in r.stderr
    assert not (tmp_path / "views").exists()
    (tmp_path / "kept").mkdir()  # an output folder that was there before stays
    assert run("decode", coded, "-o", tmp_path / "kept", "--key", other).exit_code == 4
    assert (tmp_path / "kept").is_dir() and list((tmp_path / "kept").iterdir()) == []


def test_missing_dirs_deepest_first(tmp_path):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    tasks = [batch.Task(tmp_path / "s1", out / "a" / "b" / "c" / "x.psic"), batch.Task(tmp_path / "s2", out / "y.psic")]
    assert batch.missing_dirs(out, tasks) == [out / "a" / "b" / "c", out / "a" / "b"]
    assert batch.missing_dirs(tmp_path / "new", [batch.Task(tmp_path, tmp_path / "new" / "z.psic")]) == [
        tmp_path / "new"]
    assert os.path.isdir(out / "a")


@pytest.mark.slow
def test_two_runs_racing_on_one_output_folder(tiny_env, tmp_path, rgb_image):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, rgb_image, *[f"{i:02d}.png" for i in range(16)])
    cmd = [sys.executable, "-m", "psic_cli", "encode", str(src), "-o", str(out), "-m", "tiny-sh"]
    env = {**os.environ, "PSIC_WEIGHTS": str(tiny_env)}
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    done = 0
    for err in errs:
        m = re.search(r"(\d+) done, (\d+) skipped \(already done\), 0 failed", err)
        assert m and int(m[1]) + int(m[2]) == 16, err
        done += int(m[1])
    assert done == 16 and len(list(out.glob("*.psic"))) == 16
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_an_unreadable_input_folder_is_reported(tmp_path, rgb_image, monkeypatch):
    src = tmp_path / "in"
    _images(src, rgb_image, "a.png", "locked/b.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(src / "locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    tasks, report = batch.plan("encode", src, tmp_path / "out", ".psic", force=False)
    assert [t.src.name for t in tasks] == ["a.png"]
    assert [(r.file, r.code) for r in report.failed] == [(str(src / "locked"), 3)]
    assert "cannot read folder (Permission denied)" in report.failed[0].message
