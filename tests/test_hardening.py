"""Crafted files, decode bounds and output safety: every case ends in one error line and a clean exit."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from psic_cli import codec, container
from psic_cli.cli import app
from psic_cli.errors import FormatError

from .conftest import REPO


def _crafted(data: bytes, width: int, height: int) -> bytes:
    """The same strings behind a header that claims ``width`` x ``height`` (z shape and CRC to match)."""
    f = container.unpack(data)
    h = dataclasses.replace(f.header, width=width, height=height)
    t = f.tiles[0]
    return container.pack(container.PsicFile(h, (container.Tile(container.expected_z_shape(h), t.checksum,
                                                                 t.strings),)))


def _env(tiny_env) -> dict:
    return {**os.environ, "PSIC_WEIGHTS": str(tiny_env), "HF_HUB_OFFLINE": "1"}


class _Crashing:
    def decode_with_indexes(self, *args):
        os.kill(os.getpid(), signal.SIGSEGV)


class _Fine:
    def decode_with_indexes(self, data, indexes, *args):
        return [i - 3 for i in indexes]


class _Slow:
    def decode_with_indexes(self, data, indexes, *args):
        time.sleep(30)
        return indexes


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_rans_over_read_kills_only_a_child():
    """A decoder that dies of SIGSEGV in the child is reported as a FormatError in this process; the
    next decode forks a fresh child, which then serves one string after another."""
    from psic_cli.models.rans_guard import ChildDecoder, decode_in_child

    crashing = ChildDecoder(_Crashing())
    with pytest.raises(FormatError, match="signal"):
        crashing.decode(b"\0" * 8, [0] * 10, [], [], [])
    assert not crashing.alive
    fine = ChildDecoder(_Fine())
    assert fine.decode(b"\0" * 8, [1, 2, 3], [], [], []).tolist() == [-2, -1, 0]
    pid = fine.pid
    assert fine.decode(b"\0" * 8, list(range(100_000)), [[0, 1]], [2], [0]).tolist() == list(range(-3, 99_997))
    assert fine.pid == pid and not _gone(pid)  # one child, two strings
    fine.close()
    assert _gone(pid)
    with pytest.raises(FormatError, match="signal"):
        decode_in_child(_Crashing(), b"\0" * 8, [0] * 10, [], [], [])
    assert decode_in_child(_Fine(), b"\0" * 8, [5], [], [], []).tolist() == [2]


def test_an_interrupted_decode_ends_its_child():
    """Ctrl-C or --timeout in this process while the child decodes: the child is killed and reaped."""
    from psic_cli.models.rans_guard import ChildDecoder

    slow = ChildDecoder(_Slow())
    pid = slow.pid

    def _alarm(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            slow.decode(b"\0" * 8, [1], [], [], [])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not slow.alive and _gone(pid)


def test_a_forked_process_forks_its_own_decoder_child():
    """A process forked after a decode (a batch worker, say) must not talk to its parent's child."""
    from psic_cli.models import rans_guard

    rans_guard.decode_in_child(_Fine(), b"\0" * 8, [1], [], [], [])
    parent_child = rans_guard.shared_child().pid
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = rans_guard.shared_child() is None and rans_guard.decode_in_child(_Fine(), b"\0" * 8, [4], [], [], []
                                                                       ).tolist() == [1]
        ok = ok and rans_guard.shared_child().pid != parent_child
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    os.close(r)
    assert got == b"1"
    assert rans_guard.shared_child().pid == parent_child and not _gone(parent_child)


def test_rans_string_lengths_checked():
    with pytest.raises(FormatError, match="rANS"):
        container.check_string(b"\0" * 4)
    with pytest.raises(FormatError, match="rANS"):
        container.check_string(b"\0" * 10)
    container.check_string(b"\0" * 12)


