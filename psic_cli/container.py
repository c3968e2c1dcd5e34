"""The .psic file format, version 2 (stdlib only; byte-level spec in ``docs/format.md``).

All integers are little-endian.  Layout::

    prefix   magic b"PSIC", version u8, flags u8 (0), header length u16
    header   model id (u8 length + ASCII), arch (u8 length + ASCII), weights id (8 bytes),
             quality u8, width u32, height u32, source mode (u8 length + ASCII), tile size u16 (0 = one tile)
    payload  tile count u32, then per tile: z height u16, z width u16, symbols CRC32 u32,
             string count u8, then per string: length u32 + bytes
    trailer  CRC32 u32 over every byte before it

The reader checks every length against the bytes that remain and a fixed bound before it allocates,
requires the sections to add up to the file size exactly, and verifies the trailer CRC before any
field is trusted.

Versions 1 and 2 share this layout and differ only in the latent geometry the decoder derives from
the image size: format 1 padded the image to a multiple of 64 pixels (``y`` is 4x ``z``), format 2
pads to a multiple of 16 (``y`` is ``ceil(size / 16)``; the hyper decoder's output is cropped to it).
:func:`latent_shape` gives ``y``'s shape for either.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from psic_cli.errors import ChecksumError, FormatError, TruncatedFile, UnsupportedVersion
from psic_cli.models.config import ARCH_STRINGS

MAGIC = b"PSIC"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PAD_MULTIPLE = {1: 64, 2: 16}  # pixels: the encoder pads the image to a multiple of this, per format
Y_STRIDE, Z_STRIDE = 16, 4  # pixels per latent y; latents y per hyper-latent z

_PREFIX = struct.Struct("<4sBBH")  # magic, version, flags, header length
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_DIMS = struct.Struct("<BII")  # quality, width, height
_TILE = struct.Struct("<HHIB")  # z height, z width, symbols crc32, string count

MAX_SIDE = 65535
MAX_PIXELS = 200_000_000
MAX_STRING = 1 << 30
MAX_STRINGS = 8
MAX_TILES = 1 << 20
WEIGHTS_ID_BYTES = 8
PREFIX_BYTES = _PREFIX.size
# A reader's cap on a whole file, from its header: 16 bytes (128 bits) per pixel, over five times raw RGB
# and far above what the entropy coder emits, plus room for the header, tile records and small images.
MAX_BYTES_PER_PIXEL = 16
SIZE_SLACK = 1 << 20
RANS_MIN_BYTES = 4  # an rANS string is whole 32-bit words and ends with the coder's 8-byte final state


@dataclass(frozen=True)
class Tile:
    """The entropy-coded strings of one tile: ``strings[i]`` is the bytes of latent i (y, z), in the order of
    the arch's :data:`~psic_cli.models.config.ARCH_STRINGS`."""

    z_shape: tuple[int, int]
    checksum: int
    strings: tuple[bytes, ...]


@dataclass(frozen=True)
class Header:
    model_id: str
    arch: str
    weights_id: bytes
    quality: int
    width: int
    height: int
    source_mode: str = "RGB"
    tile_size: int = 0
    version: int = FORMAT_VERSION

    def validate(self) -> None:
        for name, val in (("model id", self.model_id), ("arch", self.arch), ("source mode", self.source_mode)):
            if not val.isascii() or not 0 < len(val) <= 64 or not val.isprintable():
                raise FormatError(f"invalid {name} {val!r}")
        if len(self.weights_id) != WEIGHTS_ID_BYTES:
            raise FormatError("invalid weights id")
        if not 1 <= self.quality <= 255:
            raise FormatError(f"invalid quality {self.quality}")
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE):
            raise FormatError(f"invalid image size {self.width}x{self.height}")
        if self.width * self.height > MAX_PIXELS:
            raise FormatError(f"image size {self.width}x{self.height} exceeds {MAX_PIXELS} pixels")
        if not 0 <= self.tile_size <= MAX_SIDE or self.tile_size % 64:
            raise FormatError(f"invalid tile size {self.tile_size}")


