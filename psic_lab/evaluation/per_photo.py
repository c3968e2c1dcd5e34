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

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Transfer:
    """Options aimed at models the residual is *not* optimised against (the unseen judges measure them).

    ``embed_weight`` adds that weight times the cosine between each caption model's image embedding of the view
    and of the base photo (similarity search compares embeddings, and feature-level losses carry further than
    one class margin).  ``diversity`` is the probability that each model input is shrunk by a random factor
    in [``min_scale``, 1] and padded back to its size at a random offset (input diversity), so that the
    residual does not fit one exact resampling grid.  ``coarse`` (pixels a side, 0: none) adds a second residual
    of ``coarse x coarse`` pixels, stretched the same way and sharing the same RMS budget, so that models that
    read a small thumbnail (the scratch judges read 64 pixels) see more of the budget than the fine residual's
    share that survives their downscaling.
    """

    embed_weight: float = 0.0
    diversity: float = 0.0
    min_scale: float = 0.85
    coarse: int = 0


def diverse(t: Tensor, opts: Transfer, gen: torch.Generator) -> Tensor:
    """``t`` (a model input) shrunk and randomly padded back to its size, with probability ``opts.diversity``."""
    if opts.diversity <= 0 or float(torch.rand((), generator=gen)) >= opts.diversity:
        return t
    h, w = t.shape[-2:]
    r = opts.min_scale + (1 - opts.min_scale) * float(torch.rand((), generator=gen))
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    small = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top = int(torch.randint(0, h - nh + 1, (), generator=gen))
    left = int(torch.randint(0, w - nw + 1, (), generator=gen))
    return F.pad(small, (left, w - nw - left, top, h - nh - top))


def residual_loss(v: Tensor, models: list, own: dict[tuple[str, str], int], refs: dict[tuple[str, str], Tensor],
                  opts: Transfer, gen: torch.Generator) -> Tensor:
    """The per-photo objective of the view ``v``: each model's margin on its own class for the base photo
    under every preprocessing, plus the embedding term of ``opts`` (``refs``: the base photo's normalised
    embeddings, :func:`reference_embeddings`)."""
    from psic_lab.vlp.preprocess import ALL_VARIANTS

    loss = v.new_zeros(())
    for p in PREPROC:
        t = ALL_VARIANTS[p](v)
        for m in models:
            ti = diverse(t, opts, gen)
            loss = loss + m.hinge(ti, own[m.spec, p])
            if (m.spec, p) in refs:
                loss = loss + opts.embed_weight * (F.normalize(m.embed(ti), dim=-1) * refs[m.spec, p]).sum(-1).mean()
    return loss


def reference_embeddings(models: list, x: Tensor, opts: Transfer) -> dict[tuple[str, str], Tensor]:
    """The base photo's normalised embeddings for the embedding term (caption models only; none when its
    weight is 0)."""
    from psic_lab.vlp.preprocess import ALL_VARIANTS

    if opts.embed_weight <= 0:
        return {}
    with torch.no_grad():
        return {(m.spec, p): F.normalize(m.embed(ALL_VARIANTS[p](x)), dim=-1)
                for m in models if not getattr(m, "imagenet", True) for p in PREPROC}


