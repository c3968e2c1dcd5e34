"""File-level jobs behind the CLI: resolve paths, read input (``-`` = stdin), write outputs atomically."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from psic_cli.errors import InputError, OutputError
from psic_cli.fileio import atomic_write, check_writable
from psic_cli.imageio import DEFAULT_MAX_PIXELS

MAX_PSIC_BYTES = 1 << 31
MAX_IMAGE_BYTES = 1 << 30


@dataclass
class JobResult:
    src: str
    dst: str
    bytes_out: int
    notices: list[str]
    bpp: float | None = None


def read_input(src: str, limit: int = MAX_PSIC_BYTES) -> bytes:
    """Read a file (or stdin for ``-``) of at most ``limit`` bytes, allocating only what is there."""
    if src == "-":
        chunks, total = [], 0
        while chunk := sys.stdin.buffer.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise InputError("stdin: input is too large")
            chunks.append(chunk)
        return b"".join(chunks)
    p = Path(src)
    try:
        if p.is_dir():
            raise InputError(f"{src}: is a folder (give a file)")
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise InputError(f"{src}: file is too large ({size} bytes)")
            return f.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{src}: no such file") from None
    except OSError as e:
        raise InputError(f"{src}: cannot read ({e.strerror})") from None


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
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"stdout: cannot write ({e.strerror})") from None
    else:
        atomic_write(Path(dst), data, force=force)


def encode_file(src: str, output: str | None = None, quality: int | None = None, model: str | None = None,
                force: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> JobResult:
    from psic_cli import codec
    from psic_cli.zoo import DEFAULT_MODEL

    codec.check_encode_options(model, quality)  # a bad -m/-q fails (exit 2) before the model loads
    dst = _default_output(src, output, ".psic")
    if dst != "-":
        check_writable(Path(dst), force)  # fail before the expensive work
    name = "stdin" if src == "-" else src
    res = codec.encode(read_input(src, MAX_IMAGE_BYTES), name, model or DEFAULT_MODEL, quality, max_pixels)
    _write(dst, res.data, force)
    return JobResult(src, dst, len(res.data), res.notices, res.bpp)


def output_suffix(fmt: str | None) -> str:
    """Default extension of decoded images: that of ``--format``, else .png."""
    from psic_cli.imageio import output_format

    return {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[output_format(None, fmt)]


def view_tag(view: str, shield: str | None) -> str:
    """The name part of a decoded view: ``shielded``, ``strong`` (the strong shield), ``full``, ``machine``."""
    return "strong" if view == "shielded" and shield == "strong" else view


def decoded_suffix(view: str, shield: str | None, fmt: str | None) -> str:
    """Default suffix of a decoded image, e.g. ``.shielded.png``: a decode never takes the source's name."""
    return f".{view_tag(view, shield)}{output_suffix(fmt)}"


def check_not_source(src: str, dst: str) -> None:
    """Refuse (exit 5), even with --force, to write over the image a ``.psic`` was made from: a file beside
    ``src`` with the same stem and an image suffix that is ``dst`` itself (``os.path.samefile``)."""
    from psic_cli.batch import IMAGE_SUFFIXES

    if src == "-" or dst == "-" or not os.path.exists(dst):
        return
    s = Path(src)
    for suffix in sorted(IMAGE_SUFFIXES | {x.upper() for x in IMAGE_SUFFIXES}):
        candidate = s.with_suffix(suffix)
        try:
            same = candidate.exists() and os.path.samefile(candidate, dst)
        except OSError:
            continue
        if same:
            raise OutputError(f"{dst}: refusing to overwrite {candidate.name}, the image {s.name} was made from "
                              "(choose another -o)")


def check_output_quality(quality: int | None, pil_fmt: str) -> None:
    """``--output-quality`` is 1..100 and applies to JPEG and WebP outputs only."""
    from psic_cli.errors import UsageError

    if quality is None:
        return
    if pil_fmt == "PNG":
        raise UsageError("--output-quality applies to JPEG and WebP outputs only (PNG is lossless)")
    if not 1 <= quality <= 100:
        raise UsageError(f"--output-quality must be 1..100 (got {quality})")


def decode_file(src: str, output: str | None = None, key_file: str | None = None, view: str | None = None,
                fmt: str | None = None, force: bool = False, warn=None,
                max_pixels: int = DEFAULT_MAX_PIXELS, shield: str | None = None,
                timeout: float | None = None, output_quality: int | None = None) -> JobResult:
    """Decode ``src`` to an image.  The default output is ``<stem>.<view>.png`` beside the input (never
    the source image's name), and no decode writes over the image the file was made from."""
    from psic_cli import codec, container
    from psic_cli.imageio import check_output_size, encode_image, output_format, output_mode
    from psic_cli.keys import read_key

    the_view = codec.check_view(view, key_file is not None)  # options first: exit 2 before any work
    codec.check_shield(shield, the_view)
    if timeout is not None and not timeout > 0:
        from psic_cli.errors import UsageError

        raise UsageError(f"--timeout must be positive (got {timeout})")
    dst = _default_output(src, output, decoded_suffix(the_view, shield, fmt))
    pil_fmt = output_format(dst, fmt)
    check_output_quality(output_quality, pil_fmt)
    if dst != "-":
        check_not_source(src, dst)
        check_writable(Path(dst), force)
    key = read_key(key_file, warn=warn) if key_file else None
    data = read_input(src)
    name = "stdin" if src == "-" else src
    try:
        header, _ = container.unpack_header(data)
        if header.width * header.height > max_pixels:
            raise InputError(f"{header.width}x{header.height} is over the {max_pixels}-pixel limit (--max-pixels)")
        check_output_size(header.width, header.height, pil_fmt)
        res = codec.decode(data, key, the_view, shield, timeout=timeout)
    except (InputError, OutputError) as e:
        raise type(e)(f"{name}: {e}") from None
    quality = 95 if output_quality is None else output_quality
    out = encode_image(res.pixels, pil_fmt, quality, mode=output_mode(header.source_mode))
    if dst != "-":
        check_not_source(src, dst)  # again: the source may have appeared while decoding
    _write(dst, out, force)
    return JobResult(src, dst, len(out), [])


def info_report(src: str) -> dict:
    """``psic info``: the header, and what the installed weights say about the file."""
    from psic_cli.codec import read_info
    from psic_cli.zoo import list_models

    name = "stdin" if src == "-" else src
    try:
        meta = read_info(read_input(src))
    except InputError as e:
        raise type(e)(str(e) if str(e).startswith(name) else f"{name}: {e}") from None
    m = {m.model_id: m for m in list_models()}.get(meta["model"])
    meta["model_installed"] = m is not None
    if m is not None:
        meta["weights_match"] = m.metadata.get("bitstream_id") in (None, meta["bitstream_id"])
        meta["key_fingerprint"] = m.key_fingerprint
        meta["shield"] = m.metadata.get("shield", "unknown")
    return meta
