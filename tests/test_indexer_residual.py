"""The shields' indexer residual: made on a thumbnail of the whole decoded image, resized to it, only for the
public shield conditions, and trained with the decoder frozen."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from psic_cli.models import build_model, load_config
from psic_cli.models.layers import IndexerResidual
from psic_cli.views import View, condition

from .conftest import TEST_KEY
from .test_shield import TinyVLP, _tiny_setup


def _excite(module: IndexerResidual, seed: int = 1) -> None:
    """Give the zero-initialised output convolution weights, so the residual does something."""
    g = torch.Generator().manual_seed(seed)
    module.out.weight.data = torch.randn(module.out.weight.shape, generator=g) * 0.5


def _moved_by_steps(stage, steps: int) -> set[str]:
    """Start ``stage``, take ``steps`` optimiser steps, and return the names of the tensors that changed."""
    stage.start(0)
    before = {k: v.clone() for k, v in stage.model.state_dict().items()}
    for step in range(steps):
        loss, _ = stage.loss(step)
        stage.optimizers["opt"].zero_grad()
        loss.backward()
        stage.optimizers["opt"].step()
    after = stage.model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _model(side: int):
    torch.manual_seed(0)
    return build_model(dataclasses.replace(load_config("psic-sh"), indexer_residual=side)).eval()


def test_fresh_residual_changes_nothing_and_old_weights_load():
    plain, model = build_model(load_config("psic-sh")).eval(), _model(32)
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("indexer_residual.") for k in missing)
    x = torch.rand(2, 3, 40, 56)
    cond = torch.tensor([condition(View.SHIELDED, None, 64), condition(View.STRONG, None, 64)])
    assert torch.equal(model.finish(x, cond), x)


def test_only_the_public_shield_conditions_get_it():
    """Each image its own view: the two shields change, a key's views and a wrong key are only clamped."""
    model = _model(32)
    _excite(model.indexer_residual)
    views = (View.SHIELDED, View.STRONG, View.FULL, View.MACHINE)
    cond = torch.tensor([condition(v, TEST_KEY, 64) for v in views] + [torch.randn(64).sign().tolist()])
    assert model.shield_index(cond).tolist() == [0, 1, -1, -1, -1]
    x = torch.rand(5, 3, 48, 64)
    with torch.no_grad():
        out = model.finish(x * 1.2 - 0.1, cond)
    changed = [not torch.equal(out[i], (x[i] * 1.2 - 0.1).clamp(0, 1)) for i in range(5)]
    assert changed == [True, True, False, False, False]
    assert not torch.equal(out[0], out[1])  # one residual per view
    assert out.min() >= 0 and out.max() <= 1


def test_pattern_follows_the_image_not_the_pixel():
    """The same picture at two sizes gets the same residual per unit of image: resized to a common size, the two
    residuals nearly agree, so an indexer's resize meets the same pattern whatever the photo's size."""
    module = IndexerResidual(side=32, views=2).eval()
    _excite(module)
    torch.manual_seed(3)
    small = F.interpolate(torch.rand(1, 3, 8, 8), size=(64, 64), mode="bilinear", align_corners=False)
    big = F.interpolate(small, size=(256, 256), mode="bilinear", align_corners=False)
    view = torch.tensor([0])
    with torch.no_grad():
        r_small = module(small, view) - small
        r_big = module(big, view) - big
    back = F.interpolate(r_big, size=(64, 64), mode="area")
    assert r_small.abs().mean() > 1e-3
    assert (back - r_small).abs().mean() < 0.1 * r_small.abs().mean()


