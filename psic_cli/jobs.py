"""File-level jobs behind the CLI: resolve paths, read input (``-`` = stdin), write outputs atomically."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from psic_cli.errors import FormatError, InputError, OutputError
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


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
_CHUNK = 1 << 20


def _not_regular(src: str, mode: int) -> InputError:
    if stat.S_ISDIR(mode):
        return InputError(f"{src}: is a folder (give a file)")
    kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
    return InputError(f"{src}: is {kind}, not a regular file (give a file, or - for stdin)")


@contextlib.contextmanager
def open_input(src: str) -> Iterator[tuple[BinaryIO, int | None]]:
    """The input as a binary stream and its size (``None`` for stdin, ``-``).

    Only regular files are opened: a FIFO would block, a device never ends; both are refused at once.
    Raises :class:`InputError`, also for read errors inside the block.
    """
    if src == "-":
        try:
            yield sys.stdin.buffer, None
        except OSError as e:
            raise InputError(f"stdin: cannot read ({e.strerror})") from None
        return
    try:
        st = os.stat(src)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(src, st.st_mode)
        # O_NONBLOCK: should a FIFO be swapped in after the check, opening it does not wait for a writer
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{src}: no such file") from None
    except OSError as e:
        raise InputError(f"{src}: cannot read ({e.strerror})") from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(src, st.st_mode)
            yield f, st.st_size
    except OSError as e:
        raise InputError(f"{src}: cannot read ({e.strerror})") from None


def check_input(src: str) -> None:
    """Fail early, before the output is looked at, when the input is missing, unreadable or no regular
    file: the input is at fault (exit 3), whatever the state of the output."""
    if src == "-":
        return
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise InputError(f"{src}: no such file") from None
    except OSError as e:
        raise InputError(f"{src}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(src, st.st_mode)
    if not os.access(src, os.R_OK):
        raise InputError(f"{src}: cannot read (permission denied)")


def _read_up_to(f: BinaryIO, n: int) -> bytes:
    """At most ``n`` bytes, fewer only at the end of the input; allocates only what is there."""
    chunks, total = [], 0
    while total < n and (chunk := f.read(min(_CHUNK, n - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_input(src: str, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """Read a regular file (or stdin for ``-``) of at most ``limit`` bytes, allocating only what is there."""
    name = "stdin" if src == "-" else src
    with open_input(src) as (f, size):
        if size is not None and size > limit:
            raise InputError(f"{name}: file is too large ({size} bytes, the limit is {limit})")
        data = _read_up_to(f, limit + 1)
    if len(data) > limit:
        raise InputError(f"{name}: input is too large (over {limit} bytes)")
    return data


def read_psic(src: str, limit: int = MAX_PSIC_BYTES) -> bytes:
    """Read a .psic file (or stdin) header first: the magic and the header are checked before the rest is
    read, and the rest is read only up to what the header's image size allows (:func:`container.max_file_size`).
    Raises :class:`InputError` (a :class:`FormatError` for a bad prefix or header), naming the input."""
    from psic_cli import container
    from psic_cli import seal as _seal

    name = "stdin" if src == "-" else src
    with open_input(src) as (f, size):
        if size is not None and size > limit:
            raise InputError(f"{name}: file is too large ({size} bytes, the limit is {limit})")
        head = _read_up_to(f, container.PREFIX_BYTES)
        if _seal.is_sealed(head):  # a sealed file: its header declares the exact size
            head += _read_up_to(f, _seal.HEADER_BYTES - len(head))
            try:
                total = _seal.sealed_size(head)
            except FormatError as e:
                raise type(e)(f"{name}: {e}") from None
            if total > limit or (size is not None and size != total):
                raise FormatError(f"{name}: the sealed header says {total} bytes, the file has {size or 'more'}")
            data = head + _read_up_to(f, total + 1 - len(head))
            if len(data) != total:
                raise FormatError(f"{name}: the sealed header says {total} bytes, the file has {len(data)}")
            return data
        try:
            container.read_prefix(head)
            head += _read_up_to(f, container.header_length(head))
            header, _ = container.unpack_header(head)
        except FormatError as e:
            raise type(e)(f"{name}: {e}") from None
        cap = min(limit, container.max_file_size(header))
        if size is not None and size > cap:
            raise FormatError(f"{name}: {size} bytes is more than a {header.width}x{header.height} file can hold")
        data = head + _read_up_to(f, cap + 1 - len(head))
    if len(data) > cap:
        raise FormatError(f"{name}: more bytes than a {header.width}x{header.height} file can hold")
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
                warn=None, effort: int = 0, key_file: str | None = None) -> JobResult:
    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_cli.zoo import DEFAULT_MODEL

    check_input(src)
    codec.check_encode_options(model, quality)  # a bad -m/-q fails (exit 2) before the model loads
    codec.check_effort(effort)
    key = read_key(key_file, warn=warn) if key_file else None
    dst = _default_output(src, output, ".psic")
    if dst != "-":
        check_writable(Path(dst), force)  # fail before the expensive work
    seal_key = read_seal_key(seal_key_file, warn) if seal_key_file else None
    name = "stdin" if src == "-" else src
    res = codec.encode(read_input(src, MAX_IMAGE_BYTES), name, model or DEFAULT_MODEL, quality, max_pixels,
                       effort=effort, key=key)
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
        data = codec.seal(read_psic(src), key)
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
        data = read_psic(src)
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


def view_tag(view: str, shield: str | None) -> str:
    """The name part of a decoded view: ``shielded``, ``strong`` (the strong shield), ``full``, ``machine``."""
    from psic_cli.views import View

    v = View(view)
    return str(View.from_shield(shield) if shield and v is View.SHIELDED else v)


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
                seal_key_file: str | None = None, timeout: float | None = None,
                output_quality: int | None = None) -> JobResult:
    """Decode ``src`` to an image.  The default output is ``<stem>.<view>.png`` beside the input (never
    the source image's name), and no decode writes over the image the file was made from."""
    from psic_cli import codec, container
    from psic_cli.imageio import check_output_size, encode_image, output_format, output_mode
    from psic_cli.keys import read_key

    check_input(src)
    the_view = codec.check_shield(shield, codec.check_view(view, key_file is not None))  # exit 2 before any work
    if timeout is not None and not timeout > 0:
        from psic_cli.errors import UsageError

        raise UsageError(f"--timeout must be positive (got {timeout})")
    dst = _default_output(src, output, decoded_suffix(the_view, None, fmt))
    pil_fmt = output_format(dst, fmt)
    check_output_quality(output_quality, pil_fmt)
    if dst != "-":
        check_not_source(src, dst)
        check_writable(Path(dst), force)
    key = read_key(key_file, warn=warn) if key_file else None
    seal_key = read_key(seal_key_file, warn=warn) if seal_key_file else key
    data = read_psic(src)
    name = "stdin" if src == "-" else src
    data = _open_if_sealed(data, seal_key, name)
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
        meta = read_info(read_psic(src), key)
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
