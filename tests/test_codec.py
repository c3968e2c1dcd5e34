import numpy as np
import pytest

from psic_cli import codec
from psic_cli.errors import ChecksumError, FormatError, KeyMismatch, ModelError, UsageError

from .conftest import TEST_KEY


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


@pytest.mark.parametrize("model_id", ["tiny-sh", "tiny-msh"])
@pytest.mark.parametrize("shape", [(1, 1), (70, 100), (65, 129)])
def test_round_trip_any_size(tiny_env, rgb_image, model_id, shape):
    img = np.ascontiguousarray(np.resize(rgb_image, (*shape, 3)))
    data = codec.encode_pixels(img, model_id, quality=2)
    info = codec.read_info(data)
    assert (info["width"], info["height"], info["model"], info["quality"]) == (shape[1], shape[0], model_id, 2)
    assert info["format_version"] == 2  # pads to 16 pixels, not 64: fewer latents to code
    shielded = codec.decode(data)
    full = codec.decode(data, key=TEST_KEY)
    assert shielded.view == "shielded" and full.view == "full"
    assert shielded.pixels.shape == full.pixels.shape == img.shape
    # decoding is deterministic
    assert np.array_equal(codec.decode(data).pixels, shielded.pixels)


def test_views_differ_and_key_is_checked(tiny_env, rgb_image):
    data = codec.encode_pixels(rgb_image, "tiny-sh")
    a = codec.decode(data).pixels
    b = codec.decode(data, key=TEST_KEY).pixels
    assert not np.array_equal(a, b)
    with pytest.raises(KeyMismatch, match="does not open"):
        codec.decode(data, key=bytes(32))
    with pytest.raises(UsageError, match="needs a key"):
        codec.decode(data, view="full")


def test_shield_levels_and_machine_view(tiny_env, rgb_image):
    from psic_cli.errors import InputError

    data = codec.encode_pixels(rgb_image, "tiny-sh")
    with pytest.raises(ModelError, match="no trained strong shield"):
        codec.decode(data, shield="strong")
    with pytest.raises(ModelError, match="no trained machine view"):
        codec.decode(data, key=TEST_KEY, view="machine")
    with pytest.raises(InputError, match="unknown shield level"):
        codec.decode(data, shield="medium")
    with pytest.raises(InputError, match="shielded view only"):
        codec.decode(data, key=TEST_KEY, shield="strong")
    assert np.array_equal(codec.decode(data, shield="subtle").pixels, codec.decode(data).pixels)
    data = codec.encode_pixels(rgb_image, "tiny-views")
    views = [codec.decode(data).pixels, codec.decode(data, shield="strong").pixels,
             codec.decode(data, key=TEST_KEY).pixels, codec.decode(data, key=TEST_KEY, view="machine").pixels]
    for i in range(len(views)):  # four different conditions, four different decodes
        for j in range(i):
            assert not np.array_equal(views[i], views[j])


def test_symbol_checksum_catches_desync(tiny_env, rgb_image):
    from psic_cli import container

    data = codec.encode_pixels(rgb_image, "tiny-sh")
    f = container.unpack(data)
    t = f.tiles[0]
    bad = container.PsicFile(f.header, (container.Tile(t.z_shape, t.checksum ^ 1, t.strings),))
    with pytest.raises(ChecksumError, match="desync"):
        codec.decode(container.pack(bad))


def test_other_weights_and_unknown_model_are_refused(tiny_env, rgb_image):
    from psic_cli import container

    data = codec.encode_pixels(rgb_image, "tiny-sh")
    f = container.unpack(data)
    h = f.header
    other = container.Header(h.model_id, h.arch, b"\0" * 8, h.quality, h.width, h.height)
    with pytest.raises(ModelError, match="other weights"):
        codec.decode(container.pack(container.PsicFile(other, f.tiles)))
    gone = container.Header("psic-none", h.arch, h.weights_id, h.quality, h.width, h.height)
    with pytest.raises(ModelError, match="not installed"):
        codec.decode(container.pack(container.PsicFile(gone, f.tiles)))
    wrong = container.Header(h.model_id, h.arch, h.weights_id, h.quality, h.width + 64, h.height)
    with pytest.raises(FormatError, match="does not match"):
        codec.decode(container.pack(container.PsicFile(wrong, f.tiles)))


def test_missing_weights_name_the_folder_and_the_variable(monkeypatch, tmp_path):
    """A non-editable install has no weights beside the package: the error says where it looked and what to set."""
    from psic_cli import zoo

    monkeypatch.setattr(zoo, "weights_dir", lambda: tmp_path)
    monkeypatch.delenv("PSIC_WEIGHTS", raising=False)
    with pytest.raises(ModelError, match=f"folder {tmp_path}; set PSIC_WEIGHTS"):
        zoo.model_info("psic-sh")


def test_quality_range(tiny_env, rgb_image):
    from psic_cli.errors import InputError

    with pytest.raises(InputError, match="out of range"):
        codec.encode_pixels(rgb_image, "tiny-sh", quality=3)
