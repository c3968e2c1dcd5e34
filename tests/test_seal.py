"""Sealed .psic files: the AEAD layer (psic_cli/seal.py), the codec API and the CLI commands."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from psic_cli import container
from psic_cli.cli import app
from psic_cli.errors import ExitCode, FormatError, TruncatedFile, UnsupportedVersion
from psic_cli.keys import generate_key, write_key
from psic_cli.seal import (
    HEADER_BYTES,
    OVERHEAD,
    SEAL_MAGIC,
    SealedFileNeedsKey,
    SealOpenError,
    is_sealed,
    parse_header,
    seal,
    unseal,
)

from .conftest import TEST_KEY

GOLDEN = Path(__file__).parent / "golden" / "v2"
runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def _plain() -> bytes:
    h = container.Header("psic-sh", "scale-hyperprior", bytes(8), 2, 100, 70)
    return container.pack(container.PsicFile(h, (container.Tile((2, 2), 7, (b"y" * 50, b"z" * 9)),)))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- the sealed format ---------------------------------------------------------------------------------


def test_round_trip_layout_and_overhead():
    plain = _plain()
    sealed = seal(plain, TEST_KEY)
    assert is_sealed(sealed) and not is_sealed(plain)
    assert len(sealed) - len(plain) == OVERHEAD <= 64
    magic, version, alg = struct.unpack_from("<8sBB", sealed)
    assert (magic, version, alg) == (SEAL_MAGIC, 1, 1)
    (length,) = struct.unpack_from("<I", sealed, HEADER_BYTES - 4)
    assert length == len(sealed) - HEADER_BYTES == len(plain) + 16
    assert plain not in sealed  # encrypted, not wrapped
    assert unseal(sealed, TEST_KEY) == plain
    assert seal(plain, TEST_KEY) != sealed  # a fresh salt and nonce every time


def test_overhead_at_most_64_bytes_on_real_files():
    for f in sorted(GOLDEN.glob("*.psic")):
        plain = f.read_bytes()
        assert len(seal(plain, TEST_KEY)) - len(plain) <= 64


def test_wrong_key_and_every_flipped_byte_fail_cleanly():
    plain = _plain()
    sealed = seal(plain, TEST_KEY)
    with pytest.raises(SealOpenError, match="wrong key or damaged file"):
        unseal(sealed, generate_key())
    with pytest.raises(SealedFileNeedsKey):
        unseal(sealed, None)
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises((SealOpenError, FormatError)):
            unseal(bytes(bad), TEST_KEY)


def test_structural_defects_are_format_errors():
    sealed = seal(_plain(), TEST_KEY)
    for n in range(len(sealed)):
        with pytest.raises((FormatError, SealOpenError)):
            unseal(sealed[:n], TEST_KEY)
    with pytest.raises(FormatError, match="unexpected bytes"):
        parse_header(sealed + b"x")
    with pytest.raises(TruncatedFile):
        parse_header(sealed[:-1])
    future = bytearray(sealed)
    future[8] = 2
    with pytest.raises(UnsupportedVersion, match="newer psic"):
        parse_header(bytes(future))
    with pytest.raises(FormatError, match="already sealed"):
        seal(sealed, TEST_KEY)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 255))
def test_random_sealed_bytes_never_escape_as_other_errors(blob, version):
    header = SEAL_MAGIC + bytes([1, 1]) + bytes(28)
    for candidate in (SEAL_MAGIC + blob, SEAL_MAGIC + bytes([version]) + blob,
                      header + struct.pack("<I", len(blob)) + blob):
        with pytest.raises((FormatError, SealOpenError)):
            unseal(candidate, TEST_KEY)


def test_older_readers_see_a_newer_format():
    with pytest.raises(UnsupportedVersion, match="newer psic"):
        container.unpack(seal(_plain(), TEST_KEY))


# --- the codec API ---------------------------------------------------------------------------------------


def test_api_seal_checks_the_file_and_decode_opens_sealed_input(tiny_env, rgb_image):
    from psic_cli import codec

    with pytest.raises(FormatError):
        codec.seal(b"not a psic file", TEST_KEY)
    plain = codec.encode_pixels(rgb_image, "tiny-sh", 1)
    sealed = codec.seal(plain, TEST_KEY)
    assert codec.unseal(sealed, TEST_KEY) == plain
    want_full = codec.decode(plain, TEST_KEY).pixels
    assert (codec.decode(sealed, TEST_KEY).pixels == want_full).all()  # key= opens the seal and the view
    other = generate_key()
    shielded = codec.decode(codec.seal(plain, other), seal_key=other)
    assert shielded.view == "shielded" and (shielded.pixels == codec.decode(plain).pixels).all()
    with pytest.raises(SealedFileNeedsKey):
        codec.decode(sealed)
    with pytest.raises(SealOpenError):
        codec.decode(sealed, seal_key=other)
    assert codec.read_info(sealed) == {"sealed": True, "seal_version": 1, "bytes": len(sealed)}
    info = codec.read_info(sealed, TEST_KEY)
    assert info["sealed"] is True and info["model"] == "tiny-sh" and info["sealed_bytes"] == len(sealed)
    assert codec.read_info(plain)["sealed"] is False


# --- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture()
def coded(tiny_env, tmp_path, rgb_image):
    src = tmp_path / "photo.png"
    Image.fromarray(rgb_image).save(src)
    r = run("encode", src, "-m", "tiny-sh", "-q", "1", "-o", tmp_path / "photo.psic")
    assert r.exit_code == 0, r.stderr
    return tmp_path / "photo.psic"


@pytest.fixture()
def seal_key(tmp_path) -> Path:
    p = tmp_path / "mine.key"
    write_key(p, generate_key())
    return p


def test_cli_seal_unseal_round_trip(coded, seal_key, tmp_path):
    r = run("seal", coded, "--key", seal_key)
    assert r.exit_code == 0, r.stderr
    sealed = tmp_path / "photo.sealed.psic"
    assert is_sealed(sealed.read_bytes()) and len(sealed.read_bytes()) - len(coded.read_bytes()) <= 64
    assert run("seal", coded, "--key", seal_key).exit_code == ExitCode.OUTPUT  # never overwrites
    r = run("seal", sealed, "--key", seal_key, "-o", tmp_path / "twice.psic")
    assert r.exit_code == 3 and "already sealed" in r.stderr and not (tmp_path / "twice.psic").exists()
    r = run("unseal", sealed, "--key", seal_key, "-o", tmp_path / "back.psic")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "back.psic").read_bytes() == coded.read_bytes()
    r = run("unseal", coded, "--key", seal_key, "-o", tmp_path / "x.psic")
    assert r.exit_code == 3 and "not a sealed" in r.stderr and not (tmp_path / "x.psic").exists()
    assert _leftovers(tmp_path) == []


def test_cli_wrong_key_exit_4_nothing_written(coded, seal_key, key_file, tmp_path):
    sealed = tmp_path / "s.psic"
    assert run("seal", coded, "-k", seal_key, "-o", sealed).exit_code == 0
    for args in (("unseal", sealed, "--key", key_file, "-o", tmp_path / "out.psic"),
                 ("decode", sealed, "--key", key_file, "-o", tmp_path / "out.png"),
                 ("decode", sealed, "--seal", key_file, "-o", tmp_path / "out.png")):
        r = run(*args)
        assert r.exit_code == 4, (args, r.stderr)
        assert "wrong key or damaged file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.psic").exists() and not (tmp_path / "out.png").exists()
    assert _leftovers(tmp_path) == []


def test_cli_decode_sealed_without_key_exit_4(coded, seal_key, tmp_path):
    sealed = tmp_path / "s.psic"
    assert run("seal", coded, "-k", seal_key, "-o", sealed).exit_code == 0
    r = run("decode", sealed, "-o", tmp_path / "out.png")
    assert r.exit_code == 4 and "sealed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists() and _leftovers(tmp_path) == []


def test_cli_flipped_byte_clean_error_nothing_written(coded, seal_key, tmp_path):
    sealed = tmp_path / "s.psic"
    assert run("seal", coded, "-k", seal_key, "-o", sealed).exit_code == 0
    data = sealed.read_bytes()
    for i in (0, 8, 9, 20, 40, HEADER_BYTES, len(data) // 2, len(data) - 1):
        bad = tmp_path / "bad.psic"
        flipped = bytearray(data)
        flipped[i] ^= 0x40
        bad.write_bytes(bytes(flipped))
        for args in (("decode", bad, "--seal", seal_key, "-o", tmp_path / "out.png"),
                     ("unseal", bad, "--key", seal_key, "-o", tmp_path / "out.psic")):
            r = run(*args)
            assert r.exit_code in (3, 4), (i, args, r.stderr)
            # magic, version, algorithm and length are checked before the key is used (exit 3); salt, nonce
            # and ciphertext are the AEAD's (exit 4, "wrong key or damaged file")
            assert r.exit_code == (3 if i in (0, 8, 9) or HEADER_BYTES - 4 <= i < HEADER_BYTES else 4)
            assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "out.psic").exists()
    assert _leftovers(tmp_path) == []


def test_cli_encode_seal_and_decode_with_seal_and_view_keys(tiny_env, tmp_path, rgb_image, seal_key, key_file):
    src = tmp_path / "photo.png"
    Image.fromarray(rgb_image).save(src)
    r = run("encode", src, "-m", "tiny-sh", "--seal", seal_key)
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "photo.psic"
    assert is_sealed(out.read_bytes())
    plain = tmp_path / "plain.psic"
    assert run("encode", src, "-m", "tiny-sh", "-o", plain).exit_code == 0
    assert len(out.read_bytes()) - len(plain.read_bytes()) <= 64
    # the seal key alone gives the shielded view; with the model's key too, the full view
    assert run("decode", out, "--seal", seal_key, "-o", tmp_path / "s.png").exit_code == 0
    assert run("decode", plain, "-o", tmp_path / "s0.png").exit_code == 0
    assert Image.open(tmp_path / "s.png").tobytes() == Image.open(tmp_path / "s0.png").tobytes()
    r = run("decode", out, "--seal", seal_key, "--key", key_file, "-o", tmp_path / "f.png")
    assert r.exit_code == 0, r.stderr
    assert run("decode", plain, "--key", key_file, "-o", tmp_path / "f0.png").exit_code == 0
    assert Image.open(tmp_path / "f.png").tobytes() == Image.open(tmp_path / "f0.png").tobytes()
    # a bad seal key file fails before any work
    r = run("encode", src, "-m", "tiny-sh", "--seal", tmp_path / "missing.key", "-o", tmp_path / "n.psic")
    assert r.exit_code == 4 and not (tmp_path / "n.psic").exists()


def test_cli_info_on_sealed_file(coded, seal_key, tmp_path):
    sealed = tmp_path / "s.psic"
    assert run("seal", coded, "-k", seal_key, "-o", sealed).exit_code == 0
    r = run("info", sealed, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"sealed": True, "seal_version": 1, "bytes": sealed.stat().st_size}
    r = run("info", sealed)
    assert r.exit_code == 0 and "sealed: True" in r.stdout and "model" not in r.stdout
    r = run("info", sealed, "--json", "--key", seal_key)
    meta = json.loads(r.stdout)
    assert r.exit_code == 0 and meta["sealed"] is True and meta["model"] == "tiny-sh" and meta["quality"] == 1
    r = run("info", sealed, "--key", coded.parent / "nope.key")
    assert r.exit_code == 4
    assert json.loads(run("info", coded, "--json").stdout)["sealed"] is False


def test_cli_stdin_stdout(coded, seal_key):
    r = run("seal", "-", "-k", seal_key, "-o", "-", input=coded.read_bytes())
    assert r.exit_code == 0, r.stderr
    assert is_sealed(r.stdout_bytes)
    r = run("unseal", "-", "-k", seal_key, "-o", "-", input=r.stdout_bytes)
    assert r.exit_code == 0 and r.stdout_bytes == coded.read_bytes()


def test_cli_public_key_warns(coded, tmp_path, monkeypatch):
    weights = tmp_path / "w"
    weights.mkdir()
    key = generate_key()
    write_key(weights / "shipped.key", key)
    monkeypatch.setenv("PSIC_WEIGHTS", str(weights))
    r = run("seal", coded, "-k", weights / "shipped.key", "-o", tmp_path / "p.psic")
    assert r.exit_code == 0 and "public" in r.stderr


def test_batch_encode_and_decode_sealed(tiny_env, tmp_path, rgb_image, seal_key):
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in ("a", "b"):
        Image.fromarray(rgb_image).save(photos / f"{n}.png")
    r = run("encode", photos, "-o", tmp_path / "coded", "-m", "tiny-sh", "--seal", seal_key)
    assert r.exit_code == 0, r.stderr
    assert all(is_sealed(p.read_bytes()) for p in (tmp_path / "coded").glob("*.psic"))
    r = run("decode", tmp_path / "coded", "-o", tmp_path / "views")
    assert r.exit_code == 4 and not list((tmp_path / "views").glob("*.png"))
    r = run("decode", tmp_path / "coded", "-o", tmp_path / "views", "--seal", seal_key)
    assert r.exit_code == 0, r.stderr
    assert len(list((tmp_path / "views").glob("*.png"))) == 2


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.psic")), ids=lambda p: p.name)
def test_unsealed_golden_files_are_untouched(golden):
    """Plain files keep their format: they still parse as before and are never mistaken for sealed ones."""
    data = golden.read_bytes()
    assert not is_sealed(data)
    container.unpack(data)
    assert unseal(seal(data, TEST_KEY), TEST_KEY) == data


def test_golden_file_decodes_plain_and_sealed_with_shipped_weights(tmp_path, monkeypatch):
    """An old unsealed file still decodes through the CLI; sealed, it decodes to the same full view."""
    import numpy as np

    from psic_cli.zoo import list_models, load_model

    from .conftest import REPO

    monkeypatch.delenv("PSIC_WEIGHTS", raising=False)
    load_model.cache_clear()
    if not any(m.model_id == "psic-sh" for m in list_models()):
        pytest.skip("psic-sh weights are not installed")
    golden = GOLDEN / "psic-sh-q1.psic"
    shipped = REPO / "weights" / "shipped.key"
    assert run("decode", golden, "--key", shipped, "-o", tmp_path / "plain.png").exit_code == 0
    mine = tmp_path / "mine.key"
    write_key(mine, generate_key())
    assert run("seal", golden, "-k", mine, "-o", tmp_path / "s.psic").exit_code == 0
    r = run("decode", tmp_path / "s.psic", "--seal", mine, "--key", shipped, "-o", tmp_path / "sealed.png")
    assert r.exit_code == 0, r.stderr
    want = np.asarray(Image.open(GOLDEN / "psic-sh-q1.full.png")).astype(np.int16)
    for name in ("plain.png", "sealed.png"):
        got = np.asarray(Image.open(tmp_path / name)).astype(np.int16)
        assert got.shape == want.shape and int(np.abs(got - want).max()) <= 1
    load_model.cache_clear()
