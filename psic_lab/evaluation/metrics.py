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


#: the decoder's lattices (pixels): g_s upsamples 16x in four 2x stages, so its pattern repeats every 16 pixels
#: (the latent grid) with a strong 8-pixel sub-harmonic
GRID_PERIODS = (16, 8)
LUMA = np.array([0.299, 0.587, 0.114])  # BT.601 luma weights of R, G, B


def _luma(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a @ LUMA if a.ndim == 3 else a


def grid_score_parts(a: np.ndarray, b: np.ndarray | None = None, radius: int = 4) -> dict[str, float]:
    """Spectral peaks of ``a - b`` at the decoder's 16- and 8-pixel lattices: ``{"grid", "grid16", "grid8"}``.

    Definition (images are uint8-scale ``HxWx3`` or ``HxW`` arrays; ``b=None`` scores ``a`` itself):

    1. ``d`` = luma(a) - luma(b) (BT.601 weights), cropped from the top-left (the decoder's lattice origin:
       the encoder pads at the right and bottom) to ``H' x W'``, the largest multiples of 16.  Then its mean
       is removed and it is multiplied by a 2-D Hann window.
    2. ``P = |rfft2(d)|^2``.  A lattice harmonic is a frequency ``(u/16, v/16)`` cycles/pixel (vertical,
       horizontal), ``u = 0..15``, ``v = 0..8``, not ``(0, 0)``: it lies exactly on bin
       ``(u H'/16, v W'/16)``.  These are the harmonics of the 16-pixel lattice on both axes and their
       combinations; those with ``u`` and ``v`` even are also the 8-pixel lattice's.
    3. Peak energy ``E_h``: the sum of ``P`` over the 3x3 bins around harmonic ``h`` (the Hann window spreads
       a line over 3 bins).  Background ``B_h``: 9 x the median of ``P`` over the bins within ``radius`` of
       ``h`` that are more than one bin from every harmonic, divided by ln 2 (the median of an exponential
       distribution is ln 2 x its mean), i.e. what 9 bins of the neighbouring spectrum hold on average.
    4. ``grid = sum_h E_h / sum_h B_h`` over the harmonics that have at least 8 such neighbours;
       ``grid8`` sums only the 8-pixel harmonics (``u``, ``v`` even), ``grid16`` the others.

    1 means no peak (white noise scores about 1); 2 means twice the energy the neighbouring frequencies
    predict.  It measures how much a lattice stands out of the spectrum, so for a pattern of fixed amplitude
    it grows with the pixel count (a periodic pattern's peak energy grows as the area squared, noise-like
    content as the area): compare scores at one size, or against the full view's own (full - original).
    NaN when no harmonic has enough neighbours (images under about 128 pixels a side, whose
    harmonics are at most 2 bins apart), or when ``d`` is zero.
    """
    d = _luma(a) - (0.0 if b is None else _luma(b))
    h16, w16 = (d.shape[0] // 16) * 16, (d.shape[1] // 16) * 16
    nan = {"grid": float("nan"), "grid16": float("nan"), "grid8": float("nan")}
    if h16 == 0 or w16 == 0:
        return nan
    d = d[:h16, :w16]
    d = (d - d.mean()) * np.outer(np.hanning(h16 + 2)[1:-1], np.hanning(w16 + 2)[1:-1])
    if not np.any(d):
        return nan
    power = np.abs(np.fft.rfft2(d)) ** 2
    nh, nw = power.shape
    sh, sw = h16 // 16, w16 // 16  # bins between harmonics
    harmonics = [(u, v) for u in range(16) for v in range(9) if (u, v) != (0, 0)]
    near = np.zeros(power.shape, bool)  # bins within one bin of a harmonic (or of the DC term)
    for u in range(16):
        for v in range(9):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    j = v * sw + dj
                    if 0 <= j < nw:
                        near[(u * sh + di) % nh, j] = True
    sums = {"grid": [0.0, 0.0], "grid16": [0.0, 0.0], "grid8": [0.0, 0.0]}
    ln2 = math.log(2)
    for u, v in harmonics:
        ci, cj = u * sh, v * sw
        rows = np.arange(ci - radius, ci + radius + 1) % nh
        cols = np.arange(max(0, cj - radius), min(nw, cj + radius + 1))
        win, mask = power[np.ix_(rows, cols)], ~near[np.ix_(rows, cols)]
        if mask.sum() < 8:
            continue
        prow = np.arange(ci - 1, ci + 2) % nh
        pcol = np.arange(max(0, cj - 1), min(nw, cj + 2))
        peak = float(power[np.ix_(prow, pcol)].sum())
        back = 9 * float(np.median(win[mask])) / ln2 * (len(pcol) / 3)
        kind = "grid8" if u % 2 == 0 and v % 2 == 0 else "grid16"
        for k in ("grid", kind):
            sums[k][0] += peak
            sums[k][1] += back
    return {k: (e / bg if bg > 0 else float("nan")) for k, (e, bg) in sums.items()}


def grid_score(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """The lattice peak ratio of ``a - b`` (1 = no peak; see :func:`grid_score_parts` for the definition)."""
    return grid_score_parts(a, b)["grid"]
