"""Image input and output with Pillow.

Input: EXIF orientation is applied, then every piece of metadata (EXIF, GPS, ICC profile, comments, XMP)
is dropped: only the pixels are coded.  Grayscale, palette, RGBA (alpha dropped, composited on white),
CMYK and 16-bit images are converted to 8-bit RGB with a notice; animated images use their first frame.
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from psic_cli.errors import InputError, OutputError

DEFAULT_MAX_PIXELS = 50_000_000
OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
MAX_SIDE = {"PNG": 65535, "JPEG": 65500, "WEBP": 16383}  # what the writers accept (the .psic limit is 65535)
_METADATA_KEYS = ("exif", "icc_profile", "comment", "comments", "xmp", "XML:com.adobe.xmp", "photoshop",
                  "iptc", "Description", "Author", "Software", "Copyright")

Notice = Callable[[str], None]


@dataclass
class LoadedImage:
    pixels: np.ndarray  # uint8 HxWx3 RGB
    source_mode: str  # Pillow mode of the file before conversion
    notices: list[str]


def load_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode image bytes to 8-bit RGB; raise :class:`InputError` with a one-line reason."""
    if not data:
        raise InputError(f"{name}: empty file")
    notices: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise InputError(f"{name}: {w}x{h} is over the {max_pixels}-pixel limit (--max-pixels)")
            if w < 1 or h < 1:
                raise InputError(f"{name}: empty image ({w}x{h})")
            if max(w, h) > MAX_SIDE["PNG"]:
                raise InputError(f"{name}: {w}x{h} has a side over {MAX_SIDE['PNG']} pixels, the .psic limit")
            if getattr(im, "n_frames", 1) > 1:
                notices.append(f"{name}: animated image, coding its first frame only")
                im.seek(0)
            deep = _sixteen_bit(im)
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(f"{name}: image is too large (decompression bomb guard, --max-pixels)") from None
        except UnidentifiedImageError:
            raise InputError(f"{name}: not an image Pillow can read") from None
        except InputError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"{name}: cannot decode image ({why})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old
    source_mode = im.mode
    if deep and im.mode not in _GRAY16:  # 16-bit grayscale gets its own notice in _to_rgb
        notices.append(f"{name}: 16-bit {im.mode} image reduced to 8 bits per channel")
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF block must not stop the image
        notices.append(f"{name}: unreadable EXIF orientation ignored")
    if len(im.getexif()) or any(k in im.info for k in _METADATA_KEYS):
        notices.append(f"{name}: metadata (EXIF/GPS/ICC/comments) dropped")
    im = _to_rgb(im, name, notices)
    return LoadedImage(np.array(im, dtype=np.uint8), source_mode, notices)


def _sixteen_bit(im: Image.Image) -> bool:
    """Whether the file stores 16 bits per channel; Pillow opens 16-bit RGB(A) as 8-bit RGB(A) silently,
    so this reads the raw mode of its tiles (before ``load()`` clears them)."""
    return any(";16" in str(t.args) for t in getattr(im, "tile", None) or ())


_GRAY16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(im: Image.Image, name: str, notices: list[str]) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _GRAY16:
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        notices.append(f"{name}: 16-bit grayscale converted to 8-bit RGB")
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notices.append(f"{name}: transparency dropped (composited on white)")
        return Image.alpha_composite(bg, rgba).convert("RGB")
    notices.append(f"{name}: {mode} image converted to 8-bit RGB")
    return im.convert("RGB")


def output_format(path: str | None, explicit: str | None) -> str:
    """Pick the Pillow format from ``--format`` or the output's extension (default PNG)."""
    if explicit:
        fmt = OUTPUT_FORMATS.get(explicit.lower())
        if fmt is None:
            raise InputError(f"unknown format {explicit!r}; choose png, jpg or webp")
        return fmt
    if path and path != "-":
        ext = Path(path).suffix.lower().lstrip(".")
        if ext in OUTPUT_FORMATS:
            return OUTPUT_FORMATS[ext]
        if ext:
            raise OutputError(f"{path}: unknown image extension .{ext}; use .png, .jpg or .webp (or --format)")
    return "PNG"


def check_output_size(width: int, height: int, fmt: str) -> None:
    """Refuse, before any decoding, an image too large for the output format's writer."""
    if max(width, height) > MAX_SIDE[fmt]:
        raise OutputError(f"{width}x{height} is too large for {fmt} (at most {MAX_SIDE[fmt]} pixels a side); "
                          "use --format png")


GRAYSCALE_SOURCES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def output_mode(source_mode: str) -> str:
    """The mode a decoded image is written in: grayscale sources (``L``, ``LA``, ``1``, 16-bit and float
    grayscale) go back to 8-bit grayscale ``L``; every other source (RGB, RGBA with its alpha dropped,
    palette, CMYK, YCbCr, ...) to 8-bit RGB, as the encoder converted it."""
    return "L" if source_mode in GRAYSCALE_SOURCES else "RGB"


# Written PNGs: zlib's run-length strategy after PNG's own row filters.  On decoded photos it writes about twice
# as fast as level 4 (six times Pillow's default 6) with files within a few percent of either, and on a
# 6000x4000 decode it is both the fastest and the smallest.
PNG_LEVEL = 4
PNG_STRATEGY = zlib.Z_RLE


def encode_image(pixels: np.ndarray, fmt: str, quality: int = 95, mode: str = "RGB") -> bytes:
    """Encode uint8 HxWx3 pixels (no metadata is written); ``mode`` ``L`` writes them as grayscale."""
    buf = io.BytesIO()
    im = Image.fromarray(pixels, "RGB")
    if mode == "L":
        im = im.convert("L")
    if fmt == "PNG":
        im.save(buf, "PNG", compress_level=PNG_LEVEL, compress_type=PNG_STRATEGY)
    elif fmt == "JPEG":
        im.save(buf, "JPEG", quality=quality, subsampling=0)
    else:
        im.save(buf, "WEBP", quality=quality)
    return buf.getvalue()