def test_codec_decode_makes_the_residual_on_the_image_not_the_padding(monkeypatch):
    """``decode`` crops the codec's padding before the residual: the residual sees the image's true size."""
    from psic_cli.models import backbones

    seen: list[tuple[int, int]] = []
    real = backbones.ConditionalHyperprior.finish

    def spy(self, x_hat, cond, **kw):
        seen.append(tuple(x_hat.shape[-2:]))
        return real(self, x_hat, cond, **kw)

    monkeypatch.setattr(backbones.ConditionalHyperprior, "finish", spy)
    from psic_cli import codec

    pixels = (torch.rand(37, 53, 3) * 255).to(torch.uint8).numpy()
    out = codec.decode(codec.encode_pixels(pixels))
    assert seen == [(37, 53)] and out.pixels.shape == (37, 53, 3)


def test_residual_stage_trains_only_the_residual(tmp_path, key_file):
    from psic_lab.training.shield import ShieldConfig, ShieldStage

    cfg, data = _tiny_setup(tmp_path)
    sc = ShieldConfig(init="", model_id=str(cfg), data=[str(data)], key=str(key_file), run_dir=str(tmp_path / "r"),
                      batch=2, patch=48, indexer_residual=16, train_part="residual", views="shielded,strong",
                      p_full=0.0, reset_trigger=False, ensemble="")
    stage = ShieldStage(sc, vlp=TinyVLP())
    (tmp_path / "r").mkdir()
    moved = _moved_by_steps(stage, 3)
    assert moved and all(k.startswith("indexer_residual.") for k in moved)
    assert "indexer_residual.out.weight" in moved


def test_residual_stage_needs_a_residual(tmp_path, key_file):
    from psic_lab.training.shield import ShieldConfig, ShieldStage

    cfg, data = _tiny_setup(tmp_path)
    sc = ShieldConfig(init="", model_id=str(cfg), data=[str(data)], key=str(key_file), run_dir=str(tmp_path / "r"),
                      train_part="residual")
    with pytest.raises(ValueError, match="indexer residual"):
        ShieldStage(sc, vlp=TinyVLP())


def test_shields_start_from_the_neutral_decode():
    """With a residual, the shield conditions decode with the trigger off (tau = 0); a key's views and wrong keys
    decode exactly as without one."""
    torch.manual_seed(0)
    plain = build_model(load_config("psic-sh")).eval()
    for m in plain.cltg.modules():  # a live trigger path, as after a shield stage
        if isinstance(m, torch.nn.Linear):
            m.weight.data.normal_(0, 0.3)
            m.bias.data.fill_(0.1)
    for name, p in plain.g_s.named_parameters():
        if name.split(".")[-2] in ("p1", "p2"):
            p.data.normal_(0, 0.05)
    model = _model(32)
    model.load_state_dict(plain.state_dict(), strict=False)
    views = (View.SHIELDED, View.STRONG, View.FULL, View.MACHINE)
    cond = torch.tensor([condition(v, TEST_KEY, 64) for v in views] + [torch.randn(64).sign().tolist()])
    y, q = torch.randn(5, 128, 4, 5), torch.full((5,), 1)
    with torch.no_grad():
        for runtime in (True, False):
            a, b = model.synthesize(y, cond, q, runtime=runtime), plain.synthesize(y, cond, q, runtime=runtime)
            same = [(a[i] - b[i]).abs().max().item() < 1e-5 for i in range(5)]
            assert same == [False, False, True, True, True]
        yy = y / plain.gain(q)
        neutral = plain.g_s(yy, torch.zeros(5, plain.cfg.trigger_width), None, (4, 5, 0, 4, 0, 5))
        assert (model.synthesize(y, cond, q)[:2] - neutral[:2]).abs().max() < 1e-5


