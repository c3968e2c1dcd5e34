"""The per-photo shield residual (lab prototype): budget, the unseen judges kept out, and that it optimises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psic_lab.evaluation.per_photo import PREPROC, add_residual, optimise_residual, own_classes, texture_mask


class Linear:
    """A stand-in scorer: a fixed linear map of the pooled colours to 5 class scores."""

    def __init__(self, spec: str = "psic-vlp-mini") -> None:
        self.spec = spec
        self.w = torch.randn(5, 3 * 4 * 4, generator=torch.Generator().manual_seed(0))

    def scores(self, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(t, 4).flatten(1) @ self.w.t() * 20

    def hinge(self, t: torch.Tensor, k: int, kappa: float = 5.0) -> torch.Tensor:
        s = self.scores(t)
        other = s.masked_fill(torch.nn.functional.one_hot(torch.tensor(k), 5).bool(), float("-inf")).amax(1)
        return torch.relu(s[:, k] - other + kappa).mean()


def _photo(h: int = 60, w: int = 90) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (0.3 + 0.4 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


def test_the_residual_is_stretched_to_the_photo_at_exactly_its_budget():
    x = _photo()
    d = torch.randn(1, 3, 16, 16)
    v = add_residual(x, d, 4.5)
    assert v.shape == x.shape
    rms = float(((v - x) * 255).pow(2).mean().sqrt())
    assert abs(rms - 4.5) < 0.05  # no clamping at these grey levels


def test_a_coarse_residual_shares_the_budget_and_reaches_a_small_thumbnail():
    """With ``coarse``, a second, coarser residual joins the fine one in the same RMS budget, and more of that
    budget survives a downscale to a 16-pixel thumbnail than with the fine residual alone."""
    import torch.nn.functional as F

    from psic_lab.evaluation.per_photo import Transfer, init_residual

    x = torch.full((1, 3, 128, 128), 0.5)
    g = torch.Generator().manual_seed(3)
    fine = init_residual((64, 64), Transfer(), g)
    assert len(fine) == 1
    g = torch.Generator().manual_seed(3)
    both = init_residual((64, 64), Transfer(coarse=8), g)
    assert [tuple(p.shape[-2:]) for p in both] == [(64, 64), (8, 8)]
    assert torch.equal(both[0], fine[0])  # the fine residual does not depend on the coarse one

    def thumb_rms(d) -> float:
        v = add_residual(x, tuple(p.detach() for p in d), 4.0)
        assert abs(float(((v - x) * 255).pow(2).mean().sqrt()) - 4.0) < 0.05
        t = F.interpolate((v - x) * 255, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
        return float(t.pow(2).mean().sqrt())

    assert thumb_rms(both) > 1.5 * thumb_rms(fine)


def test_the_texture_mask_moves_the_residual_out_of_flat_areas_at_the_same_budget():
    """Left half flat grey, right half noisy: masked, most of the residual's energy lands on the right, and
    its total RMS is still the budget."""
    g = torch.Generator().manual_seed(2)
    x = torch.full((1, 3, 64, 128), 0.5)
    x[..., 64:] = (0.5 + 0.2 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0.2, 0.8)
    d = torch.randn(1, 3, 16, 16, generator=g)
    m = texture_mask(x, thumb=16)
    assert m.shape == (1, 1, 64, 128) and abs(float(m.pow(2).mean()) - 1) < 1e-4
    v = add_residual(x, d, 2.0, m)
    r = ((v - x) * 255).pow(2)
    assert abs(float(r.mean().sqrt()) - 2.0) < 0.05
    assert float(r[..., 8:56].mean()) < 0.2 * float(r[..., 72:120].mean())  # away from the edge's window
    plain = ((add_residual(x, d, 2.0) - x) * 255).pow(2)
    assert float(plain[..., 8:56].mean()) > 0.5 * float(plain[..., 72:120].mean())  # unmasked: spread evenly


def test_the_unseen_judges_are_never_optimised_against():
    with pytest.raises(ValueError, match="judge-scratch: the unseen judges only measure transfer"):
        optimise_residual(_photo(), [Linear("judge-scratch")], 4.5, steps=1)


def test_optimising_moves_the_models_off_their_own_class_within_the_budget():
    x, m = _photo(), Linear()
    own = own_classes([m], x)
    before = sum(float(m.hinge(_prep(p, x), own[m.spec, p])) for p in PREPROC)
    v = optimise_residual(x, [m], 9.0, steps=10, thumb=16, lr=0.2)
    after = sum(float(m.hinge(_prep(p, v), own[m.spec, p])) for p in PREPROC)
    assert after < before * 0.5
    assert float(((v - x) * 255).pow(2).mean().sqrt()) <= 9.0 + 1e-3
    assert torch.equal(v, optimise_residual(x, [m], 9.0, steps=10, thumb=16, lr=0.2))  # seeded: one view a photo


def _prep(name: str, x: torch.Tensor) -> torch.Tensor:
    from psic_lab.vlp.preprocess import ALL_VARIANTS

    return ALL_VARIANTS[name](x)


def test_the_per_photo_view_is_a_uint8_photo_of_the_same_size_within_its_budget():
    from psic_lab.evaluation.per_photo import PerPhoto

    rng = np.random.default_rng(0)
    full = (rng.random((40, 64, 3)) * 120 + 60).astype(np.uint8)
    original = np.clip(full.astype(int) + rng.integers(-6, 7, full.shape), 0, 255).astype(np.uint8)
    pp = PerPhoto([Linear()], steps=3, budget={"shielded": 0.5, "strong": 1.0})
    err = float(np.sqrt(((original.astype(float) - full) ** 2).mean()))
    assert pp.rms_for("strong", original, full) == pytest.approx(err)
    assert pp.rms_for("shielded", original, full) == pytest.approx(err / 2)
    out = pp.view(full, 4.5)
    assert out.dtype == np.uint8 and out.shape == full.shape
    rms = float(np.sqrt(((out.astype(float) - full) ** 2).mean()))
    assert 3.5 < rms < 5.5  # the budget, up to rounding to 8 bits
    assert pp.record() == {"steps": 3, "against": ["psic-vlp-mini"], "budget": {"shielded": 0.5, "strong": 1.0}}


def test_the_per_photo_options_are_off_unless_steps_are_given():
    import argparse

    from psic_lab.evaluation.per_photo import add_arguments, from_arguments

    ap = argparse.ArgumentParser()
    add_arguments(ap)
    assert from_arguments(ap.parse_args([]), ("shielded", "strong")) is None
    args = ap.parse_args(["--per-photo-budget", "0.48", "0.95", "--per-photo-diversity", "0.5"])
    assert args.per_photo_budget == [0.48, 0.95] and args.per_photo_against == ["psic-vlp-mini"]


class Captions(Linear):
    """A stand-in caption model: its embedding is the pooled colours (the embedding term applies to it)."""

    imagenet = False

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(t - 0.5, 4).flatten(1)


def test_input_diversity_keeps_the_input_size_and_is_off_at_probability_zero():
    from psic_lab.evaluation.per_photo import Transfer, diverse

    t, gen = torch.rand(1, 3, 32, 48), torch.Generator().manual_seed(0)
    assert diverse(t, Transfer(), gen) is t
    out = diverse(t, Transfer(diversity=1.0, min_scale=0.5), gen)
    assert out.shape == t.shape and not torch.equal(out, t)
    assert (out == 0).any()  # shrunk and padded


def test_the_embedding_term_moves_the_view_away_from_the_originals_embedding():
    from psic_lab.evaluation.per_photo import Transfer, reference_embeddings

    x, m = _photo(), Captions()
    opts = Transfer(embed_weight=10.0)
    assert reference_embeddings([Linear()], x, opts) == {}  # classifiers: margins only
    refs = reference_embeddings([m], x, opts)

    def cos(v: torch.Tensor) -> float:
        return float(sum((torch.nn.functional.normalize(m.embed(_prep(p, v)), dim=-1) * refs[m.spec, p]).sum()
                         for p in PREPROC))

    plain = optimise_residual(x, [m], 9.0, steps=15, thumb=16, lr=0.2)
    aimed = optimise_residual(x, [m], 9.0, steps=15, thumb=16, lr=0.2, transfer=opts)
    assert cos(aimed) < cos(plain) - 0.1
