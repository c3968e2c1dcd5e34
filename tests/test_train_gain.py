"""Added quality levels for a frozen codec (``rd --train-part gain``): only the gains of the lambdas that the
initial weights lack learn, so every level the weights had keeps its gain, and with it its files' symbols."""

import json

import pytest
import torch

from .conftest import TINY, noise_images
from .test_train_encoder import _weights, train_part_and_export


def test_gain_training_moves_only_the_added_levels(tmp_path, key_file):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from psic_lab.training.__main__ import main
    from psic_lab.training.train import map_gains

    data = noise_images(tmp_path / "data", 3)
    _, path = _weights(tmp_path, TINY, steps=40)
    cfg = tmp_path / "range.json"  # one level below and one between the weights' two
    cfg.write_text(json.dumps({**TINY, "lambdas": [0.001, 0.0035, 0.007, 0.013]}))
    # every level drawn: the weights' own levels get gradients too, and must still not move
    out = train_part_and_export(main, "gain", cfg, data, key_file, path, tmp_path,
                                extra=("--quality-weights", "1,1,1,1"))
    old, new = load_file(str(path)), load_file(str(out))
    assert torch.equal(new["log_gain"][[1, 3]], old["log_gain"])  # the weights' own levels, as they were
    start = map_gains(new["log_gain"], old["log_gain"], [0.001, 0.0035, 0.007, 0.013], TINY["lambdas"])
    assert not torch.equal(new["log_gain"][0], start[0]) and not torch.equal(new["log_gain"][2], start[2])
    moved = {k for k in old if k != "log_gain" and not torch.equal(old[k], new[k])}
    assert not moved
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["steps"] == "43" and meta["stage"] == "rd-gain"


def test_gain_training_needs_weights_that_lack_a_level(tmp_path, key_file):
    from psic_lab.training.__main__ import main

    data = noise_images(tmp_path / "data", 2)
    _, path = _weights(tmp_path, TINY)
    cfg = tmp_path / "same.json"
    cfg.write_text(json.dumps(TINY))
    with pytest.raises(SystemExit, match="adds no quality level"):
        train_part_and_export(main, "gain", cfg, data, key_file, path, tmp_path)
