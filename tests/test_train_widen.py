"""A wider synthesis (``synthesis_width``) warm-started from a narrower model decodes exactly what the narrow one
did, and ``rd --quality-weights`` draws the quality levels in the proportions asked."""

import pytest
import torch

from .conftest import TINY


def test_a_widened_synthesis_starts_with_the_same_reconstruction(tmp_path):
    from psic_cli.keys import fingerprint
    from psic_cli.models import ModelConfig, build_model
    from psic_lab.training.export import write_weights
    from psic_lab.training.train import warm_start

    from .conftest import TEST_KEY

    base = {**TINY, "arch": "mean-scale-checkerboard", "trigger_scale": True, "trigger_head": True}
    torch.manual_seed(0)
    narrow = build_model(ModelConfig.from_dict(base))
    with torch.no_grad():  # a trained-looking decoder: non-zero trigger projections and head, random GDNs
        for name, p in narrow.named_parameters():
            if name.startswith(("g_s.", "cltg.")):
                p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "narrow.safetensors"
    write_weights(narrow, path, steps=7, key_fingerprint=fingerprint(TEST_KEY), data_desc="none (test)")
    wide = build_model(ModelConfig.from_dict({**base, "synthesis_width": TINY["N"] + 16}))
    rep = warm_start(wide, str(path))
    assert rep["widened"] > 0 and rep["source_steps"] == 7 and "dropped" not in rep
    assert wide.g_s.blocks[1].subpel_conv[0].weight.shape[0] == 4 * (TINY["N"] + 16)
    x, q = torch.rand(2, 3, 64, 64), torch.tensor([0, 1])
    cond = torch.stack([torch.zeros(TINY["cond_dim"]), torch.ones(TINY["cond_dim"])])
    with torch.no_grad():
        a, b = narrow.eval()(x, cond, q), wide.eval()(x, cond, q)
    torch.testing.assert_close(b["x_hat"], a["x_hat"], rtol=1e-5, atol=1e-5)
    for k in a["likelihoods"]:
        torch.testing.assert_close(b["likelihoods"][k], a["likelihoods"][k])


def test_a_source_tensor_with_no_place_in_the_model_is_reported(tmp_path):
    from psic_cli.models import ModelConfig, build_model
    from psic_lab.training.train import warm_start

    from .conftest import make_tiny_weights

    path = make_tiny_weights(tmp_path)
    # synthesis as wide as the latent: the first block's 1x1 skip is the identity, so its weights have no place
    wide = build_model(ModelConfig.from_dict({**TINY, "synthesis_width": TINY["M"]}))
    assert warm_start(wide, str(path))["dropped"] == 2  # the skip's weight and bias


def test_quality_weights_set_the_share_of_each_level():
    from psic_lab.training.options import TrainConfig
    from psic_lab.training.train import draw_qualities, quality_weights

    gen = torch.Generator().manual_seed(0)
    q = draw_qualities(20000, 3, [1, 0, 3], gen)
    counts = torch.bincount(q, minlength=3).float() / q.numel()
    assert counts[1] == 0 and abs(counts[2] - 0.75) < 0.02 and abs(counts[0] - 0.25) < 0.02
    assert set(draw_qualities(3000, 3, [], gen).tolist()) == {0, 1, 2}
    assert quality_weights("1,0,3", 3) == [1, 0, 3] and quality_weights("", 3) == []
    with pytest.raises(ValueError, match="2 entries"):
        quality_weights("1,1", 3)
    with pytest.raises(ValueError, match="positive sum"):
        TrainConfig(quality_weights="0,0")
    with pytest.raises(ValueError, match="numbers"):
        TrainConfig(quality_weights="1,x")
