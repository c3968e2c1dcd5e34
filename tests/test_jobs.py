"""jobs.py: reading inputs (regular files only, header first, capped) and the order of the early checks."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from psic_cli import container, jobs
from psic_cli.cli import app
from psic_cli.errors import FormatError, InputError

runner = CliRunner()


# A small wrapper runs the CLI and reports its children's usage: measured from this (large) test process,
# the peak RSS of a child would count the memory it had when forked, before it became the CLI.
_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
         "print('usage', r.returncode, u.ru_utime + u.ru_stime, u.ru_maxrss, file=sys.stderr)")


def _run_measured(args: list[str], timeout: float = 60, **kw) -> tuple[int, float, int, str]:
    """Run ``python -m psic_cli ARGS``; return (exit code, CPU seconds, peak RSS in MB, its stderr)."""
    r = subprocess.run([sys.executable, "-c", _WRAP, sys.executable, "-m", "psic_cli", *args],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout, **kw)
    err, _, usage = r.stderr.rpartition("usage ")
    code, cpu, rss_kb = usage.split()
    return int(code), float(cpu), int(rss_kb) // 1024, err


@pytest.mark.parametrize("cmd", [["decode", "/dev/zero", "-o", "OUT/x.png"], ["info", "/dev/zero"],
                                 ["decode", "-", "-o", "OUT/y.png"]])
def test_dev_zero_refused_fast_and_small(tmp_path, cmd):
    cmd = [c.replace("OUT", str(tmp_path)) for c in cmd]
    with open("/dev/zero", "rb") as zero:
        code, cpu, rss_mb, err = _run_measured(cmd, stdin=zero)
    assert code == 3, err
    assert len(err.strip().splitlines()) == 1, err
    assert cpu < 1.0 and rss_mb < 200, (cpu, rss_mb)
    assert list(tmp_path.iterdir()) == []


def test_fifo_input_refused_at_once(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "psic_cli", "encode", str(fifo), "-o", str(tmp_path / "x.psic")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "FIFO" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert time.time() - t0 < 30
    with pytest.raises(InputError, match="FIFO"):
        jobs.read_psic(str(fifo))


def test_fifo_in_a_folder_fails_alone(tiny_env, tmp_path, rgb_image):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb_image).save(src / "a.png")
    os.mkfifo(src / "b.png")
    r = subprocess.run([sys.executable, "-m", "psic_cli", "encode", str(src), "-o", str(tmp_path / "out"),
                        "-m", "tiny-sh"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PSIC_WEIGHTS": str(tiny_env)})
    assert r.returncode == 3, r.stderr
    assert "b.png: is a FIFO" in r.stderr and "1 done" in r.stderr and "1 failed" in r.stderr


class _Endless(io.RawIOBase):
    """``head`` then zeros for ever; counts what was read."""

    def __init__(self, head: bytes):
        self.head, self.read_bytes = head, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = len(b)
        chunk = (self.head[self.read_bytes:] + bytes(n))[:n]
        b[:n] = chunk
        self.read_bytes += n
        return n


def test_stdin_read_stops_at_what_the_header_allows(tiny_env, monkeypatch, rgb_image):
    from psic_cli import codec

    valid = codec.encode_pixels(rgb_image[:8, :8], "tiny-sh")
    header, end = container.unpack_header(valid)
    stream = _Endless(valid[:end])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(stream)))
    with pytest.raises(FormatError, match="stdin: more bytes than a 8x8 file can hold"):
        jobs.read_psic("-")
    assert stream.read_bytes <= container.max_file_size(header) + (1 << 21)


def test_regular_file_larger_than_its_header_allows(tiny_env, tmp_path, rgb_image):
    from psic_cli import codec

    valid = codec.encode_pixels(rgb_image[:8, :8], "tiny-sh")
    big = tmp_path / "big.psic"
    with open(big, "wb") as f:
        f.write(valid)
        f.truncate(container.max_file_size(container.unpack_header(valid)[0]) + 1)
    with pytest.raises(FormatError, match="more than a 8x8 file can hold"):
        jobs.read_psic(str(big))
    (tmp_path / "ok.psic").write_bytes(valid)
    assert jobs.read_psic(str(tmp_path / "ok.psic")) == valid


def test_input_faults_outrank_the_output(tmp_path):
    """A missing, special or folder input is the input's fault (3), even when the output exists."""
    (tmp_path / "missing.png").write_bytes(b"x")
    (tmp_path / "out.psic").write_bytes(b"x")
    (tmp_path / "adir.psic").mkdir()
    cases = [["decode", tmp_path / "missing.psic"], ["encode", tmp_path / "nothere.jpg", "-o", tmp_path / "out.psic"],
             ["encode", "/dev/null", "-o", tmp_path / "out.psic"]]
    for args in cases:
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 3, (args, r.stderr)
    with pytest.raises(InputError, match="is a folder"):
        jobs.decode_file(str(tmp_path / "adir.psic"), str(tmp_path / "missing.png"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_input_is_bad_input(tmp_path):
    p = tmp_path / "secret.psic"
    p.write_bytes(b"PSIC")
    p.chmod(0)
    (tmp_path / "secret.png").write_bytes(b"x")
    r = runner.invoke(app, ["decode", str(p)])
    assert r.exit_code == 3 and "cannot read" in r.stderr


def test_images_still_read(tiny_env, tmp_path, rgb_image):
    Image.fromarray(rgb_image).save(tmp_path / "a.png")
    data = jobs.read_input(str(tmp_path / "a.png"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb_image)
    with pytest.raises(InputError, match="too large"):
        jobs.read_input(str(tmp_path / "a.png"), limit=10)
