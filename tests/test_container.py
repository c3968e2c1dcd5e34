import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psic_cli import container
from psic_cli.errors import ChecksumError, FormatError, TruncatedFile, UnsupportedVersion


def sample(tiles=1) -> container.PsicFile:
    h = container.Header("psic-sh", "scale-hyperprior", b"\x01" * 8, 3, 768, 512, "RGB")
    ts = tuple(container.Tile((8, 12), 0xDEADBEEF, (b"y" * 100, b"zz")) for _ in range(tiles))
    return container.PsicFile(h, ts)


def test_round_trip():
    f = sample(tiles=3)
    assert container.unpack(container.pack(f)) == f


def test_explicit_little_endian_layout():
    data = container.pack(sample())
    assert data[:4] == b"PSIC" and data[4] == container.FORMAT_VERSION == 2 and data[5] == 0
    (hlen,) = struct.unpack_from("<H", data, 6)
    assert data[8] == len("psic-sh") and data[9:16] == b"psic-sh"
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    assert 8 + hlen < len(data)


def test_latent_geometry_per_version():
    """Format 1 padded images to 64 pixels, format 2 pads to 16; y and z shapes follow from the header."""
    h2 = container.Header("psic-sh", "scale-hyperprior", b"\x01" * 8, 3, 202, 130, "RGB")
    h1 = container.Header("psic-sh", "scale-hyperprior", b"\x01" * 8, 3, 202, 130, "RGB", version=1)
    assert container.latent_shape(h2) == (9, 13) and container.expected_z_shape(h2) == (3, 4)
    assert container.latent_shape(h1) == (12, 16) and container.expected_z_shape(h1) == (3, 4)
    f1 = container.PsicFile(h1, sample().tiles)
    assert container.unpack(container.pack(f1)).header.version == 1


def test_every_truncation_is_a_format_error():
    data = container.pack(sample())
    for n in range(len(data)):
        with pytest.raises(FormatError):
            container.unpack(data[:n])


def test_every_single_bit_flip_is_detected():
    data = container.pack(sample())
    for i in range(0, len(data), 3):
        for bit in (0, 5):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(FormatError):
                container.unpack(bytes(bad))


def test_bad_magic_future_version_trailing_bytes():
    data = container.pack(sample())
    with pytest.raises(FormatError, match="magic"):
        container.unpack(b"JUNK" + data[4:])
    future = bytearray(data)
    future[4] = 9
    with pytest.raises(UnsupportedVersion, match="newer psic"):
        container.unpack(bytes(future))
    with pytest.raises(ChecksumError):
        container.unpack(data + b"\0")
    with pytest.raises(TruncatedFile):
        container.unpack(b"")


def resign(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_absurd_sizes_rejected_even_with_valid_crc():
    data = container.pack(sample())[:-4]
    off = 8 + 1 + 7 + 1 + len("scale-hyperprior") + 8 + 1  # quality, then width u32
    bad = bytearray(data)
    bad[off : off + 4] = struct.pack("<I", 10**9)
    with pytest.raises(FormatError, match="image size"):
        container.unpack(resign(bytes(bad)))
    # a string length far past the end of the file
    hlen = struct.unpack_from("<H", data, 6)[0]
    pos = 8 + hlen + 4 + 9  # tile count, tile record, then the first string length
    bad = bytearray(data)
    bad[pos : pos + 4] = struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(FormatError):
        container.unpack(resign(bytes(bad)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(blob):
    for candidate in (blob, b"PSIC\x01\x00" + blob, resign(b"PSIC\x01\x00" + blob)):
        with pytest.raises(FormatError):
            container.unpack(candidate)
