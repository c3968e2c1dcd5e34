"""Drive the real Typer app (CliRunner) and check exit codes, outputs and that nothing partial is left."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from psic_cli.cli import app

runner = CliRunner()


@pytest.fixture()
def photo(tmp_path, rgb_image):
    p = tmp_path / "photo.jpg"
    Image.fromarray(rgb_image).save(p, quality=95)
    return p


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def test_encode_decode_defaults(tiny_env, photo, key_file):
    r = run("encode", photo, "-m", "tiny-sh")
    assert r.exit_code == 0, r.stderr
    psic = photo.with_suffix(".psic")
    assert psic.exists() and psic.read_bytes()[:4] == b"PSIC"
    r = run("decode", psic)
    assert r.exit_code == 0, r.stderr
    png = photo.with_suffix(".shielded.png")  # never the source's own name
    assert Image.open(png).size == (100, 70)
    r = run("decode", psic, "--key", key_file, "-o", photo.parent / "full.webp")
    assert r.exit_code == 0, r.stderr
    assert Image.open(photo.parent / "full.webp").format == "WEBP"


def test_shield_option(tiny_env, photo, tmp_path, key_file):
    assert run("encode", photo, "-m", "tiny-sh").exit_code == 0
    psic = photo.with_suffix(".psic")
    r = run("decode", psic, "--shield", "strong", "-o", tmp_path / "s.png")
    assert r.exit_code == 3 and "no trained strong shield" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("decode", psic, "--key", key_file, "--shield", "strong", "-o", tmp_path / "s.png")
    assert r.exit_code == 2 and "shielded view only" in r.stderr
    assert not (tmp_path / "s.png").exists()
    assert run("encode", photo, "-m", "tiny-views", "-o", tmp_path / "v.psic").exit_code == 0
    assert run("decode", tmp_path / "v.psic", "--shield", "strong", "-o", tmp_path / "s.png").exit_code == 0
    assert run("decode", tmp_path / "v.psic", "-o", tmp_path / "d.png").exit_code == 0
    assert Image.open(tmp_path / "s.png").tobytes() != Image.open(tmp_path / "d.png").tobytes()
    # --view strong is the same view; --shield subtle|strong stays as its older spelling
    assert run("decode", tmp_path / "v.psic", "--view", "strong", "-o", tmp_path / "s2.png").exit_code == 0
    assert Image.open(tmp_path / "s2.png").tobytes() == Image.open(tmp_path / "s.png").tobytes()
    r = run("decode", tmp_path / "v.psic", "--view", "strong", "--shield", "subtle", "-o", tmp_path / "s3.png")
    assert r.exit_code == 2 and "contradicts" in r.stderr and not (tmp_path / "s3.png").exists()


def test_never_overwrites_without_force(tiny_env, photo):
    out = photo.with_suffix(".psic")
    out.write_bytes(b"precious")
    r = run("encode", photo, "-m", "tiny-sh")
    assert r.exit_code == 5 and "--force" in r.stderr
    assert out.read_bytes() == b"precious"
    assert run("encode", photo, "-m", "tiny-sh", "--force").exit_code == 0
    assert out.read_bytes()[:4] == b"PSIC"


def test_wrong_key_writes_nothing(tiny_env, photo, tmp_path):
    from psic_cli.keys import generate_key, write_key

    assert run("encode", photo, "-m", "tiny-sh").exit_code == 0
    other = tmp_path / "other.key"
    write_key(other, generate_key())
    r = run("decode", photo.with_suffix(".psic"), "--key", other, "-o", tmp_path / "x.png")
    assert r.exit_code == 4
    assert "does not open" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_inputs_exit_3_with_one_line(tiny_env, tmp_path):
    junk = tmp_path / "junk.psic"
    junk.write_bytes(b"PSIC\x01\x00garbage")
    r = run("decode", junk)
    assert r.exit_code == 3 and len(r.stderr.strip().splitlines()) == 1
    notimg = tmp_path / "a.jpg"
    notimg.write_text("hello")
    r = run("encode", notimg, "-m", "tiny-sh")  # options are checked first: the model must exist
    assert r.exit_code == 3 and "not an image" in r.stderr
    assert run("encode", tmp_path / "missing.jpg", "-m", "tiny-sh").exit_code == 3
    assert not (tmp_path / "a.psic").exists()


def test_stdin_stdout(tiny_env, photo):
    r = run("encode", "-", "-o", "-", "-m", "tiny-sh", input=photo.read_bytes())
    assert r.exit_code == 0, r.stderr
    data = r.stdout_bytes
    assert data[:4] == b"PSIC"
    r = run("decode", "-", "-o", "-", input=data)
    assert r.exit_code == 0
    assert r.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    assert run("encode", "-", input=photo.read_bytes()).exit_code == 3  # stdin needs -o


def test_info_models_keygen(tiny_env, photo, tmp_path):
    import json

    run("encode", photo, "-m", "tiny-sh", "-q", "1")
    r = run("info", photo.with_suffix(".psic"), "--json")
    assert r.exit_code == 0
    meta = json.loads(r.stdout)
    assert meta["quality"] == 1 and meta["model"] == "tiny-sh" and meta["key_fingerprint"]
    r = run("models", "--json")
    rows = {m["model"]: m for m in json.loads(r.stdout)}
    assert set(rows) == {"tiny-sh", "tiny-msh", "tiny-views"}
    assert rows["tiny-sh"]["views"] == ["shielded", "full"]
    assert rows["tiny-views"]["views"] == ["shielded", "full", "strong", "machine"]
    k = tmp_path / "new.key"
    assert run("keygen", k).exit_code == 0
    assert oct(os.stat(k).st_mode & 0o777) == "0o600"
    assert run("keygen", k).exit_code == 5


def test_help_does_not_import_torch():
    code = "import sys; from psic_cli.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "psic_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Exit codes" in out.stdout


def test_quality_out_of_range(tiny_env, photo):
    r = run("encode", photo, "-m", "tiny-sh", "-q", "9")
    assert r.exit_code == 2 and "out of range" in r.stderr
    assert not photo.with_suffix(".psic").exists()


def test_decoded_pixels_close_to_api(tiny_env, photo):
    from psic_cli import codec

    run("encode", photo, "-m", "tiny-sh")
    run("decode", photo.with_suffix(".psic"))
    api = codec.decode(photo.with_suffix(".psic").read_bytes()).pixels
    assert np.array_equal(np.asarray(Image.open(photo.with_suffix(".shielded.png"))), api)


def _tree(root, rgb_image):
    (root / "a" / "b").mkdir(parents=True)
    Image.fromarray(rgb_image).save(root / "one.png")
    Image.fromarray(rgb_image[:40, :50]).save(root / "a" / "two.jpg")
    Image.fromarray(rgb_image[:33, :65]).save(root / "a" / "b" / "three.webp")
    (root / "a" / "broken.jpg").write_bytes(b"not really a jpeg")
    (root / "notes.txt").write_text("ignored")


def test_batch_folder_mirrors_skips_and_reports(tiny_env, tmp_path, rgb_image, key_file):
    src, out, views = tmp_path / "in", tmp_path / "out", tmp_path / "views"
    _tree(src, rgb_image)
    r = run("encode", src, "-o", out, "-m", "tiny-sh")
    assert r.exit_code == 3, r.stderr  # the broken file fails, the others finish
    assert "broken.jpg" in r.stderr and "3 done" in r.stderr and "1 failed" in r.stderr
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.psic"))
    assert made == ["a/b/three.psic", "a/two.psic", "one.psic"]
    (src / "a" / "broken.jpg").unlink()
    r = run("encode", src, "-o", out, "-m", "tiny-sh")
    assert r.exit_code == 0 and "0 done, 3 skipped" in r.stderr
    r = run("decode", out, "-o", views, "--key", key_file)
    assert r.exit_code == 0, r.stderr
    assert sorted(p.relative_to(views).as_posix() for p in views.rglob("*.png")) == [
        "a/b/three.full.png", "a/two.full.png", "one.full.png"]
    assert Image.open(views / "a" / "b" / "three.full.png").size == (65, 33)
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.slow
def test_batch_two_workers(tiny_env, tmp_path, rgb_image):
    src, out = tmp_path / "in", tmp_path / "out"
    _tree(src, rgb_image)
    (src / "a" / "broken.jpg").unlink()
    r = run("encode", src, "-o", out, "-m", "tiny-sh", "--jobs", "2")
    assert r.exit_code == 0, r.stderr
    assert len(list(out.rglob("*.psic"))) == 3


def test_mutated_files_one_line_errors_nothing_written(tiny_env, rgb_image, tmp_path):
    """A fast slice of benchmarks/fuzz_reader.py through the real CLI."""
    import random
    import struct
    import zlib

    from psic_cli import codec

    valid = codec.encode_pixels(rgb_image, "tiny-sh")
    rng = random.Random(1)
    cases = [b"", b"PSIC", valid[:-1], valid[:10], b"\x89PNG" + valid[4:], rng.randbytes(300)]
    for _ in range(12):
        b = bytearray(valid)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        cases.append(bytes(b))
    body = bytearray(valid[:-4])
    body[4] = 7  # a future version, correctly checksummed
    cases.append(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))))
    src, dst = tmp_path / "c.psic", tmp_path / "c.png"
    for data in cases:
        src.write_bytes(data)
        r = run("decode", src, "-o", dst)
        assert r.exit_code == 3, (data[:16], r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not dst.exists()


def test_info_does_not_import_torch(tiny_env, photo):
    assert run("encode", photo, "-m", "tiny-sh").exit_code == 0
    code = ("import sys; from psic_cli.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['info', {str(photo.with_suffix('.psic'))!r}]); "
            "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_guards_fail_before_work(tiny_env, tmp_path, photo):
    from psic_cli import codec

    # folder decode never writes beside the originals
    assert run("encode", photo.parent, "-m", "tiny-sh").exit_code == 0
    r = run("decode", photo.parent)
    assert r.exit_code == 3 and "needs -o" in r.stderr
    # a bad option fails once for a whole folder
    r = run("encode", photo.parent, "-o", tmp_path / "o", "-q", "9", "-m", "tiny-sh")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    # decode's pixel limit and the output format's size limit are checked from the header
    wide = codec.encode_pixels(np.zeros((8, 17000, 3), np.uint8), "tiny-sh", 1)
    (tmp_path / "wide.psic").write_bytes(wide)
    r = run("decode", tmp_path / "wide.psic", "-o", tmp_path / "wide.webp")
    assert r.exit_code == 5 and "too large for WEBP" in r.stderr
    r = run("decode", tmp_path / "wide.psic", "-o", tmp_path / "wide.png", "--max-pixels", "1000")
    assert r.exit_code == 3 and "pixel limit" in r.stderr
    assert not (tmp_path / "wide.webp").exists() and not (tmp_path / "wide.png").exists()
    assert run("keygen", "-").exit_code == 5


@pytest.mark.slow
def test_ctrl_c_leaves_no_partial_files_and_rerun_continues(tiny_env, tmp_path, rgb_image):
    import signal
    import time

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(40):
        Image.fromarray(np.roll(rgb_image, i, axis=1)).save(src / f"{i:02d}.png")
    cmd = [sys.executable, "-m", "psic_cli", "encode", str(src), "-o", str(out), "-m", "tiny-sh", "--quiet"]
    env = {**os.environ, "PSIC_WEIGHTS": str(tiny_env)}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.psic"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err
    parts = [p.name for p in out.rglob("*") if p.name.endswith(".part")]
    assert not parts, (parts, err)
    done_before = len(list(out.rglob("*.psic")))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(list(out.rglob("*.psic"))) == 40, sorted(p.name for p in out.rglob("*"))
    assert done_before <= 40
