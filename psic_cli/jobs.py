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
                force: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, seal_key_file: str | None = None,
                warn=None) -> JobResult:
    from psic_cli import codec
    from psic_cli.zoo import DEFAULT_MODEL

    dst = _default_output(src, output, ".psic")
    if dst != "-":
        check_writable(Path(dst), force)  # fail before the expensive work
    seal_key = read_seal_key(seal_key_file, warn) if seal_key_file else None
    name = "stdin" if src == "-" else src
    res = codec.encode(read_input(src, MAX_IMAGE_BYTES), name, model or DEFAULT_MODEL, quality, max_pixels)
    data = res.data if seal_key is None else codec.seal(res.data, seal_key)
    _write(dst, data, force)
    return JobResult(src, dst, len(data), res.notices, len(data) * 8 / (res.header.width * res.header.height))


def public_key_warning(key: bytes) -> str | None:
    """A warning when ``key`` is the public key that ships with psic (``weights/shipped.key``)."""
    from psic_cli.errors import KeyError_
    from psic_cli.keys import read_key
    from psic_cli.zoo import weights_dir

    shipped = weights_dir() / "shipped.key"
    try:
        if shipped.is_file() and read_key(shipped) == key:
            return f"this key is public ({shipped} ships with psic): anyone can open what it seals"
    except (KeyError_, OSError):
        pass
    return None


def read_seal_key(key_file: str, warn=None) -> bytes:
    from psic_cli.keys import read_key

    key = read_key(key_file, warn=warn)
    msg = public_key_warning(key)
    if msg and warn is not None:
        warn(msg)
    return key


def _sealed_output(src: str, output: str | None, sealing: bool) -> str:
    """Default names: ``photo.psic`` -> ``photo.sealed.psic`` (seal); ``photo.sealed.psic`` -> ``photo.psic``,
    anything else -> ``photo.unsealed.psic`` (unseal)."""
    if output or src == "-":
        return _default_output(src, output, ".psic")
    p = Path(src)
    if sealing:
        return str(p.with_name(p.stem + ".sealed.psic"))
    if p.name.endswith(".sealed.psic") and len(p.name) > len(".sealed.psic"):
        return str(p.with_name(p.name[: -len(".sealed.psic")] + ".psic"))
    return str(p.with_name(p.stem + ".unsealed.psic"))


def seal_file(src: str, output: str | None, key_file: str, force: bool = False, warn=None) -> JobResult:
    """``psic seal``: encrypt and authenticate a .psic file under a key (the input is checked first)."""
    from psic_cli import codec

    dst = _sealed_output(src, output, sealing=True)
    if dst != "-":
        check_writable(Path(dst), force)
    key = read_seal_key(key_file, warn)
    name = "stdin" if src == "-" else src
    try:
        data = codec.seal(read_input(src), key)
    except InputError as e:
        raise type(e)(str(e) if str(e).startswith(name) else f"{name}: {e}") from None
    _write(dst, data, force)
    return JobResult(src, dst, len(data), [])


def unseal_file(src: str, output: str | None, key_file: str, force: bool = False, warn=None) -> JobResult:
    """``psic unseal``: the plain .psic file inside a sealed one; nothing is written unless it opens."""
    from psic_cli import codec
    from psic_cli.errors import KeyError_
    from psic_cli.keys import read_key
    from psic_cli.seal import is_sealed

    dst = _sealed_output(src, output, sealing=False)
    if dst != "-":
        check_writable(Path(dst), force)
    key = read_key(key_file, warn=warn)
    name = "stdin" if src == "-" else src
    try:
        data = read_input(src)
        if not is_sealed(data):
            raise InputError("not a sealed .psic file (nothing to unseal)")
        plain = codec.unseal(data, key)
    except (InputError, KeyError_) as e:
        raise type(e)(str(e) if str(e).startswith(name) else f"{name}: {e}") from None
    _write(dst, plain, force)
    return JobResult(src, dst, len(plain), [])


def output_suffix(fmt: str | None) -> str:
    """Default extension of decoded images: that of ``--format``, else .png."""
    from psic_cli.imageio import output_format

    return {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[output_format(None, fmt)]


def decode_file(src: str, output: str | None = None, key_file: str | None = None, view: str | None = None,
                fmt: str | None = None, force: bool = False, warn=None,
                max_pixels: int = DEFAULT_MAX_PIXELS, shield: str | None = None,
                seal_key_file: str | None = None) -> JobResult:
    from psic_cli import codec, container
    from psic_cli.imageio import check_output_size, encode_image, output_format
    from psic_cli.keys import read_key

    dst = _default_output(src, output, output_suffix(fmt))
    pil_fmt = output_format(dst, fmt)
    if dst != "-":
        check_writable(Path(dst), force)
    key = read_key(key_file, warn=warn) if key_file else None
    seal_key = read_key(seal_key_file, warn=warn) if seal_key_file else key
    data = read_input(src)
    name = "stdin" if src == "-" else src
    data = _open_if_sealed(data, seal_key, name)
    try:
        header, _ = container.unpack_header(data)
        if header.width * header.height > max_pixels:
            raise InputError(f"{header.width}x{header.height} is over the {max_pixels}-pixel limit (--max-pixels)")
        check_output_size(header.width, header.height, pil_fmt)
        res = codec.decode(data, key, view, shield)
    except (InputError, OutputError) as e:
        raise type(e)(f"{name}: {e}") from None
    out = encode_image(res.pixels, pil_fmt)
    _write(dst, out, force)
    return JobResult(src, dst, len(out), [])


def _open_if_sealed(data: bytes, seal_key: bytes | None, name: str) -> bytes:
    """The plain .psic bytes of ``data``: unchanged when it is not sealed, else opened with ``seal_key``."""
    from psic_cli import codec
    from psic_cli.errors import KeyError_
    from psic_cli.seal import is_sealed

    if not is_sealed(data):
        return data
    try:
        return codec.unseal(data, seal_key)
    except (InputError, KeyError_) as e:
        raise type(e)(f"{name}: {e}") from None


def info_report(src: str, key_file: str | None = None, warn=None) -> dict:
    """``psic info``: the header, and what the installed weights say about the file.  A sealed file shows
    only that it is sealed and its size, unless ``key_file`` opens it."""
    from psic_cli.codec import read_info
    from psic_cli.errors import KeyError_
    from psic_cli.keys import read_key
    from psic_cli.zoo import list_models

    name = "stdin" if src == "-" else src
    key = read_key(key_file, warn=warn) if key_file else None
    try:
        meta = read_info(read_input(src), key)
    except (InputError, KeyError_) as e:
        raise type(e)(str(e) if str(e).startswith(name) else f"{name}: {e}") from None
    if "model" not in meta:  # sealed, and no key opened it
        return meta
    m = {m.model_id: m for m in list_models()}.get(meta["model"])
    meta["model_installed"] = m is not None
    if m is not None:
        meta["weights_match"] = m.metadata.get("bitstream_id") in (None, meta["bitstream_id"])
        meta["key_fingerprint"] = m.key_fingerprint
        meta["shield"] = m.metadata.get("shield", "unknown")
    return meta
