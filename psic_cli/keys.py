"""Keys: generation, armoured key files, and the key -> decoder-condition derivation.

A key is 32 random bytes.  On disk it is armoured text::

    -----BEGIN PSIC KEY-----
    <base64 of the 32 bytes>
    -----END PSIC KEY-----

written with mode 0600.  From a key, HKDF-SHA256 (RFC 5869, salt ``b"psic"``) derives

- a **condition** under a label (``views.condition`` passes a keyed view's name, ``full`` or ``machine``):
  ``info = b"psic/condition/v1/<label>"``, ``cond_dim // 8`` bytes, each bit mapped to +1 (set) or -1
  (clear), most significant bit first;
- the **fingerprint**: ``info = b"psic/fingerprint/v1"``, 8 bytes, shown as 16 hex digits.  Models store
  the fingerprint of the key that opens their full view, so a wrong key is refused before decoding.

A **public condition** needs no key: it is derived the same way from the published constant
:data:`PUBLIC_SHIELD_SEED` with ``info = b"psic/condition/v1/shield/<label>"`` (the strong shield's; the
subtle shield's condition is all zeros).  Which view gets which condition is decided in ``psic_cli.views``.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import stat
from pathlib import Path

from psic_cli.errors import KeyError_

KEY_BYTES = 32
_BEGIN = "-----BEGIN PSIC KEY-----"
_END = "-----END PSIC KEY-----"
MAX_KEY_FILE = 4096
PUBLIC_SHIELD_SEED = b"psic public shield levels"


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def armour(key: bytes) -> str:
    return f"{_BEGIN}\n{base64.b64encode(key).decode('ascii')}\n{_END}\n"


def parse_key(text: str, name: str = "key") -> bytes:
    """Parse armoured key text; raise :class:`KeyError_` with a one-line reason."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) != 3 or lines[0] != _BEGIN or lines[2] != _END:
        raise KeyError_(f"{name}: not a psic key file (expected the '{_BEGIN}' block written by 'psic keygen')")
    try:
        key = base64.b64decode(lines[1], validate=True)
    except ValueError:
        raise KeyError_(f"{name}: malformed key (invalid base64)") from None
    if len(key) != KEY_BYTES:
        raise KeyError_(f"{name}: wrong key length ({len(key)} bytes, expected {KEY_BYTES})")
    return key


def _shipped_keys() -> list[bytes]:
    """The public keys that ship with the repository's weights (``weights/shipped.key``)."""
    from psic_cli.zoo import weights_dir

    found = []
    for p in {Path(__file__).resolve().parent.parent / "weights" / "shipped.key", weights_dir() / "shipped.key"}:
        try:
            if p.is_file() and p.stat().st_size <= MAX_KEY_FILE:
                found.append(parse_key(p.read_text(encoding="ascii")))
        except (OSError, UnicodeDecodeError, KeyError_):
            continue
    return found


def is_public_key(key: bytes) -> bool:
    """Whether ``key`` is a published one (the shipped weights' key): nothing to keep private, no mode warning."""
    return any(hmac.compare_digest(key, k) for k in _shipped_keys())


def read_key(path: str | os.PathLike, warn=None) -> bytes:
    """Read a key file.  ``warn(msg)`` is called when the file is readable by group or others, unless the
    key is a public one (:func:`is_public_key`: git checks ``weights/shipped.key`` out with mode 0644)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyError_(f"{p}: key file not found") from None
    except OSError as e:
        raise KeyError_(f"{p}: cannot read key file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyError_(f"{p}: not a regular file")
    if st.st_size > MAX_KEY_FILE:
        raise KeyError_(f"{p}: not a psic key file (too large)")
    try:
        text = p.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError):
        raise KeyError_(f"{p}: not a psic key file") from None
    key = parse_key(text, str(p))
    if warn is not None and st.st_mode & 0o077 and not is_public_key(key):
        warn(f"{p}: key file is readable by other users (chmod 600 {p})")
    return key


def write_key(path: str | os.PathLike, key: bytes, force: bool = False) -> None:
    """Write an armoured key with mode 0600, atomically; refuse to overwrite unless ``force``."""
    from psic_cli.fileio import atomic_write

    atomic_write(Path(path), armour(key).encode("ascii"), force=force, mode=0o600)


def _hkdf(key: bytes, info: bytes, length: int) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"psic", info=info).derive(key)


def fingerprint(key: bytes) -> str:
    """16 hex digits identifying a key without revealing it."""
    return _hkdf(key, b"psic/fingerprint/v1", 8).hex()


def _plus_minus_one(raw: bytes) -> list[float]:
    """Each bit, most significant first, as +1 (set) or -1 (clear)."""
    return [1.0 if (byte >> (7 - i)) & 1 else -1.0 for byte in raw for i in range(8)]


def _label(label: str) -> bytes:
    if not label or not label.isascii() or not label.isalnum():
        raise ValueError(f"condition label must be a short ASCII word, not {label!r}")
    return label.encode("ascii")


def condition_bits(key: bytes, cond_dim: int, label: str) -> list[float]:
    """The +-1 condition vector derived from ``key`` under ``label`` (length ``cond_dim``, a multiple of 8)."""
    if cond_dim % 8:
        raise ValueError("cond_dim must be a multiple of 8")
    return _plus_minus_one(_hkdf(key, b"psic/condition/v1/" + _label(label), cond_dim // 8))


def public_condition(cond_dim: int, label: str) -> list[float]:
    """A +-1 condition vector anyone can derive, without a key (see the module docstring)."""
    if cond_dim % 8:
        raise ValueError("cond_dim must be a multiple of 8")
    return _plus_minus_one(_hkdf(PUBLIC_SHIELD_SEED, b"psic/condition/v1/shield/" + _label(label), cond_dim // 8))