def texture_mask(x: Tensor, thumb: int = 224, floor: float = 3 / 255) -> Tensor:
    """Where the photo ``x`` (``1 x 3 x H x W`` in [0, 1]) can hide a residual: the local standard deviation of
    its luminance over a window of about 4 thumbnail pixels, with ``floor`` so flat areas keep a little,
    scaled to RMS 1 (``1 x 1 x H x W``).  Multiplying the residual by it keeps its total energy (the PSNR cost)
    and moves it from flat sky and skin into texture, where the eye masks it."""
    lum = x.mean(1, keepdim=True)
    k = max(3, round(min(x.shape[-2:]) / thumb * 4) // 2 * 2 + 1)  # odd
    mean = F.avg_pool2d(lum, k, stride=1, padding=k // 2, count_include_pad=False)
    var = F.avg_pool2d(lum * lum, k, stride=1, padding=k // 2, count_include_pad=False) - mean * mean
    m = (var.clamp_min(0) + floor * floor).sqrt()
    return m / m.pow(2).mean().sqrt()


def init_residual(side: tuple[int, int], opts: Transfer, gen: torch.Generator) -> tuple[Tensor, ...]:
    """The residual's parameters before optimisation: a random ``side`` residual, and the ``opts.coarse``
    one if asked for (drawn after, so the fine one does not depend on it)."""
    parts = [torch.randn(1, 3, *side, generator=gen)]
    if opts.coarse:
        parts.append(torch.randn(1, 3, opts.coarse, opts.coarse, generator=gen))
    return tuple(p.requires_grad_(True) for p in parts)


def add_residual(x: Tensor, d: Tensor | tuple[Tensor, ...], rms: float, mask: Tensor | None = None) -> Tensor:
    """``x`` plus ``d`` (one residual or the sum of several) stretched bicubically to ``x``'s size (times
    ``mask``, if given) and scaled to ``rms`` 8-bit levels, clamped."""
    h, w = x.shape[-2:]
    parts = (d,) if isinstance(d, Tensor) else d
    up = sum(F.interpolate(p, size=(h, w), mode="bicubic", align_corners=False) if p.shape[-2:] != (h, w) else p
             for p in parts)
    if mask is not None:
        up = up * mask
    return (x + up * (rms / 255) / up.pow(2).mean().sqrt().clamp_min(1e-8)).clamp(0, 1)


def own_classes(models: list[Scorer], x: Tensor) -> dict[tuple[str, str], int]:
    """Each model's top class for ``x`` under each preprocessing: what the residual pushes away from."""
    from psic_lab.vlp.preprocess import ALL_VARIANTS

    with torch.no_grad():
        return {(m.spec, p): int(m.scores(ALL_VARIANTS[p](x)).argmax(1)) for m in models for p in PREPROC}


def optimise_residual(x: Tensor, models: list[Scorer], rms: float, steps: int, thumb: int = 224,
                      lr: float = 0.05, seed: int = 0, transfer: Transfer | None = None,
                      masked: bool = False) -> Tensor:
    """The photo ``x`` (``1 x 3 x H x W`` in [0, 1]) with its per-photo residual (``thumb`` 0: full size;
    ``masked``: shaped by :func:`texture_mask`)."""
    transfer = transfer or Transfer()
    bad = UNSEEN & {m.spec for m in models}
    if bad:
        raise ValueError(f"{', '.join(sorted(bad))}: the unseen judges only measure transfer")
    own, refs = own_classes(models, x), reference_embeddings(models, x, transfer)
    gen = torch.Generator().manual_seed(seed)
    side = (thumb, thumb) if thumb else tuple(x.shape[-2:])
    d = init_residual(side, transfer, gen)
    mask = texture_mask(x, thumb or 224) if masked else None
    opt = torch.optim.Adam(d, lr=lr)
    for _ in range(steps):
        loss = residual_loss(add_residual(x, d, rms, mask), models, own, refs, transfer, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return add_residual(x, d, rms, mask)


PROMPT_1000 = ("a photo of a {}.",)  # the caption of each ImageNet class the residual pushes a photo away from


@dataclass
class PerPhoto:
    """The per-photo shield's settings for the benchmarks: the models, the steps, and the residual's size per
    shield view, fixed (``rms``, 8-bit levels) or a fraction of each photo's full-view error (``budget``)."""

    scorers: list[Scorer]
    steps: int
    rms: dict[str, float] | None = None
    budget: dict[str, float] | None = None
    transfer: Transfer | None = None
    masked: bool = False  # shape the residual by the photo's texture (texture_mask)

    def rms_for(self, view: str, original, full) -> float:
        """The residual's RMS in 8-bit levels for ``view``.  With ``budget``, a fraction of the full view's RMS
        error against the original, which the encoder knows and could write into the header; added to an
        error it does not correlate with, a fraction ``f`` costs ``10 log10(1 + f^2)`` dB of PSNR (0.51: 1 dB,
        1.0: 3 dB)."""
        import numpy as np

        if self.budget is not None:
            err = original.astype(np.float64) - full.astype(np.float64)
            return float(self.budget[view] * np.sqrt(np.mean(err * err)))
        return float(self.rms[view])

    def view(self, full, rms: float):
        """The full view (``H x W x 3`` uint8) with this photo's residual of ``rms`` levels, as uint8."""
        x = torch.from_numpy(full.copy()).permute(2, 0, 1)[None].float() / 255
        y = optimise_residual(x, self.scorers, rms, self.steps, transfer=self.transfer, masked=self.masked)
        return (y[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()

    def record(self) -> dict:
        """What a results JSON keeps of these settings."""
        rec = {"steps": self.steps, "against": [s.spec for s in self.scorers],
               **({"budget": self.budget} if self.budget is not None else {"rms": self.rms})}
        if self.transfer is not None:
            rec.update(embed_weight=self.transfer.embed_weight, diversity=self.transfer.diversity)
            if self.transfer.coarse:
                rec["coarse"] = self.transfer.coarse
        if self.masked:
            rec["texture_mask"] = True
        return rec


def add_arguments(ap) -> None:
    """The ``--per-photo-*`` options of the benchmarks that can make the shield views per photo."""
    ap.add_argument("--per-photo-steps", type=int, default=0,
                    help="prototype: make the shield views by optimising a residual for each photo (this many "
                         "steps; 0: the model's own views)")
    ap.add_argument("--per-photo-against", nargs="+", default=["psic-vlp-mini"],
                    help="models the per-photo residual is optimised against (never the unseen judges)")
    ap.add_argument("--per-photo-rms", type=float, nargs=2, default=[4.5, 9.0], metavar=("SUBTLE", "STRONG"),
                    help="the per-photo residual's RMS in 8-bit levels, per view")
    ap.add_argument("--per-photo-embed-weight", type=float, default=0.0,
                    help="per-photo residual: weight of the caption models' embedding cosine to the original")
    ap.add_argument("--per-photo-diversity", type=float, default=0.0,
                    help="per-photo residual: probability of a random shrink-and-pad of each model input per step")
    ap.add_argument("--per-photo-budget", type=float, nargs=2, default=None, metavar=("SUBTLE", "STRONG"),
                    help="instead of --per-photo-rms: the residual's RMS as this fraction of each photo's full-view "
                         "RMS error (0.51 costs about 1 dB of PSNR, 1.0 about 3 dB)")
    ap.add_argument("--per-photo-coarse", type=int, default=0, metavar="SIDE",
                    help="per-photo residual: also a SIDE x SIDE residual in the same budget, for models that read "
                         "a small thumbnail (0: none)")
    ap.add_argument("--per-photo-mask", action="store_true",
                    help="per-photo residual: move its energy from flat areas into texture (same total RMS)")


def from_arguments(args, views: tuple[str, str]) -> PerPhoto | None:
    """The settings the ``--per-photo-*`` options give for the two shield ``views`` (subtle, strong), or
    ``None`` without ``--per-photo-steps``.  Loads the models (captions: ImageNet's 1000 classes, since
    no label is needed: each model's own top class is pushed away)."""
    if not args.per_photo_steps:
        return None
    from psic_lab.vlp.text import imagenet_classes

    names1000 = list(imagenet_classes()[1])
    sizes = dict(zip(views, args.per_photo_budget or args.per_photo_rms, strict=True))
    transfer = (Transfer(embed_weight=args.per_photo_embed_weight, diversity=args.per_photo_diversity,
                         coarse=args.per_photo_coarse)
                if args.per_photo_embed_weight or args.per_photo_diversity or args.per_photo_coarse else None)
    return PerPhoto([Scorer(s, names1000, PROMPT_1000) for s in args.per_photo_against], args.per_photo_steps,
                    rms=None if args.per_photo_budget else sizes, budget=sizes if args.per_photo_budget else None,
                    transfer=transfer, masked=args.per_photo_mask)
