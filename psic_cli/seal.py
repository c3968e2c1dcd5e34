"""Sealed .psic files: a whole .psic file encrypted and authenticated under a psic key (spec: ``docs/format.md``).

A plain ``.psic`` file is not encrypted: the key only switches the decoder between views, and anyone with
the public weights can decode any file (``docs/threat-model.md``).  Sealing is the lock for files that
travel.  Layout (all integers little-endian)::

    magic b"PSICSEAL" (8), version u8 (1), algorithm u8 (1 = ChaCha20-Poly1305),
    salt (16 random bytes), nonce (12 random bytes), ciphertext length u32,
    ciphertext (the whole plain .psic file) + Poly1305 tag (16)

The AEAD key is HKDF-SHA256(psic key bytes, salt, info ``b"psic/seal/v1"``), 32 bytes; the associated data
is the 42 header bytes before the ciphertext, so a change to any byte of the file is detected.  Sealing
adds :data:`OVERHEAD` = 58 bytes.  A wrong key and a damaged file are indistinguishable to the AEAD: both
raise :class:`SealOpenError` (exit code 4).  Structural defects found before decryption (truncation, a
length that does not add up, an unknown version) are :class:`FormatError` subclasses (exit code 3).

The magic starts with ``PSIC`` and its fifth byte (``S``, 0x53) reads as format version 83 to an older
psic, which therefore says "written by a newer psic" instead of misreading the file.
"""

from __future__ import annotations

import os
import struct

from psic_cli.errors import FormatError, KeyError_, TruncatedFile, UnsupportedVersion

SEAL_MAGIC = b"PSICSEAL"
SEAL_VERSION = 1
ALG_CHACHA20_POLY1305 = 1
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
HKDF_INFO = b"psic/seal/v1"
MAX_SEALED_PAYLOAD = (1 << 31) + TAG_BYTES

_HEADER = struct.Struct(f"<8sBB{SALT_BYTES}s{NONCE_BYTES}sI")  # magic, version, alg, salt, nonce, length
HEADER_BYTES = _HEADER.size  # 42
OVERHEAD = HEADER_BYTES + TAG_BYTES  # 58


class SealOpenError(KeyError_):
    """A sealed file did not open: the key is not the one that sealed it, or the file was changed."""


class SealedFileNeedsKey(KeyError_):
    """A sealed file was given without a key."""


def is_sealed(data: bytes) -> bool:
    """True when ``data`` starts with the sealed magic (a plain .psic never does)."""
    return bytes(data[: len(SEAL_MAGIC)]) == SEAL_MAGIC


def _aead_key(key: bytes, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if len(key) != 32:
        raise KeyError_(f"wrong key length ({len(key)} bytes, expected 32)")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=HKDF_INFO).derive(key)


def sealed_size(head: bytes) -> int:
    """The whole file's size that a sealed header (its first ``HEADER_BYTES`` bytes) declares, after checking
    its fields; readers use it to cap how much they read.  Raises FormatError like :func:`parse_header`."""
    head = bytes(head[:HEADER_BYTES])
    if len(head) < HEADER_BYTES:
        raise TruncatedFile(f"truncated at byte {len(head)} (shorter than the {HEADER_BYTES}-byte sealed header)")
    length = _HEADER.unpack_from(head)[-1]
    parse_header(head + bytes(length))  # the same checks, on a stand-in payload of the declared length
    return HEADER_BYTES + length


def parse_header(data: bytes) -> dict:
    """Check a sealed file's header and lengths (no key needed); return its fields.

    Raises:
        FormatError: not a sealed file, an unknown version or algorithm, or lengths that do not add up.
    """
    data = bytes(data)
    if not is_sealed(data):
        raise FormatError("not a sealed .psic file (bad magic bytes)")
    if len(data) < HEADER_BYTES:
        raise TruncatedFile(f"truncated at byte {len(data)} (shorter than the {HEADER_BYTES}-byte sealed header)")
    magic, version, alg, salt, nonce, length = _HEADER.unpack_from(data)
    if version != SEAL_VERSION:
        if version > SEAL_VERSION:
            raise UnsupportedVersion(
                f"sealed by a newer psic (seal version {version}); this psic reads seal version {SEAL_VERSION}"
            )
        raise UnsupportedVersion(f"unsupported seal version {version}")
    if alg != ALG_CHACHA20_POLY1305:
        raise FormatError(f"unknown sealing algorithm {alg}")
    if not TAG_BYTES <= length <= MAX_SEALED_PAYLOAD:
        raise FormatError(f"invalid sealed length {length}")
    if HEADER_BYTES + length > len(data):
        raise TruncatedFile(f"truncated at byte {len(data)} (sealed header says {HEADER_BYTES + length})")
    if HEADER_BYTES + length < len(data):
        raise FormatError(f"{len(data) - HEADER_BYTES - length} unexpected bytes after the sealed payload")
    return {"seal_version": version, "algorithm": "chacha20-poly1305", "salt": salt, "nonce": nonce,
            "length": length}


def seal(data: bytes, key: bytes) -> bytes:
    """Encrypt and authenticate a plain .psic file under a 32-byte psic key.

    The caller checks that ``data`` is a valid .psic file; sealing an already sealed file is refused.

    Raises:
        FormatError: ``data`` is already sealed.
        KeyError_: ``key`` is not 32 bytes.
    """
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    data = bytes(data)
    if is_sealed(data):
        raise FormatError("file is already sealed")
    if len(data) + TAG_BYTES > MAX_SEALED_PAYLOAD:
        raise FormatError("file is too large to seal")
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    header = _HEADER.pack(SEAL_MAGIC, SEAL_VERSION, ALG_CHACHA20_POLY1305, salt, nonce, len(data) + TAG_BYTES)
    return header + ChaCha20Poly1305(_aead_key(key, salt)).encrypt(nonce, data, header)


def unseal(data: bytes, key: bytes | None) -> bytes:
    """Open a sealed file with the psic key that sealed it; return the plain .psic bytes.

    Raises:
        FormatError: the sealed header is damaged (checked before the key is used).
        SealedFileNeedsKey: ``key`` is None.
        SealOpenError: the key is not the one that sealed the file, or the file was changed.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    data = bytes(data)
    fields = parse_header(data)
    if key is None:
        raise SealedFileNeedsKey("file is sealed; give the key that sealed it (--key, or --seal KEYFILE)")
    try:
        return ChaCha20Poly1305(_aead_key(key, fields["salt"])).decrypt(
            fields["nonce"], data[HEADER_BYTES:], data[:HEADER_BYTES])
    except InvalidTag:
        raise SealOpenError("cannot open sealed file: wrong key or damaged file") from None


__all__ = ["seal", "unseal", "is_sealed", "parse_header", "SealOpenError", "SealedFileNeedsKey", "OVERHEAD"]
