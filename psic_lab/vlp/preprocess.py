"""What an indexer computes from a posted photo before its image tower sees it: differentiable preprocessing.

A vision-language indexer never looks at a decoded photo at its true size.  It resizes it (antialiased
bicubic, as Pillow and torchvision do), usually crops the centre, and sometimes looks at tiles; a photo
may also have been re-encoded or downscaled on the way.  The functions here reproduce that on
``[B, 3, H, W]`` tensors in ``[0, 1]`` so that the shield can be measured (and trained) through it.

Single-image variants (:data:`VARIANTS`; each returns ``[B, 3, S, S]``):

=============  ==========================================================================================
``short224``   shorter side to 224, centre crop 224x224 (the standard CLIP preprocessing)
``short336``   shorter side to 336, centre crop 336x336 (high-resolution towers)
``short448``   shorter side to 448, centre crop 448x448
``squash224``  resize to 224x224, ignoring the aspect ratio
=============  ==========================================================================================

``tiles2x2`` (:func:`tiles2x2`) cuts the image into 2x2 tiles and gives each tile ``short224``: it returns
``[4B, 3, 224, 224]``, tile-major per image (image 0's four tiles, then image 1's ...).

Degradations before the indexer (:data:`DEGRADATIONS`; for the ``strong`` shield): ``jpeg75`` and
``webp75`` re-encode through Pillow (not differentiable: the gradient passes straight through),
``half`` downscales by 0.5 (antialiased bicubic).  :func:`indexer` composes them: ``"jpeg75+short224"``.

:class:`IndexerSampler` draws one variant (and, for training, one output size) per batch from a
``torch.Generator``; it is the ``indexer(x, gen) -> Tensor`` hook of shield training.

Every resize is ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` clamped to
``[0, 1]``; it agrees with Pillow's ``Image.resize(..., Image.BICUBIC)`` to within a few 8-bit levels
(``tests/test_preprocess.py``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Preprocess = Callable[[Tensor], Tensor]


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bicubic resize of ``[B, C, H, W]`` to ``size = (h, w)``, clamped to ``[0, 1]``."""
    h, w = int(size[0]), int(size[1])
    if (h, w) == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def resize_short(x: Tensor, side: int) -> Tensor:
    """Resize so that the shorter side is ``side`` (the longer side rounded, aspect kept)."""
    h, w = x.shape[-2:]
    scale = side / min(h, w)
    return resize(x, (max(side, round(h * scale)), max(side, round(w * scale))))


def center_crop(x: Tensor, side: int) -> Tensor:
    """The centre ``side x side`` crop (the top-left one of the two middles when the margin is odd)."""
    h, w = x.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    return x[..., top : top + side, left : left + side]


def short_crop(x: Tensor, side: int) -> Tensor:
    """Shorter side to ``side``, then the centre ``side x side`` crop (CLIP's preprocessing at ``side``)."""
    return center_crop(resize_short(x, side), side)


def short224(x: Tensor) -> Tensor:
    """Shorter side to 224, centre crop 224: the standard CLIP preprocessing."""
    return short_crop(x, 224)


def short336(x: Tensor) -> Tensor:
    """Shorter side to 336, centre crop 336 (a 336-pixel tower)."""
    return short_crop(x, 336)


def short448(x: Tensor) -> Tensor:
    """Shorter side to 448, centre crop 448 (a 448-pixel tower)."""
    return short_crop(x, 448)


def squash224(x: Tensor) -> Tensor:
    """Resize to 224x224, ignoring the aspect ratio."""
    return resize(x, (224, 224))


def tiles2x2(x: Tensor, tile: Preprocess = short224) -> Tensor:
    """Cut each image into 2x2 tiles (halves rounded down at the top and left) and preprocess each tile:
    ``[4B, 3, S, S]``, tile-major per image (row by row: top-left, top-right, bottom-left, bottom-right)."""
    h, w = x.shape[-2:]
    h2, w2 = h // 2, w // 2
    tiles = [x[..., :h2, :w2], x[..., :h2, w2:], x[..., h2:, :w2], x[..., h2:, w2:]]
    out = torch.stack([tile(t) for t in tiles], 1)  # [B, 4, 3, S, S]
    return out.flatten(0, 1)


def _pillow_roundtrip(x: Tensor, fmt: str, quality: int) -> Tensor:
    """Re-encode each image of ``x`` as ``fmt`` at ``quality`` through Pillow (8-bit, 4:2:0 for JPEG)."""
    from PIL import Image

    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, fmt, quality=quality)
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")).copy())
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.dtype).div(255).to(x.device)


def straight_through(x: Tensor, y: Tensor) -> Tensor:
    """``y`` in the forward pass, the identity's gradient in the backward pass."""
    return x + (y - x).detach()


def jpeg75(x: Tensor) -> Tensor:
    """JPEG q75 re-encode (Pillow, libjpeg-turbo), straight-through gradient."""
    return straight_through(x, _pillow_roundtrip(x, "JPEG", 75))


