"""The decoder's scale branch: bias maps on a grid of cells that follows the image, tiled or not."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from psic_cli.models import build_model, load_config
from psic_cli.models.layers import upsample_region

from .test_shield import TinyVLP, _tiny_setup


def _model(grid: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(load_config("psic-sh"), scale_grid=grid)).eval()


def _excite(model) -> None:
    """Give the zero-initialised output convolutions weights, so the branch does something."""
    g = torch.Generator().manual_seed(1)
    for head in model.g_s.scale_branch.heads:
        head.weight.data = torch.randn(head.weight.shape, generator=g) * 0.05


def test_region_of_upsampled_map_equals_interpolate():
    m = torch.randn(2, 3, 14, 14)
    ref = F.interpolate(m, size=(100, 37), mode="bilinear", align_corners=False)
    assert torch.allclose(upsample_region(m, (100, 37), (0, 100, 0, 37)), ref, atol=1e-5)
    assert torch.allclose(upsample_region(m, (100, 37), (10, 50, 3, 20)), ref[..., 10:50, 3:20], atol=1e-5)


def test_fresh_branch_changes_nothing_and_old_weights_load():
    plain, branch = _model(0), _model(14)
    missing = branch.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("g_s.scale_branch.") for k in missing)
    y, cond, q = torch.randn(1, 128, 9, 12), torch.zeros(1, 64), torch.tensor([1])
    with torch.no_grad():
        assert torch.equal(plain.synthesize(y, cond, q, runtime=True), branch.synthesize(y, cond, q, runtime=True))


def test_tiles_take_their_part_of_the_whole_images_maps():
    model = _model(14)
    _excite(model)
    y, cond, q = torch.randn(1, 128, 21, 13), torch.randn(1, 64).sign(), torch.tensor([1])
    with torch.no_grad():
        whole = model.synthesize(y, cond, q, runtime=True)
        model.tile_latent = 8
        model.reset_runtime()
        tiles = model.synthesize(y, cond, q, runtime=True)
        training = model.synthesize(y, cond, q)
    assert whole.shape == (1, 3, 21 * 16, 13 * 16)
    assert (whole - tiles).abs().max() < 1e-4 and (whole - training).abs().max() < 1e-4
    # and the branch acts: without it the output differs
    without = _model(0)
    without.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert (without.synthesize(y, cond, q, runtime=True) - whole).abs().max() > 1e-3


def test_pattern_follows_the_image_not_the_pixel():
    """The same latent content at two sizes gets the same maps per cell: the branch's pattern, resized to a
    common size, is nearly the same at both sizes (a fixed-pixel pattern would not be)."""
    model = _model(14)
    _excite(model)
    tau = model.cltg(torch.zeros(1, 64))
    y = torch.randn(1, 128, 14, 14)
    big = F.interpolate(y, scale_factor=4, mode="nearest")
    with torch.no_grad():
        m_small = model.g_s.scale_maps(y, tau)
        m_big = model.g_s.scale_maps(big, tau)
    # identical pooled content, different log size only: the maps differ by the size input alone
    assert m_small[0].shape == m_big[0].shape == (1, 64, 14, 14)
    assert not torch.equal(m_small[0], m_big[0])


def test_shield_stage_trains_the_branch(tmp_path, key_file):
    from psic_lab.training.shield import ShieldConfig, ShieldStage, reset_trigger

    cfg, data = _tiny_setup(tmp_path)
    sc = ShieldConfig(init="", model_id=str(cfg), data=[str(data)], key=str(key_file), run_dir=str(tmp_path / "r"),
                      batch=2, patch=48, scale_grid=4, reset_trigger=False)
    stage = ShieldStage(sc, vlp=TinyVLP())
    assert stage.model.cfg.scale_grid == 4 and stage.model.g_s.scale_branch is not None
    (tmp_path / "r").mkdir()
    stage.start(0)
    loss, _ = stage.loss(0)
    loss.backward()
    heads = stage.model.g_s.scale_branch.heads
    assert any(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in heads)
    trigger_group = stage.optimizers["opt"].param_groups[1]["params"]
    assert any(p is heads[0].weight for p in trigger_group)  # learns at the condition path's rate
    _excite(stage.model)
    reset_trigger(stage.model, 0)
    assert all(h.weight.abs().sum() == 0 for h in heads)


def test_branch_lr_mult_gives_the_branch_its_own_rate(tmp_path, key_file):
    from psic_lab.training.shield import ShieldConfig, ShieldStage

    cfg, data = _tiny_setup(tmp_path)
    sc = ShieldConfig(init="", model_id=str(cfg), data=[str(data)], key=str(key_file), run_dir=str(tmp_path / "r"),
                      batch=2, patch=48, scale_grid=4, reset_trigger=False, branch_lr_mult=50.0)
    stage = ShieldStage(sc, vlp=TinyVLP())
    groups = stage.optimizers["opt"].param_groups
    branch = {id(p) for p in stage.model.g_s.scale_branch.parameters()}
    assert len(groups) == 3 and groups[2]["lr_mult"] == 50.0
    assert {id(p) for p in groups[2]["params"]} == branch
    assert not any(id(p) in branch for p in groups[1]["params"])  # not also in the trigger group


def test_keyless_only_branch_leaves_every_keyed_view_untouched():
    """With scale_keyless_only the maps act for the two public shield conditions and are exactly zero for any
    other condition (a key's views, a wrong key), in the runtime and in the training path, per image."""
    from psic_cli.views import View, condition

    from .conftest import TEST_KEY

    torch.manual_seed(0)
    gated = build_model(dataclasses.replace(load_config("psic-sh"), scale_grid=14, scale_keyless_only=True)).eval()
    _excite(gated)
    plain = _model(0)
    plain.load_state_dict(gated.state_dict(), strict=False)
    assert set(gated.state_dict()) == set(plain.state_dict()) | {k for k in gated.state_dict() if "scale_branch" in k}
    conds = torch.tensor([condition(v, TEST_KEY, 64) for v in (View.SHIELDED, View.STRONG, View.FULL, View.MACHINE)]
                         + [torch.randn(64).sign().tolist()])
    y, q = torch.randn(5, 128, 6, 7), torch.full((5,), 1)
    with torch.no_grad():
        for runtime in (True, False):
            a, b = gated.synthesize(y, conds, q, runtime=runtime), plain.synthesize(y, conds, q, runtime=runtime)
            same = [(a[i] - b[i]).abs().max().item() < 1e-5 for i in range(5)]
            assert same == [False, False, True, True, True]
