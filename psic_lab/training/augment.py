"""What happens to a published image: JPEG re-encoding, downscaling, blur and crops, as training-time
transformations (expectation over transformations, EOT) for the strong shield.

JPEG is the real Pillow encoder with a straight-through gradient: the forward pass is exactly what a
platform's re-encode produces, the backward pass treats it as the identity.  Resizing, blur and crops are
differentiable.  Every transformed image is resized back to the input size so a batch stays one tensor.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def jpeg_ste(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Re-encode ``[3, H, W]`` (values in ``[0, 1]``) as JPEG at ``quality``; straight-through gradient."""
    from PIL import Image

    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=int(quality))
    dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    y = torch.from_numpy(dec.copy()).permute(2, 0, 1).to(x.device, x.dtype) / 255
    return x + (y - x).detach()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, 3, H, W]`` (reflect padding)."""
    r = max(1, int(round(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@dataclass
class EOTConfig:
    p_jpeg: float = 0.6
    jpeg_min: int = 40
    jpeg_max: int = 95
    p_resize: float = 0.4
    resize_min: float = 0.4
    p_blur: float = 0.3
    blur_max: float = 1.5
    p_crop: float = 0.3
    crop_min: float = 0.6  # side fraction
    p_lowres: float = 0.0  # seen at 48-96 px and upsampled back (models that read small thumbnails)
    lowres_px: tuple[int, int] = (48, 96)


def _down_up(t: torch.Tensor, s: float) -> torch.Tensor:
    """Downscale ``[1, 3, H, W]`` by ``s`` (antialiased) and upsample back to ``H x W``."""
    h, w = t.shape[-2:]
    small = F.interpolate(t, size=(max(8, int(h * s)), max(8, int(w * s))), mode="bilinear", align_corners=False,
                          antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def publish(x: torch.Tensor, rng: np.random.Generator, cfg: EOTConfig | None = None) -> torch.Tensor:
    """A random chain of publication transformations per image of ``[B, 3, H, W]``; same output size."""
    cfg = cfg or EOTConfig()
    out = []
    h, w = x.shape[-2:]
    for img in x:
        t = img[None]
        if rng.random() < cfg.p_crop:
            s = rng.uniform(cfg.crop_min, 1.0)
            ch, cw = max(8, int(h * s)), max(8, int(w * s))
            i, j = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            t = F.interpolate(t[..., i : i + ch, j : j + cw], size=(h, w), mode="bilinear", align_corners=False)
        if rng.random() < cfg.p_blur:
            t = gaussian_blur(t, rng.uniform(0.3, cfg.blur_max))
        if rng.random() < cfg.p_resize:
            t = _down_up(t, rng.uniform(cfg.resize_min, 0.9))
        if rng.random() < cfg.p_lowres:
            t = _down_up(t, int(rng.integers(cfg.lowres_px[0], cfg.lowres_px[1] + 1)) / min(h, w))
        if rng.random() < cfg.p_jpeg:
            t = jpeg_ste(t[0].clamp(0, 1), int(rng.integers(cfg.jpeg_min, cfg.jpeg_max + 1)))[None]
        out.append(t)
    return torch.cat(out).clamp(0, 1)


def texture_weights(x: torch.Tensor, window: int = 7, floor: float = 0.02) -> torch.Tensor:
    """Per-pixel distortion weights ``[B, 1, H, W]`` with mean 1: high in flat regions, low in texture.

    ``1 / (local std of luminance + floor)``: a perturbation in a flat sky or on skin costs more than the
    same perturbation in foliage, so the strong shield spends its distortion where it is hard to see.
    """
    lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    pad = window // 2
    mean = F.avg_pool2d(F.pad(lum, (pad,) * 4, mode="reflect"), window, stride=1)
    sq = F.avg_pool2d(F.pad(lum**2, (pad,) * 4, mode="reflect"), window, stride=1)
    std = (sq - mean**2).clamp_min(0).sqrt()
    w = 1 / (std + floor)
    return w / w.mean(dim=(-2, -1), keepdim=True)
