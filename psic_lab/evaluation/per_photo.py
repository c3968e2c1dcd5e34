"""A per-photo shield residual, optimised for one photo without labels (a lab prototype, not in the runtime).

A residual of ``thumb x thumb`` pixels is stretched bicubically to the photo, scaled to exactly ``rms`` 8-bit
levels and added; Adam moves it for a few steps so that each chosen model's own top class for the photo
(the base the residual is added to) trails the best other class by a margin, under every single-image
indexer preprocessing at once.  No label is needed: a codec could run it on any photo.  The models are
:class:`Scorer` s (``psic-vlp-mini``, ``effnet-lite1``, ``surrogate-scratch``, ...; never the unseen judges,
which measure transfer).  ``benchmarks/residual_bound.py --against`` and
``benchmarks/shield_geometry.py --per-photo-steps`` use it (``docs/shield-design.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from psic_lab.vlp.judges import UNSEEN_JUDGES

PREPROC = ("short224", "short336", "short448", "squash224")  # the single-image preprocessings of the tables
UNSEEN = frozenset(UNSEEN_JUDGES)  # measure transfer only: never optimised against


class Scorer:
    """A model the residual is optimised against (``scores``, ``hinge``) or read by (``read10``).

    EfficientNet towers (the target's, the ImageNet classifiers) see a 336 or 448 crop at its own size, as an
    indexer's high-resolution tower would; the scratch models resize inside.  ``captions`` are the class names
    of the 10-way decision.
    """

    def __init__(self, spec: str, captions: list[str], templates: tuple[str, ...] | None = None) -> None:
        from psic_lab.vlp import load_vlp

        self.spec, self.model = spec, load_vlp(spec)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.imagenet = hasattr(self.model, "logits")  # an ImageNet classifier: attacked on its 1000 classes
        self.native = self.imagenet or spec.startswith("effnet") or spec == "psic-vlp-mini"
        self.captions = (self.model.class_embeddings(captions) if templates is None
                         else self.model.class_embeddings(captions, templates))

    def embed(self, t: Tensor) -> Tensor:
        from psic_lab.vlp.preprocess import embed_native

        if self.native and t.shape[-1] != self.model.image_size:
            return embed_native(self.model, t)
        return self.model.encode_image(t)

    def scores(self, t: Tensor) -> Tensor:
        """Class scores: ImageNet log-probabilities, or the captions' logits."""
        z = self.embed(t)
        return torch.log(z.clamp_min(1e-12)) if self.imagenet else self.model.logit_scale * z @ self.captions.t()

    def hinge(self, t: Tensor, k: int, kappa: float = 5.0) -> Tensor:
        """Carlini-Wagner margin of class ``k`` over the best other, until it trails by ``kappa``."""
        s = self.scores(t)
        other = s.masked_fill(F.one_hot(torch.tensor(k), s.shape[1]).bool(), float("-inf")).amax(1)
        return F.relu(s[:, k] - other + kappa).mean()

    def read10(self, t: Tensor) -> int:
        """The 10-way caption decision."""
        return int((self.embed(t) @ self.captions.t()).argmax(1))


def add_residual(x: Tensor, d: Tensor, rms: float) -> Tensor:
    """``x`` plus ``d`` stretched bicubically to ``x``'s size and scaled to ``rms`` 8-bit levels, clamped."""
    h, w = x.shape[-2:]
    up = F.interpolate(d, size=(h, w), mode="bicubic", align_corners=False) if d.shape[-2:] != (h, w) else d
    return (x + up * (rms / 255) / up.pow(2).mean().sqrt().clamp_min(1e-8)).clamp(0, 1)


def own_classes(models: list[Scorer], x: Tensor) -> dict[tuple[str, str], int]:
    """Each model's top class for ``x`` under each preprocessing: what the residual pushes away from."""
    from psic_lab.vlp.preprocess import ALL_VARIANTS

    with torch.no_grad():
        return {(m.spec, p): int(m.scores(ALL_VARIANTS[p](x)).argmax(1)) for m in models for p in PREPROC}


def optimise_residual(x: Tensor, models: list[Scorer], rms: float, steps: int, thumb: int = 224,
                      lr: float = 0.05, seed: int = 0) -> Tensor:
    """The photo ``x`` (``1 x 3 x H x W`` in [0, 1]) with its per-photo residual (``thumb`` 0: full size)."""
    from psic_lab.vlp.preprocess import ALL_VARIANTS

    bad = UNSEEN & {m.spec for m in models}
    if bad:
        raise ValueError(f"{', '.join(sorted(bad))}: the unseen judges only measure transfer")
    own = own_classes(models, x)
    gen = torch.Generator().manual_seed(seed)
    side = (thumb, thumb) if thumb else tuple(x.shape[-2:])
    d = torch.randn(1, 3, *side, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([d], lr=lr)
    for _ in range(steps):
        v = add_residual(x, d, rms)
        loss = sum(m.hinge(ALL_VARIANTS[p](v), own[m.spec, p]) for m in models for p in PREPROC)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return add_residual(x, d, rms)
