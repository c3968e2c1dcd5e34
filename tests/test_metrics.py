"""Image-quality metrics: the lattice grid score."""

from __future__ import annotations

import math

import numpy as np

from psic_lab.evaluation.metrics import grid_score, grid_score_parts


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 0.3, yy * 0.4, 100 + 40 * np.sin(xx / 23.0)], -1)
    return img + rng.normal(0, 4, img.shape)


def test_white_noise_scores_about_one():
    rng = np.random.default_rng(1)
    for h, w in ((224, 149), (512, 341), (768, 512)):
        s = grid_score(rng.normal(0, 5, (h, w, 3)))
        assert 0.75 < s < 1.35, (h, w, s)


def test_a_16_pixel_pattern_scores_high():
    h, w = 341, 512
    img = _scene(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    pattern = 2.0 * (((xx // 8) + (yy // 8)) % 2 - 0.5)[..., None]  # a 16-px checkerboard, +-1 level
    parts = grid_score_parts(img + pattern, img)
    assert parts["grid"] > 5 and parts["grid16"] > 5
    assert grid_score(img + pattern) > 5  # the scene itself adds no lattice peak
    assert grid_score(img + pattern, img) > 3 * grid_score(_scene(h, w, seed=2), img)


def test_an_8_pixel_pattern_is_counted_as_such():
    h, w = 256, 384
    img = _scene(h, w)
    xx = np.mgrid[0:h, 0:w][1]
    pattern = np.cos(2 * np.pi * xx / 8)[..., None] * np.ones(3)
    parts = grid_score_parts(img + pattern, _scene(h, w, seed=3))  # the pattern plus noise
    assert parts["grid8"] > 5 and parts["grid16"] < 2


def test_no_difference_or_tiny_images_give_nan():
    img = _scene(256, 256)
    assert math.isnan(grid_score(img, img))
    assert math.isnan(grid_score(np.ones((10, 10, 3))))