def webp75(x: Tensor) -> Tensor:
    """WebP q75 re-encode (Pillow, libwebp), straight-through gradient."""
    return straight_through(x, _pillow_roundtrip(x, "WEBP", 75))


def half(x: Tensor) -> Tensor:
    """0.5x downscale (antialiased bicubic; each side rounded, at least 1 pixel)."""
    h, w = x.shape[-2:]
    return resize(x, (max(1, round(h / 2)), max(1, round(w / 2))))


#: single-image preprocessings (name -> function); each returns square ``[B, 3, S, S]``
VARIANTS: dict[str, Preprocess] = {"short224": short224, "short336": short336, "short448": short448,
                                   "squash224": squash224}
#: every indexer view, the tiles included (``tiles2x2`` returns four images per input)
ALL_VARIANTS: dict[str, Preprocess] = {**VARIANTS, "tiles2x2": tiles2x2}
#: what can happen to a photo before the indexer sees it (for the ``strong`` shield)
DEGRADATIONS: dict[str, Preprocess] = {"jpeg75": jpeg75, "webp75": webp75, "half": half}


def indexer(name: str) -> Preprocess:
    """The preprocessing named ``name``: a variant of :data:`ALL_VARIANTS`, optionally after degradations
    joined with ``+`` (``"jpeg75+short224"``, ``"half+tiles2x2"``).  KeyError names the choices."""
    *degs, last = name.split("+")
    steps = []
    for d in degs:
        if d not in DEGRADATIONS:
            raise KeyError(f"unknown degradation {d!r}; choose from {', '.join(DEGRADATIONS)}")
        steps.append(DEGRADATIONS[d])
    if last not in ALL_VARIANTS:
        raise KeyError(f"unknown preprocessing {last!r}; choose from {', '.join(ALL_VARIANTS)}")
    steps.append(ALL_VARIANTS[last])

    def run(x: Tensor) -> Tensor:
        for f in steps:
            x = f(x)
        return x

    return run


def embed_native(vlp, x: Tensor) -> Tensor:
    """``vlp.encode_image(x)`` with the tower run at ``x``'s own (square) size instead of resizing it to its
    ``image_size``: for fully convolutional towers with global pooling (EfficientNet-Lite), so that a
    ``short336`` or ``short448`` input is seen at 336 or 448 pixels, as a high-resolution tower would."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"embed_native needs square inputs, got {tuple(x.shape[-2:])}")
    old = vlp.image_size
    vlp.image_size = int(x.shape[-1])
    try:
        return vlp.encode_image(x)
    finally:
        vlp.image_size = old


def _choice(seq: Sequence, gen: torch.Generator, weights: Sequence[float] | None = None):
    if weights is None:
        return seq[int(torch.randint(len(seq), (1,), generator=gen))]
    p = torch.tensor(weights, dtype=torch.float64)
    return seq[int(torch.multinomial(p / p.sum(), 1, generator=gen))]


@dataclass(frozen=True)
class IndexerSampler:
    """Draw one indexer preprocessing per batch: the training-time hook ``indexer(x, gen) -> Tensor``.

    Args:
        variants: names from :data:`VARIANTS` / ``tiles2x2`` to draw from (uniformly, or by ``weights``).
        weights: relative probabilities of ``variants`` (None: uniform).
        sizes: output sizes to draw from for the ``short*`` crops (training: a random tower resolution, so
            that no single pixel scale is learnt); None keeps each variant's own size.
        degradations: names from :data:`DEGRADATIONS`, one of which is applied first with probability
            ``p_degrade`` (the ``strong`` shield).
        p_degrade: probability of a degradation per batch.
    """

    variants: tuple[str, ...] = ("short224", "short336", "short448", "squash224", "tiles2x2")
    weights: tuple[float, ...] | None = None
    sizes: tuple[int, ...] | None = None
    degradations: tuple[str, ...] = ()
    p_degrade: float = 0.0

    def draw(self, gen: torch.Generator) -> tuple[str | None, str, int | None]:
        """The (degradation or None, variant, output size or None) for the next batch."""
        deg = None
        if self.degradations and float(torch.rand((), generator=gen)) < self.p_degrade:
            deg = _choice(self.degradations, gen)
        variant = _choice(self.variants, gen, self.weights)
        size = _choice(self.sizes, gen) if self.sizes else None
        return deg, variant, size

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        deg, variant, size = self.draw(gen)
        if deg is not None:
            x = DEGRADATIONS[deg](x)
        if size is None:
            return ALL_VARIANTS[variant](x)
        if variant == "squash224":
            return resize(x, (size, size))
        if variant == "tiles2x2":
            return tiles2x2(x, lambda t: short_crop(t, size))
        return short_crop(x, size)


__all__ = ["resize", "resize_short", "center_crop", "short_crop", "short224", "short336", "short448", "squash224",
           "tiles2x2", "jpeg75", "webp75", "half", "straight_through", "VARIANTS", "ALL_VARIANTS", "DEGRADATIONS",
           "indexer", "embed_native", "IndexerSampler"]
