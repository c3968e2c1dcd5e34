"""Crafted files, decode bounds and output safety: every case ends in one error line and a clean exit."""

import dataclasses
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from psic_cli import codec, container
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


def test_rans_over_read_kills_only_a_child():
    """A decoder that dies of SIGSEGV in the child is reported as a FormatError in this process."""
    from psic_cli.models.rans_guard import _decode_in_child

    class Crashing:
        def decode_with_indexes(self, *args):
            os.kill(os.getpid(), signal.SIGSEGV)

    class Fine:
        def decode_with_indexes(self, data, indexes, *args):
            return [i - 3 for i in indexes]

    with pytest.raises(FormatError, match="signal"):
        _decode_in_child(Crashing(), b"\0" * 8, [0] * 10, [], [], [])
    assert _decode_in_child(Fine(), b"\0" * 8, [1, 2, 3], [], [], []).tolist() == [-2, -1, 0]


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
    from PIL import Image

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
