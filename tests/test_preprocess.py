"""Indexer preprocessing (psic_lab.vlp.preprocess): Pillow-like resizing, the variants, the sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psic_lab.vlp import preprocess as pp


def _photo(h: int = 150, w: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 1.2, yy * 1.5, 128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 5.0)], -1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("size", [(56, 75), (224, 300), (100, 133)])
def test_resize_is_close_to_pillow_bicubic(size):
    from PIL import Image

    a = _photo()
    ref = np.asarray(Image.fromarray(a).resize(size[::-1], Image.BICUBIC)).astype(float)
    got = (pp.resize(_t(a), size)[0].permute(1, 2, 0).numpy() * 255).round()
    diff = np.abs(got - ref)
    assert got.shape == ref.shape
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, (diff.mean(), diff.max())


def test_resize_clamps_and_keeps_identity():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 16:, :] = 1.0  # a hard edge: bicubic over- and undershoots
    y = pp.resize(x, (80, 80))
    assert y.min() >= 0 and y.max() <= 1
    assert pp.resize(x, (32, 32)) is x


@pytest.mark.parametrize("name,side", [("short224", 224), ("short336", 336), ("short448", 448), ("squash224", 224)])
def test_variants_give_square_tower_inputs(name, side):
    x = _t(_photo(150, 400))
    y = pp.VARIANTS[name](x)
    assert y.shape == (1, 3, side, side)


def test_short224_crops_the_centre_and_squash_keeps_everything():
    x = torch.zeros(1, 3, 100, 300)
    x[..., :, :50] = 1.0  # a bright band at the left edge: outside the centre crop, inside the squash
    assert pp.short224(x)[..., :, :10].max() < 0.05
    assert pp.squash224(x)[..., :, :10].min() > 0.95


def test_tiles_are_tile_major_per_image():
    x = torch.zeros(2, 3, 64, 96)
    x[1, :, 32:, 48:] = 1.0  # image 1, bottom-right tile
    t = pp.tiles2x2(x)
    assert t.shape == (8, 3, 224, 224)
    means = t.mean(dim=(1, 2, 3))
    assert means[7] > 0.99 and means[:7].max() < 1e-6


def test_reencoding_is_lossy_with_a_straight_through_gradient():
    x = _t(_photo()).requires_grad_(True)
    for f in (pp.jpeg75, pp.webp75):
        y = f(x)
        assert 0 < (y - x).abs().mean() < 0.05
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.allclose(g, torch.ones_like(g))


def test_indexer_composes_and_names_its_choices():
    x = _t(_photo(150, 200))
    assert pp.indexer("half+short224")(x).shape == (1, 3, 224, 224)
    assert pp.half(x).shape[-2:] == (75, 100)
    with pytest.raises(KeyError, match="short224"):
        pp.indexer("short999")
    with pytest.raises(KeyError, match="jpeg75"):
        pp.indexer("gif+short224")


def test_resize_is_differentiable():
    x = _t(_photo(60, 80)).requires_grad_(True)
    pp.short224(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_sampler_is_reproducible_and_covers_its_variants():
    s = pp.IndexerSampler(variants=("short224", "squash224", "tiles2x2"), sizes=(160, 224, 288),
                          degradations=("half",), p_degrade=0.5)
    draws = [s.draw(torch.Generator().manual_seed(k)) for k in range(40)]
    again = [s.draw(torch.Generator().manual_seed(k)) for k in range(40)]
    assert draws == again
    assert {d[1] for d in draws} == {"short224", "squash224", "tiles2x2"}
    assert {d[2] for d in draws} == {160, 224, 288}
    assert {d[0] for d in draws} == {None, "half"}
    x = _t(_photo(120, 180))
    for k in range(6):
        gen = torch.Generator().manual_seed(k)
        deg, variant, size = s.draw(torch.Generator().manual_seed(k))
        y = s(x, gen)
        assert y.shape == ((4 if variant == "tiles2x2" else 1), 3, size, size)


def test_embed_native_runs_the_tower_at_the_input_size():
    class Tower:
        image_size = 224

        def encode_image(self, x):
            return torch.tensor([[float(self.image_size)]])

    t = Tower()
    assert pp.embed_native(t, torch.zeros(1, 3, 336, 336)).item() == 336
    assert t.image_size == 224
    with pytest.raises(ValueError):
        pp.embed_native(t, torch.zeros(1, 3, 336, 300))
