"""File-level jobs behind the CLI: resolve paths, read input (``-`` = stdin), write outputs atomically."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from psic_cli.errors import InputError, OutputError
from psic_cli.fileio import atomic_write, check_writable
from psic_cli.imageio import DEFAULT_MAX_PIXELS

MAX_PSIC_BYTES = 1 << 31


@dataclass
class JobResult:
    src: str
    dst: str
    bytes_out: int
    notices: list[str]
    bpp: float | None = None


def read_input(src: str, limit: int = MAX_PSIC_BYTES) -> bytes:
    if src == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        p = Path(src)
        if p.is_dir():
            raise InputError(f"{src}: is a folder (give a file)")
        try:
            with open(p, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise InputError(f"{src}: no such file") from None
        except OSError as e:
            raise InputError(f"{src}: cannot read ({e.strerror})") from None
    if len(data) > limit:
        raise InputError(f"{src}: file is too large")
    return data


def _default_output(src: str, output: str | None, suffix: str) -> str:
    if output:
        return output
    if src == "-":
        raise InputError("reading stdin needs -o (a file, or - for stdout)")
    return str(Path(src).with_suffix(suffix))


def _write(dst: str, data: bytes, force: bool) -> None:
    if dst == "-":
        if sys.stdout.isatty():
            raise OutputError("refusing to write binary data to a terminal (use -o FILE or a pipe)")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        atomic_write(Path(dst), data, force=force)


def encode_file(src: str, output: str | None = None, quality: int | None = None, model: str | None = None,
                force: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> JobResult:
    from psic_cli import codec
    from psic_cli.zoo import DEFAULT_MODEL

    dst = _default_output(src, output, ".psic")
    if dst != "-":
        check_writable(Path(dst), force)  # fail before the expensive work
    name = "stdin" if src == "-" else src
    res = codec.encode(read_input(src, 1 << 30), name, model or DEFAULT_MODEL, quality, max_pixels)
    _write(dst, res.data, force)
    return JobResult(src, dst, len(res.data), res.notices, res.bpp)


def decode_file(src: str, output: str | None = None, key_file: str | None = None, view: str | None = None,
                fmt: str | None = None, force: bool = False, warn=None) -> JobResult:
    from psic_cli import codec
    from psic_cli.imageio import OUTPUT_FORMATS, encode_image, output_format
    from psic_cli.keys import read_key

    suffix = "." + (fmt.lower() if fmt and fmt.lower() in OUTPUT_FORMATS else "png")
    dst = _default_output(src, output, suffix)
    pil_fmt = output_format(dst, fmt)
    if dst != "-":
        check_writable(Path(dst), force)
    key = read_key(key_file, warn=warn) if key_file else None
    data = read_input(src)
    name = "stdin" if src == "-" else src
    try:
        res = codec.decode(data, key, view)
    except InputError as e:
        raise type(e)(f"{name}: {e}") from None
    out = encode_image(res.pixels, pil_fmt)
    _write(dst, out, force)
    return JobResult(src, dst, len(out), [])
