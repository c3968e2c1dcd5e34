"""A wider encoder for a frozen decoder (``analysis_width``, ``rd --train-part encoder``): it starts computing
exactly what the narrow one did, only the analysis side learns, and its files decode with the old decoder."""

import json

import pytest
import torch

from .conftest import TEST_KEY, TINY, noise_images


def _weights(tmp_path, cfg_dict, steps=5):
    from psic_cli.keys import fingerprint
    from psic_cli.models import ModelConfig, build_model
    from psic_lab.training.export import write_weights

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(cfg_dict))
    with torch.no_grad():  # not the identity-like initial GDN: a trained-looking network
        for name, p in model.named_parameters():
            if name.startswith("g_a.") and p.dim() == 4:
                p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "narrow.safetensors"  # with the CDF tables and metadata, as exported weights
    write_weights(model, path, steps=steps, key_fingerprint=fingerprint(TEST_KEY), data_desc="none (test)")
    return model, path


def test_a_widened_encoder_starts_with_the_same_latents(tmp_path):
    from psic_cli.models import ModelConfig, build_model
    from psic_lab.training.train import warm_start

    narrow, path = _weights(tmp_path, TINY)
    wide = build_model(ModelConfig.from_dict({**TINY, "analysis_width": 2 * TINY["N"]}))
    rep = warm_start(wide, str(path))
    # 4 convolution weights, 3 of their biases (the last keeps M outputs), 3 GDN betas and 3 gammas
    assert rep["widened"] == 13 and rep["source_steps"] == 5
    assert wide.g_a[0].weight.shape[0] == 2 * TINY["N"]
    x = torch.rand(1, 3, 64, 64)
    q = torch.tensor([1])
    with torch.no_grad():
        y0, z0 = narrow.analysis(x, q)
        y1, z1 = wide.analysis(x, q)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z1, z0, rtol=1e-5, atol=1e-5)


def train_part_and_export(main, part: str, cfg, data, key, init, tmp_path, steps: int = 3, extra=()):
    """``rd --train-part part`` for a few steps from ``init`` (lr 1e-2, so that every trained tensor moves),
    exported; returns the weights file."""
    run_dir = tmp_path / "run"
    args = ["rd", "--model-id", str(cfg), "--data", str(data), "--key", str(key), "--run-dir", str(run_dir),
            "--steps", str(steps), "--batch", "2", "--patch", "64", "--log-every", "1", "--ckpt-every", "2",
            "--lr", "1e-2", "--train-part", part, *extra, "--init-from", str(init)]
    assert main(args) == 0
    out = tmp_path / "wide.safetensors"
    assert main(["export", str(run_dir / "checkpoint.pt"), str(out), "--data-desc", "noise"]) == 0
    return out


@pytest.fixture()
def encoder_run(tmp_path, key_file):
    data = noise_images(tmp_path / "data", 3)
    _, path = _weights(tmp_path, TINY, steps=40)
    cfg = tmp_path / "wide.json"
    cfg.write_text(json.dumps({**TINY, "analysis_width": 2 * TINY["N"]}))
    return data, cfg, key_file, path


def test_encoder_training_moves_only_the_analysis_side_and_keeps_the_bitstream(encoder_run, tmp_path):
    from safetensors.torch import load_file

    from psic_cli.zoo import bitstream_id
    from psic_lab.training.__main__ import main

    data, cfg, key, path = encoder_run
    out = train_part_and_export(main, "encoder", cfg, data, key, path, tmp_path)
    old, new = load_file(str(path)), load_file(str(out))
    moved = {k for k in old if k in new and old[k].shape == new[k].shape and not torch.equal(old[k], new[k])}
    assert moved and all(k.startswith(("g_a.", "h_a.")) for k in moved)  # and nothing else, not even the CDFs
    assert bitstream_id(new) == bitstream_id(old)
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["steps"] == "43" and meta["stage"] == "rd-encoder"  # the decoder's 40 plus the encoder's 3


def test_new_channels_only_keeps_the_weights_it_was_widened_from(encoder_run, tmp_path):
    from safetensors.torch import load_file

    from psic_lab.training.__main__ import main

    data, cfg, key, path = encoder_run
    out = train_part_and_export(main, "encoder", cfg, data, key, path, tmp_path, steps=2,
                                extra=("--new-channels-only",))
    old, new = load_file(str(path)), load_file(str(out))
    n = old["g_a.0.weight"].shape[0]
    for k, v in old.items():
        if k.startswith("g_a."):
            torch.testing.assert_close(new[k][tuple(slice(0, s) for s in v.shape)], v, rtol=0, atol=0)
    assert not torch.equal(new["g_a.2.weight"][n:], torch.zeros_like(new["g_a.2.weight"][n:]))
    assert not torch.equal(new["g_a.2.weight"][:n, n:], torch.zeros_like(new["g_a.2.weight"][:n, n:]))


def test_new_channels_only_without_the_encoder_stage_is_refused():
    from psic_lab.training.options import TrainConfig

    with pytest.raises(ValueError, match="train_part encoder"):
        TrainConfig(new_channels_only=True)
    assert TrainConfig(new_channels_only=True, train_part="encoder").new_channels_only