def test_init_spec_takes_one_module_from_another_source(tmp_path):
    """``shield --init a,b=indexer_residual.``: the decoder from ``a``, the residual (only) from ``b``."""
    from safetensors.torch import save_file

    from psic_lab.training.train import load_matching

    a, b = _model(32), _model(32)
    for p in b.parameters():
        p.data.add_(1.0)
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(tmp_path / "a.safetensors"))
    save_file({k: v.contiguous() for k, v in b.state_dict().items()}, str(tmp_path / "b.safetensors"))
    target = _model(32)
    n = load_matching(target, f"{tmp_path / 'a.safetensors'},{tmp_path / 'b.safetensors'}=indexer_residual.")
    assert n > 0
    for k, v in target.state_dict().items():
        if k.startswith("indexer_residual."):
            assert torch.equal(v, b.state_dict()[k]), k
        elif not k.startswith(("entropy_bottleneck._", "gaussian_conditional.")):
            assert torch.equal(v, a.state_dict()[k]), k


def test_residual_stage_keeps_the_init_weights_views(tmp_path, key_file):
    """Only the residual trains, so the exported weights keep every view the init weights had (machine)."""
    from psic_cli.views import View
    from psic_lab.training.shield import ShieldConfig, ShieldStage

    from .conftest import make_tiny_weights

    cfg, data = _tiny_setup(tmp_path)
    init = make_tiny_weights(tmp_path, extra={"machine_view": "trained"})
    sc = ShieldConfig(init=str(init), model_id=str(cfg), data=[str(data)], key=str(key_file),
                      run_dir=str(tmp_path / "r"), indexer_residual=16, train_part="residual", views="shielded,strong")
    assert set(ShieldStage(sc, vlp=TinyVLP()).kept_views()) == {View.SHIELDED, View.STRONG, View.FULL, View.MACHINE}
    plain = dataclasses.replace(sc, train_part="decoder")
    assert set(ShieldStage(plain, vlp=TinyVLP()).kept_views()) == {View.SHIELDED, View.STRONG}


def test_budgeted_residual_has_exactly_its_rms_per_view():
    """With ``rms``, each view's residual at thumbnail resolution has exactly that RMS (8-bit levels), whatever
    the network outputs: the budget is fixed and training only picks the direction."""
    module = IndexerResidual(side=32, views=2, rms=(4.5, 9.0)).eval()
    _excite(module)
    x, view = torch.rand(3, 3, 40, 60), torch.tensor([0, 1, 0])
    with torch.no_grad():
        r = module.residual(x, view)
    rms = r.pow(2).mean(dim=(1, 2, 3)).sqrt() * 255
    assert torch.allclose(rms, torch.tensor([4.5, 9.0, 4.5]), rtol=1e-4)
    with torch.no_grad():  # a fresh budgeted module already adds its budget (a small random pattern, not zero)
        fresh = IndexerResidual(side=32, views=2, rms=(4.5, 9.0)).eval()
        assert float(fresh.residual(x, view)[0].pow(2).mean().sqrt() * 255) > 4.4
    with pytest.raises(ValueError, match="RMS budgets"):
        IndexerResidual(side=32, views=2, rms=(4.5,))


def test_budget_is_part_of_the_model_config():
    """The budget round-trips through the weights' config JSON; configs without it load as before."""
    from psic_cli.models.config import ModelConfig

    cfg = dataclasses.replace(load_config("psic-sh"), indexer_residual=32, indexer_residual_rms=(4.5, 9.0))
    back = ModelConfig.from_dict(__import__("json").loads(cfg.to_json()))
    assert back == cfg and back.indexer_residual_rms == (4.5, 9.0)
    model = build_model(back)
    assert model.indexer_residual.rms.numel() == 2
    assert load_config("psic-sh").indexer_residual_rms == ()


