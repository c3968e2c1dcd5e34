"""Machine-analytics view (UG-ICM): vision-language supervision at global, local and instance scale.

For a machine-view decode ``m`` of an original ``x`` and the target VLP ``E``:

- **global**: ``1 - cos(E(m), E(x))`` on the whole image, plus ``1 - cos`` of the backbone's pooled
  features when the VLP exposes ``image_features`` (the tower the analytics models share);
- **local**: the same on an aligned random crop (one box, cut from both ``m`` and ``x``);
- **instance**: the same on the box around the most salient region of ``x``.  The data has no boxes, so
  the region comes from the target itself without labels: the channel-mean activation of the vision
  tower's last feature map (a class-agnostic activation map), upsampled, thresholded at half its maximum;
  the box is the bounding box of that mask (at least a quarter of each side).

UG-ICM's instance scale uses detector boxes and region-text pairs; this is our label-free stand-in.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _cos_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(a, b, dim=-1)).mean()


def _crop_resize(x: torch.Tensor, boxes: list[tuple[int, int, int, int]], size: int) -> torch.Tensor:
    return torch.cat([F.interpolate(x[i : i + 1, :, t:b, lf:r], size=(size, size), mode="bilinear",
                                    align_corners=False, antialias=True) for i, (t, b, lf, r) in enumerate(boxes)])


@torch.no_grad()
def saliency_boxes(vlp, x: torch.Tensor, min_frac: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Label-free instance boxes ``(top, bottom, left, right)`` from the target's activation map."""
    h, w = x.shape[-2:]
    fmap = getattr(vlp, "feature_map", None)
    if fmap is None:  # a VLP without a spatial map: fall back to the centre half
        return [(h // 4, h - h // 4, w // 4, w - w // 4)] * len(x)
    act = fmap(x).mean(1, keepdim=True)
    act = F.interpolate(act, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    boxes = []
    for a in act:
        mask = (a >= 0.5 * a.max()).numpy()
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        t, b, lf, r = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        mh, mw = int(h * min_frac), int(w * min_frac)
        if b - t < mh:
            c = (t + b) // 2
            t = min(max(0, c - mh // 2), h - mh)
            b = t + mh
        if r - lf < mw:
            c = (lf + r) // 2
            lf = min(max(0, c - mw // 2), w - mw)
            r = lf + mw
        boxes.append((t, b, lf, r))
    return boxes


def random_boxes(n: int, h: int, w: int, rng: np.random.Generator, lo: float = 0.4,
                 hi: float = 0.7) -> list[tuple[int, int, int, int]]:
    out = []
    for _ in range(n):
        s = rng.uniform(lo, hi)
        ch, cw = int(h * s), int(w * s)
        t, lf = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append((t, t + ch, lf, lf + cw))
    return out


def machine_losses(vlp, m: torch.Tensor, x: torch.Tensor, rng: np.random.Generator,
                   size: int = 224) -> dict[str, torch.Tensor]:
    """The three UG-ICM-style terms for machine-view decodes ``m`` of originals ``x``."""
    h, w = x.shape[-2:]
    out = {}
    with torch.no_grad():
        u = vlp.encode_image(x)
        fu = vlp.image_features(x) if hasattr(vlp, "image_features") else None
    g = _cos_loss(vlp.encode_image(m), u)
    if fu is not None:
        g = g + _cos_loss(vlp.image_features(m), fu)
    out["global"] = g
    boxes = random_boxes(len(x), h, w, rng)
    xl, ml = _crop_resize(x, boxes, size), _crop_resize(m, boxes, size)
    with torch.no_grad():
        ul = vlp.encode_image(xl)
    out["local"] = _cos_loss(vlp.encode_image(ml), ul)
    boxes = saliency_boxes(vlp, x)
    xi, mi = _crop_resize(x, boxes, size), _crop_resize(m, boxes, size)
    with torch.no_grad():
        ui = vlp.encode_image(xi)
    out["instance"] = _cos_loss(vlp.encode_image(mi), ui)
    return out