def test_crafted_size_ends_in_format_error_not_a_crash(tiny_env, rgb_image, tmp_path):
    """A small valid file whose header (and z shape, and CRC) claims a huge image: the rANS decoder is
    asked for far more symbols than the strings hold.  Exit 3, one line, nothing written."""
    valid = codec.encode_pixels(rgb_image[:64, :64], "tiny-sh", 2)
    bad = tmp_path / "crafted.psic"
    bad.write_bytes(_crafted(valid, 1024, 16384))
    out = tmp_path / "out.png"
    r = subprocess.run([sys.executable, "-m", "psic_cli", "decode", str(bad), "-o", str(out)], cwd=REPO,
                       env=_env(tiny_env), capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_info_rejects_payload_that_does_not_fit_the_header(tiny_env, rgb_image):
    valid = codec.encode_pixels(rgb_image[:64, :64], "tiny-sh", 2)
    f = container.unpack(valid)
    h = dataclasses.replace(f.header, width=1024, height=1024)  # z shape left as the 64x64 file's
    with pytest.raises(FormatError, match="tile shape"):
        codec.read_info(container.pack(container.PsicFile(h, f.tiles)))
    t = f.tiles[0]
    short = container.Tile(t.z_shape, t.checksum, (t.strings[0], b"\0" * 4))
    with pytest.raises(FormatError, match="z string"):
        codec.read_info(container.pack(container.PsicFile(f.header, (short,))))
    assert codec.read_info(valid)["width"] == 64


@pytest.mark.skipif(not (REPO / "weights" / "psic-sh.safetensors").exists(), reason="psic-sh not installed")
def test_reported_segfault_reproducer(tmp_path):
    """The reported case: a 64x64 crop of kodim23 at quality 3 with the default model, header rewritten to
    1024x16384 (z shape and CRC to match).  It used to die of SIGSEGV (exit 139)."""
    from .conftest import EXAMPLES

    img = np.asarray(Image.open(EXAMPLES / "kodim23.png").convert("RGB"))[:64, :64].copy()
    bad = tmp_path / "crafted.psic"
    bad.write_bytes(_crafted(codec.encode_pixels(img, "psic-sh", 3), 1024, 16384))
    out = tmp_path / "out.png"
    env = {k: v for k, v in os.environ.items() if k != "PSIC_WEIGHTS"}
    r = subprocess.run([sys.executable, "-m", "psic_cli", "decode", str(bad), "-o", str(out)], cwd=REPO,
                       env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


# ---------------------------------------------------------------- CLI: bounds, the source image, options
runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def _md5(p) -> str:
    import hashlib

    return hashlib.md5(p.read_bytes()).hexdigest()


@pytest.fixture()
def coded(tiny_env, tmp_path, rgb_image):
    """photo.png and photo.psic made from it, side by side."""
    photo = tmp_path / "photo.png"
    Image.fromarray(rgb_image).save(photo)
    assert run("encode", photo, "-m", "tiny-sh").exit_code == 0
    return photo, photo.with_suffix(".psic")


def test_decode_never_touches_the_source(coded, key_file):
    photo, psic = coded
    before = _md5(photo)
    r = run("decode", psic)
    assert r.exit_code == 0, r.stderr
    assert (photo.parent / "photo.shielded.png").exists()
    r = run("decode", psic, "--key", key_file)
    assert r.exit_code == 0 and (photo.parent / "photo.full.png").exists()
    for extra in ([], ["--force"], ["--force", "--key", str(key_file)]):
        r = run("decode", psic, "-o", photo, *extra)
        assert r.exit_code == 5 and "refusing to overwrite" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # the same file under another name (a symlink) is still the source: identity, not the name, decides
    link = photo.parent / "alias.png"
    link.symlink_to(photo)
    r = run("decode", psic, "-o", link, "--force")
    assert r.exit_code == 5 and "refusing to overwrite" in r.stderr
    assert _md5(photo) == before


def test_decode_never_overwrites_a_jpeg_source(tiny_env, tmp_path, rgb_image):
    photo = tmp_path / "shot.JPG"
    Image.fromarray(rgb_image).save(photo, "JPEG")
    before = _md5(photo)
    assert run("encode", photo, "-m", "tiny-sh").exit_code == 0
    r = run("decode", tmp_path / "shot.psic", "-o", photo, "--force", "--format", "jpg")
    assert r.exit_code == 5 and _md5(photo) == before


def test_timeout_ends_decode_cleanly(coded, tmp_path):
    photo, psic = coded
    out = tmp_path / "t.png"
    r = run("decode", psic, "-o", out, "--timeout", "0.000001")
    assert r.exit_code == 3 and "--timeout" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert run("decode", psic, "-o", out, "--timeout", "0").exit_code == 2
    assert run("decode", psic, "-o", out, "--timeout", "600").exit_code == 0 and out.exists()
    from psic_cli.errors import DecodeTimeout

    with pytest.raises(DecodeTimeout):
        codec.decode(psic.read_bytes(), timeout=1e-6)


def test_usage_errors_exit_2_before_any_model_loads(coded, key_file, monkeypatch, tmp_path):
    from psic_cli.keys import generate_key, write_key

    photo, psic = coded

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(codec, "load_model", no_load)
    out = tmp_path / "x.png"
    for args in (["encode", photo, "-o", tmp_path / "x.psic", "-m", "tiny-sh", "-q", "9"],
                 ["decode", psic, "-o", out, "--shield", "medium"],
                 ["decode", psic, "-o", out, "--view", "full"],
                 ["decode", psic, "-o", out, "--view", "sideways", "--key", key_file],
                 ["decode", psic, "-o", tmp_path / "x.jpg", "--output-quality", "0"],
                 ["decode", psic, "-o", out, "--output-quality", "80"]):
        r = run(*args)
        assert r.exit_code == 2, (args, r.exit_code, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "AssertionError" not in r.stderr
    other = tmp_path / "other.key"
    write_key(other, generate_key())
    r = run("decode", psic, "-o", out, "--key", other)
    assert r.exit_code == 4 and "does not open" in r.stderr  # from the key fingerprint, weights unread
    assert not out.exists()


def test_grayscale_stays_grayscale(tiny_env, tmp_path, rgb_image):
    gray = tmp_path / "g.png"
    Image.fromarray(rgb_image[..., 0]).save(gray)  # mode L
    assert run("encode", gray, "-m", "tiny-sh").exit_code == 0
    assert codec.read_info((tmp_path / "g.psic").read_bytes())["source_mode"] == "L"
    assert run("decode", tmp_path / "g.psic").exit_code == 0
    im = Image.open(tmp_path / "g.shielded.png")
    assert im.mode == "L" and im.size == (100, 70)
    rgba = tmp_path / "a.png"
    Image.fromarray(rgb_image).convert("RGBA").save(rgba)
    assert run("encode", rgba, "-m", "tiny-sh").exit_code == 0
    assert run("decode", tmp_path / "a.psic").exit_code == 0
    assert Image.open(tmp_path / "a.shielded.png").mode == "RGB"  # alpha was dropped on encode, as promised


def test_output_quality(coded, tmp_path):
    _, psic = coded
    sizes = {}
    for q in (10, 95):
        out = tmp_path / f"q{q}.jpg"
        r = run("decode", psic, "-o", out, "--output-quality", q)
        assert r.exit_code == 0, r.stderr
        sizes[q] = out.stat().st_size
    assert sizes[10] < sizes[95]
    assert run("decode", psic, "-o", tmp_path / "w.webp", "--output-quality", "50").exit_code == 0


def test_help_and_models_listing(tiny_env):
    r = subprocess.run([sys.executable, "-m", "psic_cli", "--help"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80"}, cwd=REPO)
    commands = r.stdout.split("Commands:")[1].split("Exit codes")[0]
    assert "..." not in commands and "decode" in commands
    r = run("models")
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["MODEL", "ARCH"]
    assert not any(line.startswith("*") for line in lines[1:-1])  # tiny weights: no default model there


def test_setup_script_says_what_it_does():
    """Every long step of scripts/setup.sh (venv creation, each pip install) is announced on the line before."""
    lines = [ln.strip() for ln in (REPO / "scripts" / "setup.sh").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    steps = [i for i, ln in enumerate(lines) if "pip install" in ln or " -m venv " in ln]
    assert len(steps) >= 3
    for i in steps:
        assert lines[i - 1].startswith(("say ", "echo ")), lines[i]
    r = subprocess.run(["bash", "-n", str(REPO / "scripts" / "setup.sh")], capture_output=True)
    assert r.returncode == 0


@pytest.mark.slow
def test_ctrl_c_in_a_two_worker_folder_decode_prints_one_line(tiny_env, tmp_path, rgb_image):
    """Ctrl-C from a terminal reaches the whole process group: the workers (and their rANS decoder
    children) ignore it, the parent stops the batch and prints one line."""
    import time

    src, out = tmp_path / "coded", tmp_path / "views"
    src.mkdir()
    for i in range(200):  # 40 could all decode before the signal on a fast, idle machine (seen once)
        (src / f"{i:03d}.psic").write_bytes(codec.encode_pixels(np.roll(rgb_image, i, axis=1), "tiny-sh", 1))
    cmd = [sys.executable, "-m", "psic_cli", "decode", str(src), "-o", str(out), "-j", "2", "--quiet"]
    proc = subprocess.Popen(cmd, env=_env(tiny_env), stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(out.rglob("*.png"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err  # 200 files: the batch is still running when the signal comes
    assert err.strip().splitlines() == ["psic: error: interrupted; partial outputs removed"], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_malloc_tuning():
    """The CLI asks glibc to keep freed memory between tiles (a no-op returning False elsewhere)."""
    import platform

    from psic_cli._compat import tune_malloc

    result = tune_malloc()
    assert isinstance(result, bool)
    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        assert result


def test_scipy_stats_loads_only_when_a_cdf_table_is_rebuilt():
    """Decoding imports CompressAI's entropy models without scipy.stats (0.4 s of start-up); a walk over
    sys.modules (torch's operator registration runs one) does not load it, and its first real use does."""
    code = """
import sys
from psic_cli._compat import import_compressai_core
import_compressai_core()
import compressai.entropy_models
for m in list(sys.modules.values()):
    hasattr(m, "__file__"), getattr(m, "__spec__", None)
assert "scipy.stats._stats_py" not in sys.modules, "loaded early"
import torch
from compressai.entropy_models import GaussianConditional
g = GaussianConditional(None)
assert g.update_scale_table(torch.exp(torch.linspace(-2.0, 5.0, 8)))
assert "scipy.stats._stats_py" in sys.modules
import scipy.stats
assert abs(scipy.stats.norm.ppf(0.5)) < 1e-12
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_timeout_in_a_thread_is_checked_between_stages(tiny_env, rgb_image):
    """Off the main thread there is no SIGALRM: the deadline is checked between the decode's stages."""
    import threading

    from psic_cli.errors import DecodeTimeout

    data = codec.encode_pixels(rgb_image, "tiny-sh", 1)
    caught: list = []

    def work() -> None:
        try:
            codec.decode(data, timeout=1e-9)
        except DecodeTimeout as e:
            caught.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(120)
    assert len(caught) == 1
    assert codec.decode(data, timeout=600).pixels.shape == rgb_image.shape
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
