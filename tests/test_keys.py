import os
import stat

import pytest

from psic_cli import keys
from psic_cli.errors import KeyError_, OutputError

from .conftest import TEST_KEY


def test_keygen_file_mode_and_no_overwrite(tmp_path):
    p = tmp_path / "k.key"
    keys.write_key(p, keys.generate_key())
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    first = p.read_text()
    with pytest.raises(OutputError, match="--force"):
        keys.write_key(p, keys.generate_key())
    assert p.read_text() == first
    keys.write_key(p, keys.generate_key(), force=True)
    assert p.read_text() != first


def test_round_trip_and_derivation_is_pinned(tmp_path):
    p = tmp_path / "k.key"
    keys.write_key(p, TEST_KEY)
    assert keys.read_key(p) == TEST_KEY
    # known answers: the derivation is part of the file contract (keys must keep opening models)
    assert keys.fingerprint(TEST_KEY) == KNOWN_FINGERPRINT
    bits = keys.condition_bits(TEST_KEY, 16, "full")
    assert bits == KNOWN_FULL_BITS
    assert keys.condition_bits(TEST_KEY, 16, "machine") == KNOWN_MACHINE_BITS


KNOWN_FULL_BITS = [1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0, -1.0, 1.0]
KNOWN_MACHINE_BITS = [-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0]
KNOWN_STRONG_BITS = [-1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0]
KNOWN_FINGERPRINT = "19bb5b4ae16f01b1"  # HKDF-SHA256(bytes 0..31, salt "psic", info "psic/fingerprint/v1")


@pytest.mark.parametrize(
    "text,match",
    [
        ("hello", "not a psic key"),
        ("-----BEGIN PSIC KEY-----\n!!!!\n-----END PSIC KEY-----\n", "base64"),
        ("-----BEGIN PSIC KEY-----\nAAAA\n-----END PSIC KEY-----\n", "wrong key length"),
    ],
)
def test_malformed_keys(tmp_path, text, match):
    p = tmp_path / "bad.key"
    p.write_text(text)
    with pytest.raises(KeyError_, match=match):
        keys.read_key(p)


def test_missing_and_world_readable(tmp_path):
    with pytest.raises(KeyError_, match="not found"):
        keys.read_key(tmp_path / "nope.key")
    p = tmp_path / "k.key"
    keys.write_key(p, TEST_KEY)
    os.chmod(p, 0o644)
    warnings = []
    keys.read_key(p, warn=warnings.append)
    assert warnings and "readable by other users" in warnings[0]


def test_public_conditions_are_pinned_and_labels_checked():
    assert keys.public_condition(16, "strong") == KNOWN_STRONG_BITS
    for bad in ("", "a/b", "full\n", "\u00e9"):
        with pytest.raises(ValueError):
            keys.condition_bits(TEST_KEY, 16, bad)
        with pytest.raises(ValueError):
            keys.public_condition(16, bad)


def test_no_mode_warning_for_the_public_shipped_key(tmp_path):
    from .conftest import REPO

    shipped = REPO / "weights" / "shipped.key"
    copy = tmp_path / "shipped-copy.key"
    copy.write_bytes(shipped.read_bytes())
    os.chmod(copy, 0o644)  # as git checks it out
    warnings: list[str] = []
    assert keys.read_key(copy, warn=warnings.append) == keys.read_key(shipped)
    assert keys.is_public_key(keys.read_key(shipped)) and not keys.is_public_key(TEST_KEY)
    keys.read_key(shipped, warn=warnings.append)
    assert warnings == []
