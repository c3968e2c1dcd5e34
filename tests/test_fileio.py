"""fileio.py: atomic outputs whose temporary files never outlive an interrupt (or a later run)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from psic_cli import fileio
from psic_cli.errors import OutputExists


def _parts(folder):
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part"))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temp_name_carries_the_pid(tmp_path):
    t = fileio.temp_path(tmp_path / "photo.psic")
    assert t.parent == tmp_path and t.name == f".photo.psic.psic-{os.getpid()}.part"
    assert len(fileio.temp_path(tmp_path / ("x" * 250)).name) < 255


def test_a_later_run_removes_stale_temps_only(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_swept", set())
    dead = fileio.temp_path(tmp_path / "a.psic", _dead_pid())
    alive = fileio.temp_path(tmp_path / "b.psic", os.getppid())  # another run still writing
    foreign = tmp_path / ".c.psic.xyz.part"  # not named by psic: not ours to remove
    for p in (dead, alive, foreign):
        p.write_bytes(b"partial")
    fileio.atomic_write(tmp_path / "d.psic", b"data")
    assert not dead.exists() and alive.exists() and foreign.exists()
    assert (tmp_path / "d.psic").read_bytes() == b"data"


def test_own_leftover_with_a_reused_pid_is_replaced(tmp_path):
    fileio.temp_path(tmp_path / "a.psic").write_bytes(b"left by an earlier process with our pid")
    fileio.atomic_write(tmp_path / "a.psic", b"new")
    assert (tmp_path / "a.psic").read_bytes() == b"new" and _parts(tmp_path) == []


def test_output_that_appears_meanwhile(tmp_path):
    with pytest.raises(OutputExists):
        with fileio.atomic_output(tmp_path / "a.psic") as tmp:
            tmp.write_bytes(b"mine")
            (tmp_path / "a.psic").write_bytes(b"theirs")  # another run finished first
    assert (tmp_path / "a.psic").read_bytes() == b"theirs" and _parts(tmp_path) == []


class _InterruptAt:
    """A tracer that raises KeyboardInterrupt at the n-th bytecode executed in fileio.py."""

    def __init__(self, n: int):
        self.n, self.count = n, 0

    def __call__(self, frame, event, arg):
        if frame.f_code.co_filename != fileio.__file__:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.count += 1
            if self.count == self.n:
                raise KeyboardInterrupt
        return self


@pytest.mark.parametrize("force", [False, True])
def test_an_interrupt_at_any_bytecode_leaves_nothing_partial(tmp_path, monkeypatch, force):
    """Ctrl-C at every point of atomic_write: the target is either absent (or, with --force, the old
    file) or complete, and no temporary file is left."""
    monkeypatch.setattr(fileio, "_swept", {str(tmp_path)})
    data = os.urandom(1000)
    n, interrupted = 0, 0
    while True:
        n += 1
        folder = tmp_path / str(n)
        folder.mkdir()
        if force:
            (folder / "out.psic").write_bytes(b"old")
        monkeypatch.setattr(fileio, "_swept", {os.path.abspath(folder)})
        tracer = _InterruptAt(n)
        sys.settrace(tracer)
        try:
            fileio.atomic_write(folder / "out.psic", data, force=force)
        except KeyboardInterrupt:
            interrupted += 1
        finally:
            sys.settrace(None)
        assert _parts(folder) == [], f"interrupt at bytecode {n} left {_parts(folder)}"
        out = folder / "out.psic"
        assert not out.exists() or out.read_bytes() in (data, b"old" if force else data), n
        if tracer.count < n:  # ran to the end without reaching the n-th bytecode
            break
    assert interrupted > 50


def _encode_big(tiny_env, tmp_path):
    from psic_cli import codec

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1024, 1536, 3), dtype=np.uint8)
    src = tmp_path / "big.psic"
    src.write_bytes(codec.encode_pixels(pixels, "tiny-sh"))
    return src


@pytest.mark.slow
def test_sigint_and_sigterm_during_a_write(tiny_env, tmp_path):
    """The real CLI writing a large PNG, signalled at several moments (also right while its temporary file
    exists): exit 130 (SIGINT) or 143 (SIGTERM) with one line, and no temporary file left; a SIGKILL's
    leftover is removed by the next run."""
    src = _encode_big(tiny_env, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PSIC_WEIGHTS": str(tiny_env)}
    cmd = [sys.executable, "-m", "psic_cli", "decode", str(src), "-o", str(out_dir / "big.png"), "--force"]
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}
    moments = [(signal.SIGTERM, 0.3), (signal.SIGTERM, 2.0), (signal.SIGINT, "part"), (signal.SIGTERM, "part"),
               (signal.SIGKILL, "part")]
    seen_part, codes = 0, []
    # a signal sent the moment the temporary file appears can still arrive after the write ended (exit 0,
    # seen once): such a "part" moment is tried again, up to three times
    moments = [m for m in moments for _ in range(3 if m[1] == "part" else 1)]
    done: set = set()
    for sig, when in moments:
        if (sig, when) in done:
            continue
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        if when == "part":
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and not _parts(out_dir):
                time.sleep(0.001)
            seen_part += bool(_parts(out_dir))
        else:
            time.sleep(when)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        codes.append(proc.returncode)
        if when != "part" or proc.returncode != 0:
            done.add((sig, when))
        # before the CLI is up (still importing) a signal kills it as by default: nothing was written yet
        allowed = (0, expected[sig]) if when == "part" else (0, expected[sig], -sig)
        assert proc.returncode in allowed, (sig, when, proc.returncode, err)
        if proc.returncode == expected[sig] and sig != signal.SIGKILL:
            assert len(err.strip().splitlines()) == 1 and "partial outputs removed" in err, err
        if sig != signal.SIGKILL:
            assert _parts(out_dir) == [], (sig, when, err)
    assert seen_part >= 2 and {130, 143} <= set(codes), codes  # signalled while the temporary file existed
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # the later run
    assert r.returncode == 0, r.stderr
    assert _parts(out_dir) == []


def test_a_fifo_or_device_output_is_never_replaced(tmp_path):
    from psic_cli.errors import OutputError

    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        fileio.atomic_write(fifo, b"data", force=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and _parts(tmp_path) == []
