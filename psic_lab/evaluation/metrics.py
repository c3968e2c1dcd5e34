"""Image-quality metrics and the Bjontegaard delta rate."""

from __future__ import annotations

import math

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (pytorch-msssim, data range 255); images smaller than 161 px fall back to SSIM."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim
    from pytorch_msssim import ssim as _ssim

    ta = torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float()
    tb = torch.from_numpy(np.array(b)).permute(2, 0, 1)[None].float()
    if min(a.shape[:2]) > 160:
        return float(_ms_ssim(ta, tb, data_range=255.0))
    return float(_ssim(ta, tb, data_range=255.0))


def bd_rate(rate_a, dist_a, rate_b, dist_b) -> float:
    """Average bitrate difference (%) of curve B against anchor A at equal distortion.

    Piecewise-cubic (PCHIP) interpolation of log-rate over the overlapping distortion range, as in
    current Bjontegaard implementations; negative means B needs fewer bits.  Needs >= 2 points each.
    """
    from scipy.interpolate import PchipInterpolator

    ra, da = np.log(np.asarray(rate_a, float)), np.asarray(dist_a, float)
    rb, db = np.log(np.asarray(rate_b, float)), np.asarray(dist_b, float)
    ia, ib = np.argsort(da), np.argsort(db)
    lo, hi = max(da.min(), db.min()), min(da.max(), db.max())
    if hi <= lo:
        return float("nan")
    fa = PchipInterpolator(da[ia], ra[ia])
    fb = PchipInterpolator(db[ib], rb[ib])
    int_a = fa.integrate(lo, hi)
    int_b = fb.integrate(lo, hi)
    return float((math.exp((int_b - int_a) / (hi - lo)) - 1) * 100)