@dataclass(frozen=True)
class PsicFile:
    header: Header
    tiles: tuple[Tile, ...] = field(default_factory=tuple)

    @property
    def payload_bytes(self) -> int:
        return sum(len(s) for t in self.tiles for s in t.strings)


def max_file_size(header: Header) -> int:
    """The most bytes a file with this header may have (readers stop there instead of reading on)."""
    return header.width * header.height * MAX_BYTES_PER_PIXEL + SIZE_SLACK


def header_length(prefix: bytes) -> int:
    """The header length that a valid prefix (:func:`read_prefix`) announces."""
    return _PREFIX.unpack_from(prefix)[3]


def latent_shape(header: Header) -> tuple[int, int]:
    """Shape of the latent ``y`` of a one-tile file: the image padded as its format's encoder padded it,
    over ``y``'s stride of 16 pixels."""
    m = PAD_MULTIPLE[header.version]
    return (-(-header.height // m) * m // Y_STRIDE, -(-header.width // m) * m // Y_STRIDE)


def expected_z_shape(header: Header) -> tuple[int, int]:
    """Shape of the hyper-latent ``z`` (``y`` over 4, rounded up) of a one-tile file."""
    yh, yw = latent_shape(header)
    return (-(-yh // Z_STRIDE), -(-yw // Z_STRIDE))


def check_string(s: bytes, what: str = "entropy-coded string") -> None:
    """Refuse an rANS string that no encoder writes: CompressAI's coder emits whole 32-bit words and
    always flushes its 64-bit state, so a string is at least 8 bytes and a multiple of 4."""
    if len(s) < 2 * RANS_MIN_BYTES or len(s) % RANS_MIN_BYTES:
        raise FormatError(f"invalid {what} length {len(s)} (an rANS string is at least 8 bytes, in 4-byte words)")


def check_geometry(f: PsicFile) -> None:
    """Check, without a model, that the payload fits the header: one tile, its hyper-latent shape derived
    from the image size, and a y and a z string of valid rANS length.  Raises :class:`FormatError`."""
    h = f.header
    if h.tile_size != 0 or len(f.tiles) != 1:
        raise FormatError("tiled files are not supported by this psic")
    tile = f.tiles[0]
    if tile.z_shape != expected_z_shape(h):
        raise FormatError(f"tile shape {tile.z_shape} does not match image size {h.width}x{h.height}")
    names = ARCH_STRINGS.get(h.arch, ARCH_STRINGS["scale-hyperprior"])  # an unknown arch fails at the model
    if len(tile.strings) != len(names):
        raise FormatError(f"expected {len(names)} entropy-coded strings ({', '.join(names)}) for arch {h.arch}, "
                          f"found {len(tile.strings)}")
    for s, what in zip(tile.strings, names, strict=True):
        check_string(s, what)


def _short_str(s: str) -> bytes:
    b = s.encode("ascii")
    return _U8.pack(len(b)) + b


def pack(f: PsicFile) -> bytes:
    """Serialise a :class:`PsicFile`; ``unpack(pack(f)) == f``."""
    h = f.header
    h.validate()
    if h.version not in READABLE_VERSIONS:
        raise ValueError(f"cannot write format version {h.version}")
    body = b"".join(
        [
            _short_str(h.model_id),
            _short_str(h.arch),
            h.weights_id,
            _DIMS.pack(h.quality, h.width, h.height),
            _short_str(h.source_mode),
            _U16.pack(h.tile_size),
        ]
    )
    parts = [_PREFIX.pack(MAGIC, h.version, 0, len(body)), body, _U32.pack(len(f.tiles))]
    if not 0 < len(f.tiles) <= MAX_TILES:
        raise ValueError("invalid tile count")
    for t in f.tiles:
        if not 0 < len(t.strings) <= MAX_STRINGS:
            raise ValueError("invalid string count")
        parts.append(_TILE.pack(t.z_shape[0], t.z_shape[1], t.checksum & 0xFFFFFFFF, len(t.strings)))
        for s in t.strings:
            parts.append(_U32.pack(len(s)))
            parts.append(bytes(s))
    data = b"".join(parts)
    return data + _U32.pack(zlib.crc32(data))


class _Reader:
    """Bounds-checked cursor: every read either returns exactly n bytes or raises TruncatedFile."""

    def __init__(self, buf: bytes, end: int):
        self.buf, self.pos, self.end = buf, 0, end

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise TruncatedFile(f"truncated at byte {self.end} while reading {what} (needs {self.pos + n})")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        return st.unpack(self.take(st.size, what))

    def short_str(self, what: str) -> str:
        (n,) = self.unpack(_U8, what)
        raw = self.take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"invalid {what}") from None


def read_prefix(buf: bytes) -> int:
    """Check the magic and version; return the version.  Raises a FormatError subclass."""
    if len(buf) < _PREFIX.size:
        if not buf:
            raise TruncatedFile("empty file")
        if not MAGIC.startswith(buf[:4]):
            raise FormatError("not a .psic file (bad magic bytes)")
        raise TruncatedFile(f"truncated at byte {len(buf)} (shorter than the {_PREFIX.size}-byte prefix)")
    magic, version, _, _ = _PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise FormatError("not a .psic file (bad magic bytes)")
    if version not in READABLE_VERSIONS:
        if version > max(READABLE_VERSIONS):
            raise UnsupportedVersion(
                f"written by a newer psic (format {version}); this psic reads up to format {max(READABLE_VERSIONS)}"
            )
        raise UnsupportedVersion(f"unsupported format version {version}")
    return version


def unpack_header(buf: bytes) -> tuple[Header, int]:
    """Parse the prefix and header (no CRC check); return it and the offset of the payload."""
    version = read_prefix(buf)
    r = _Reader(buf, len(buf))
    _, _, flags, hlen = r.unpack(_PREFIX, "prefix")
    if flags != 0:
        raise FormatError(f"unknown flags {flags:#x}")
    body_end = r.pos + hlen
    if body_end > len(buf):
        raise TruncatedFile(f"truncated at byte {len(buf)} (header says {body_end})")
    hr = _Reader(buf, body_end)
    hr.pos = r.pos
    model_id = hr.short_str("model id")
    arch = hr.short_str("arch")
    weights_id = hr.take(WEIGHTS_ID_BYTES, "weights id")
    quality, width, height = hr.unpack(_DIMS, "image size")
    source_mode = hr.short_str("source mode")
    (tile_size,) = hr.unpack(_U16, "tile size")
    if hr.pos != body_end:
        raise FormatError(f"header length mismatch ({body_end - hr.pos} unread bytes)")
    header = Header(model_id, arch, weights_id, quality, width, height, source_mode, tile_size, version)
    header.validate()
    return header, body_end


def unpack(buf: bytes) -> PsicFile:
    """Parse and verify a whole .psic file.  Raises a :class:`FormatError` subclass on any defect."""
    buf = bytes(buf)
    read_prefix(buf)
    if len(buf) < _PREFIX.size + _U32.size:
        raise TruncatedFile(f"truncated at byte {len(buf)}")
    (crc,) = _U32.unpack_from(buf, len(buf) - 4)
    if zlib.crc32(buf[:-4]) != crc:
        raise ChecksumError("file is corrupt or truncated (checksum mismatch)")
    header, pos = unpack_header(buf[:-4])
    r = _Reader(buf, len(buf) - 4)
    r.pos = pos
    (n_tiles,) = r.unpack(_U32, "tile count")
    if not 0 < n_tiles <= MAX_TILES or n_tiles * (_TILE.size + 4) > r.end - r.pos:
        raise FormatError(f"invalid tile count {n_tiles}")
    tiles = []
    for _ in range(n_tiles):
        zh, zw, checksum, n_strings = r.unpack(_TILE, "tile")
        if not 0 < n_strings <= MAX_STRINGS:
            raise FormatError(f"invalid string count {n_strings}")
        strings = []
        for _ in range(n_strings):
            (n,) = r.unpack(_U32, "string length")
            if n > MAX_STRING:
                raise FormatError(f"invalid string length {n}")
            strings.append(r.take(n, "entropy-coded string"))
        tiles.append(Tile((zh, zw), checksum, tuple(strings)))
    if r.pos != r.end:
        raise FormatError(f"{r.end - r.pos} unexpected bytes after the payload")
    return PsicFile(header, tuple(tiles))
