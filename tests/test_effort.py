"""``--effort``: the encoder's search on the latents (``ConditionalHyperprior.refine``)."""

from __future__ import annotations

import numpy as np
import pytest

from psic_cli import codec
from psic_cli.errors import KeyMismatch, UsageError

from .conftest import TEST_KEY


def _cost(model, x, q, cond, y, z) -> float:
    import torch

    with torch.no_grad():
        bits, y_hat = model.rate_bits(y, z)
        lam = model.cfg.lambdas[q] * 255**2
        mse = (model.synthesize(y_hat, cond, torch.tensor([q])) - x).pow(2).mean()
        return float(bits / x[0, 0].numel() + lam * mse)


@pytest.mark.parametrize("model_id", ["tiny-sh", "tiny-msh"])
def test_the_search_lowers_the_rate_distortion_cost_and_never_raises_it(tiny_env, rgb_image, model_id):
    import torch

    from psic_cli.zoo import load_model

    model = load_model(model_id).model
    x = codec.pad_to_multiple(torch.from_numpy(rgb_image.copy()).permute(2, 0, 1)[None].float() / 255, 16)
    cond = torch.zeros(1, model.cfg.cond_dim)
    with torch.no_grad():
        y0, z0 = model.analysis(x, torch.tensor([1]))
    start = _cost(model, x, 1, cond, y0, z0)
    y, z = model.refine(x, 1, cond, steps=12, lr=0.05)
    assert _cost(model, x, 1, cond, y, z) < start - 1e-3
    y, z = model.refine(x, 1, cond, steps=3, lr=1e3, z_lr=1e3)  # wild steps: the analysis output is kept
    assert torch.equal(y, y0) and torch.equal(z, z0)
    assert not any(p.grad is not None for p in model.parameters())  # the decoder is never touched


def test_the_default_search_steps_grow_with_the_quality_and_lower_the_cost(tiny_env, rgb_image):
    import torch

    from psic_cli.zoo import load_model

    model = load_model("tiny-msh").model
    lrs = [model.refine_lr(q) for q in range(model.cfg.qualities)]
    assert lrs[0] == model.REFINE_LR and all(a < b for a, b in zip(lrs, lrs[1:], strict=False))
    x = codec.pad_to_multiple(torch.from_numpy(rgb_image.copy()).permute(2, 0, 1)[None].float() / 255, 16)
    cond = torch.zeros(1, model.cfg.cond_dim)
    top = model.cfg.qualities - 1
    with torch.no_grad():
        y0, z0 = model.analysis(x, torch.tensor([top]))
    y, z = model.refine(x, top, cond, steps=12)
    assert _cost(model, x, top, cond, y, z) < _cost(model, x, top, cond, y0, z0) - 1e-3


def test_an_effort_file_is_a_valid_file_of_its_own(tiny_env, rgb_image):
    plain = codec.encode_pixels(rgb_image, "tiny-msh", quality=2)
    searched = codec.encode_pixels(rgb_image, "tiny-msh", quality=2, effort=6)
    assert searched != plain
    assert codec.read_info(searched) == codec.read_info(plain) | {"bytes": len(searched),
                                                                 "bpp": codec.read_info(searched)["bpp"]}
    out = codec.decode(searched, key=TEST_KEY)  # the symbol checksum is checked on the way
    assert out.pixels.shape == rgb_image.shape


def test_a_trained_shield_needs_the_models_key(tiny_env, rgb_image, monkeypatch):
    from psic_cli.zoo import load_model

    monkeypatch.setitem(load_model("tiny-sh").info.metadata, "shield", "trained")
    with pytest.raises(UsageError, match="needs its key"):
        codec.encode_pixels(rgb_image, "tiny-sh", effort=2)
    with pytest.raises(KeyMismatch, match="does not open"):
        codec.encode_pixels(rgb_image, "tiny-sh", effort=2, key=bytes(32))
    assert codec.read_info(codec.encode_pixels(rgb_image, "tiny-sh", effort=2, key=TEST_KEY))["model"] == "tiny-sh"
    codec.encode_pixels(rgb_image, "tiny-sh")  # no search, no key needed


def test_large_images_are_coded_in_one_pass_with_a_notice(tiny_env, rgb_image, monkeypatch):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb_image).save(buf, "PNG")
    monkeypatch.setattr(codec, "EFFORT_MAX_PIXELS", rgb_image.shape[0] * rgb_image.shape[1] - 1)
    res = codec.encode(buf.getvalue(), "big.png", "tiny-msh", 2, effort=5)
    assert res.data == codec.encode(buf.getvalue(), "big.png", "tiny-msh", 2).data
    assert any("coded without the --effort search" in n for n in res.notices)


@pytest.mark.parametrize("effort", [-1, 201])
def test_effort_out_of_range_is_a_usage_error(tiny_env, rgb_image, effort):
    with pytest.raises(UsageError, match="out of range"):
        codec.encode_pixels(rgb_image, "tiny-sh", effort=effort)


def test_cli_effort_and_key(tiny_env, tmp_path, key_file, rgb_image):
    from PIL import Image
    from typer.testing import CliRunner

    from psic_cli.cli import app

    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    r = CliRunner().invoke(app, ["encode", str(src), "-m", "tiny-msh", "--effort", "3", "--key", str(key_file)])
    assert r.exit_code == 0, r.output
    assert codec.read_info((tmp_path / "a.psic").read_bytes())["model"] == "tiny-msh"
    r = CliRunner().invoke(app, ["encode", str(src), "-m", "tiny-msh", "--effort", "999", "--force"])
    assert r.exit_code == 2
    assert np.asarray(Image.open(src)).shape == rgb_image.shape


def test_folders_are_searched_too(tiny_env, tmp_path, rgb_image):
    from PIL import Image
    from typer.testing import CliRunner

    from psic_cli.cli import app

    (tmp_path / "in").mkdir()
    Image.fromarray(rgb_image).save(tmp_path / "in" / "a.png")
    r = CliRunner().invoke(app, ["encode", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", "tiny-msh",
                                 "-q", "2", "--effort", "4"])
    assert r.exit_code == 0, r.output
    searched = (tmp_path / "out" / "a.psic").read_bytes()
    assert searched == codec.encode_pixels(rgb_image, "tiny-msh", quality=2, effort=4)
    assert searched != codec.encode_pixels(rgb_image, "tiny-msh", quality=2)
