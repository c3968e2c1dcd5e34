import io

import numpy as np
import pytest
from PIL import Image

from psic_cli.errors import InputError
from psic_cli.imageio import load_image


def to_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_applied_and_metadata_dropped():
    im = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    exif[0x010F] = "CameraMaker"
    out = load_image(to_bytes(im, "JPEG", exif=exif.tobytes()), "a.jpg")
    assert out.pixels.shape == (40, 20, 3)
    assert any("metadata" in n for n in out.notices)


@pytest.mark.parametrize(
    "mode,word",
    [("L", "converted"), ("P", "converted"), ("RGBA", "transparency"), ("CMYK", "converted"), ("I;16", "16-bit")],
)
def test_modes_converted_with_notice(mode, word):
    if mode == "I;16":
        arr = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 30).astype(np.uint16)
        im = Image.fromarray(arr)
        data = to_bytes(im, "PNG")
    else:
        im = Image.new("RGB", (64, 32), (10, 120, 240)).convert(mode)
        data = to_bytes(im, "TIFF" if mode == "CMYK" else "PNG")
    out = load_image(data, "x")
    assert out.pixels.shape == (32, 64, 3) and out.pixels.dtype == np.uint8
    assert out.source_mode == mode
    assert any(word in n for n in out.notices)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), (i * 80, 255 - i * 80, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    out = load_image(buf.getvalue(), "a.gif")
    assert any("first frame" in n for n in out.notices)


def test_tiny_images():
    out = load_image(to_bytes(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), "p")
    assert out.pixels.tolist() == [[[1, 2, 3]]]


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"hello, not an image", "not an image"),
        (to_bytes(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:200], "cannot decode"),
    ],
)
def test_bad_inputs(data, match):
    with pytest.raises(InputError, match=match):
        load_image(data, "bad")


def test_pixel_limit_and_bomb_guard():
    data = to_bytes(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(InputError, match="pixel limit|too large"):
        load_image(data, "big", max_pixels=10_000)


def _png16(pixels: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (Pillow cannot write 16-bit RGB): pixels uint16 HxWxC, big-endian rows."""
    import struct
    import zlib

    h, w = pixels.shape[:2]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels.reshape(h, -1))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("color_type,channels", [(2, 3), (6, 4)])
def test_16_bit_rgb_png_reduction_has_a_notice(color_type, channels):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (12, 20, channels)).astype(np.uint16)
    pixels[..., 3:] = 65535  # opaque
    out = load_image(_png16(pixels, color_type), "deep.png")
    assert out.pixels.shape == (12, 20, 3)
    assert np.abs(out.pixels.astype(int) - (pixels[..., :3] >> 8)).max() <= 1
    assert [n for n in out.notices if "16-bit" in n] == [
        f"deep.png: 16-bit {'RGB' if channels == 3 else 'RGBA'} image reduced to 8 bits per channel"]


def test_8_bit_png_has_no_depth_notice():
    out = load_image(to_bytes(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG"), "x.png")
    assert out.notices == []
