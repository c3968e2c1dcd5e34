"""Shared fixtures: tiny random-init models written as real weight files, a test key, small images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TEST_KEY = bytes(range(32))

TINY = {
    "model_id": "tiny-sh",
    "arch": "scale-hyperprior",
    "N": 16,
    "M": 24,
    "cond_dim": 16,
    "trigger_width": 16,
    "last_width": 8,
    "lambdas": [0.0035, 0.013],
    "downsampling": 64,
}


def make_tiny_weights(folder: Path, arch: str = "scale-hyperprior", model_id: str = "tiny-sh",
                      extra: dict | None = None) -> Path:
    import torch

    from psic_cli.keys import fingerprint
    from psic_cli.models import ModelConfig, build_model
    from psic_lab.training.export import write_weights

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({**TINY, "arch": arch, "model_id": model_id})
    model = build_model(cfg)
    with torch.no_grad():  # spread the latents so that many CDFs are used, as in a trained model
        model.g_a[-1].weight.mul_(20)
        # make the key's view differ from the shielded one, like a trained model's
        for blk in model.g_s.blocks:
            if hasattr(blk, "p1"):
                blk.p1.weight.normal_(0, 0.05)
    out = folder / f"{model_id}.safetensors"
    write_weights(model, out, steps=0, key_fingerprint=fingerprint(TEST_KEY), data_desc="none (test)", extra=extra)
    return out


def noise_images(folder: Path, count: int) -> Path:
    """``count`` 80x90 PNGs of seeded noise in ``folder`` (made here): a training set for tiny runs."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    make_tiny_weights(folder)
    make_tiny_weights(folder, "mean-scale-hyperprior", "tiny-msh")
    # a model whose metadata says every view is trained (machine view, strong shield)
    make_tiny_weights(folder, model_id="tiny-views",
                      extra={"machine_view": "trained", "shield_levels": "subtle,strong"})
    return folder


@pytest.fixture()
def tiny_env(tiny_weights, monkeypatch):
    """Point the zoo at the tiny weights (and clear its per-process cache)."""
    from psic_cli import zoo

    monkeypatch.setenv("PSIC_WEIGHTS", str(tiny_weights))
    zoo.load_model.cache_clear()
    yield tiny_weights
    zoo.load_model.cache_clear()


@pytest.fixture()
def key_file(tmp_path) -> Path:
    from psic_cli.keys import write_key

    p = tmp_path / "test.key"
    write_key(p, TEST_KEY)
    return p


@pytest.fixture()
def rgb_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:70, 0:100]
    img = np.stack([xx * 2.5, yy * 3.5, (xx + yy) * 1.5], -1) + rng.normal(0, 8, (70, 100, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