def test_residual_on_originals_skips_the_codec(tmp_path, key_file, monkeypatch):
    """``residual_input original``: the residual is added to the original images; the codec never runs."""
    from psic_cli.models import backbones
    from psic_lab.training.shield import ShieldConfig, ShieldStage

    def no_codec(*a, **k):
        raise AssertionError("the codec ran")

    monkeypatch.setattr(backbones.ConditionalHyperprior, "quantized_latents", no_codec)
    cfg, data = _tiny_setup(tmp_path)
    sc = ShieldConfig(init="", model_id=str(cfg), data=[str(data)], key=str(key_file), run_dir=str(tmp_path / "r"),
                      batch=2, patch=48, indexer_residual=16, indexer_residual_rms="4,8", train_part="residual",
                      residual_input="original", views="shielded,strong", p_full=0.0, reset_trigger=False,
                      ensemble="", weighting="fixed", nu=0.0, strong_nu=0.0)
    stage = ShieldStage(sc, vlp=TinyVLP())
    assert stage.model.cfg.indexer_residual_rms == (4.0, 8.0)
    (tmp_path / "r").mkdir()
    stage.start(0)
    before = stage.model.indexer_residual.pattern.detach().clone()
    loss, rec = stage.loss(0)
    stage.optimizers["opt"].zero_grad()
    loss.backward()
    stage.optimizers["opt"].step()
    assert not torch.equal(before, stage.model.indexer_residual.pattern)
    with pytest.raises(ValueError, match="needs train_part residual"):
        ShieldStage(dataclasses.replace(sc, train_part="decoder"), vlp=TinyVLP())


def test_pattern_stage_trains_a_universal_residual(tmp_path, key_file):
    """``train_part pattern``: the U-Net's output is zeroed and frozen, only the per-view patterns move, so the
    residual is the same for every image (a universal perturbation at the budget's RMS)."""
    from psic_lab.training.shield import ShieldConfig, ShieldStage

    cfg, data = _tiny_setup(tmp_path)
    sc = ShieldConfig(init="", model_id=str(cfg), data=[str(data)], key=str(key_file), run_dir=str(tmp_path / "r"),
                      batch=2, patch=48, indexer_residual=16, indexer_residual_rms="4,8", train_part="pattern",
                      residual_input="original", views="shielded,strong", p_full=0.0, reset_trigger=False,
                      ensemble="", weighting="fixed", nu=0.0, strong_nu=0.0)
    from safetensors.torch import save_file

    trained = ShieldStage(sc, vlp=TinyVLP()).model
    _excite(trained.indexer_residual)  # a trained network's U-Net output is not zero ...
    init = tmp_path / "trained.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(init))
    stage = ShieldStage(dataclasses.replace(sc, init=str(init)), vlp=TinyVLP())  # ... the stage zeroes it
    (tmp_path / "r").mkdir()
    assert _moved_by_steps(stage, 2) == {"indexer_residual.pattern"}
    res = stage.model.indexer_residual
    view = torch.tensor([0, 0])
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        r = res.residual(x, view)
    assert torch.allclose(r[0], r[1]) and r.abs().max() > 0


def test_texture_masking_moves_the_budget_out_of_flat_regions():
    """``mask_power``: the same budget, but most of it where the thumbnail has texture; without it the
    residual spreads evenly.  The exact RMS per view still holds."""
    x = torch.full((1, 3, 224, 224), 0.5)
    x[..., :, 112:] += 0.2 * torch.rand(1, 3, 224, 112, generator=torch.Generator().manual_seed(0))  # texture right
    view = torch.tensor([0])
    share = {}
    for power in (0.0, 1.0):
        torch.manual_seed(0)
        res = IndexerResidual(224, 2, rms=(4.5, 9.0), mask_power=power)
        with torch.no_grad():
            r = res.residual(x, view)
        assert torch.allclose(r.pow(2).mean().sqrt() * 255, torch.tensor(4.5), atol=1e-3)
        share[power] = float(r[..., :100].pow(2).mean() / r.pow(2).mean())  # energy in the flat left part
    assert 0.6 < share[0.0] < 1.4
    assert share[1.0] < 0.05


def test_texture_mask_is_part_of_the_model_config():
    import json

    cfg = dataclasses.replace(load_config("psic-sh"), indexer_residual=32, indexer_residual_mask=0.5)
    assert type(cfg).from_dict(json.loads(cfg.to_json())) == cfg
    assert build_model(cfg).indexer_residual.mask_power == 0.5
