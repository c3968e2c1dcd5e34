import pytest
import torch
from torch import Tensor

from psic_cli.models import ModelConfig, build_model, list_configs, load_config

from .conftest import TINY


@pytest.fixture(params=["scale-hyperprior", "mean-scale-hyperprior", "mean-scale-checkerboard"])
def tiny_model(request):
    torch.manual_seed(0)
    m = build_model(ModelConfig.from_dict({**TINY, "arch": request.param}))
    with torch.no_grad():
        m.g_a[-1].weight.mul_(20)
        if m.context is not None:  # a trained context: it moves the non-anchors' scales and means
            torch.nn.init.normal_(m.context.params[-1].weight, std=0.3)
    return m


def test_bundled_configs_build():
    assert {"psic-sh", "psic-msh"} <= set(list_configs())
    for mid in list_configs():
        cfg = load_config(mid)
        assert cfg.model_id == mid and cfg.qualities >= 1
    with pytest.raises(KeyError, match="known:"):
        load_config("nope")


def test_forward_shapes_and_zero_init_triggers(tiny_model):
    x = torch.rand(2, 3, 64, 128)
    cond_a = torch.zeros(2, 16)
    cond_b = torch.ones(2, 16)
    q = torch.tensor([0, 1])
    tiny_model.eval()
    a = tiny_model(x, cond_a, q)
    b = tiny_model(x, cond_b, q)
    assert a["x_hat"].shape == x.shape
    assert set(a["likelihoods"]) == {"y", "z"}
    # zero-initialised trigger projections: every condition decodes the same before training
    assert torch.equal(a["x_hat"], b["x_hat"])


def test_gradients_reach_the_trigger_projections(tiny_model):
    x = torch.rand(1, 3, 64, 64)
    out = tiny_model(x, torch.ones(1, 16), torch.tensor([1]))
    out["x_hat"].mean().backward()
    assert tiny_model.g_s.blocks[0].p1.weight.grad.abs().sum() > 0


def test_codec_matches_forward_and_checksums(tiny_model):
    tiny_model.eval()
    tiny_model.update()
    x = torch.rand(1, 3, 128, 192)
    cond = torch.zeros(1, 16)
    enc = tiny_model.compress(x, 1)
    dec = tiny_model.decompress(enc["strings"], enc["shape"], cond, 1, enc["y_shape"])
    assert dec["checksum"] == enc["checksum"]
    with torch.no_grad():
        ref = tiny_model(x, cond, torch.tensor([1]))["x_hat"].clamp(0, 1)
    assert (dec["x_hat"].float() - ref).abs().max() < 1e-4
    # higher quality spends more bits
    small = tiny_model.compress(x, 0)
    assert len(small["strings"][0][0]) <= len(enc["strings"][0][0])


def test_tiled_processing_equals_whole_image(tiny_model):
    tiny_model.eval()
    tiny_model.update()
    x = torch.rand(1, 3, 256, 320)
    cond = torch.zeros(1, 16)
    whole = tiny_model.compress(x, 1)
    dec_whole = tiny_model.decompress(whole["strings"], whole["shape"], cond, 1, whole["y_shape"])["x_hat"]
    tiny_model.tile_latent = 4  # 64-pixel tiles: many seams if tiling were wrong
    tiny_model.reset_runtime()
    tiles = tiny_model.compress(x, 1)
    dec_tiles = tiny_model.decompress(tiles["strings"], tiles["shape"], cond, 1, tiles["y_shape"])["x_hat"]
    assert tiles["checksum"] == whole["checksum"]  # same symbols: the bitstream does not depend on tiling
    assert (dec_tiles - dec_whole).abs().max() < 1e-5  # float32 rounding (the reach is tested below)


def test_quantized_latents_match_the_coding_doors(tiny_model):
    """The public latent door (shield training, attacks) quantises as the codec does: the entropy-decoded
    ``y_hat`` of the same image, up to float32 rounding of the means (a symbol off by one, rarely)."""
    tiny_model.eval()
    tiny_model.update()
    x = torch.rand(1, 3, 64, 128)
    y_hat = tiny_model.quantized_latents(x, torch.tensor([1]))
    enc = tiny_model.compress(x, 1)
    coded, _ = tiny_model.decode_latent(enc["strings"], enc["shape"], enc["y_shape"])
    assert y_hat.shape == coded.shape
    off = (y_hat.double() - coded).abs()
    assert float((off > 1e-3).double().mean()) < 0.01 and float(off.max()) <= 1.0 + 1e-3
    y, z = tiny_model.analysis(x, torch.tensor([1]))
    scales, means = tiny_model.hyper(torch.round(z), y.shape[-2:])
    assert scales.shape == y.shape and (means is None) == (tiny_model.cfg.arch == "scale-hyperprior")


def test_tiled_writes_into_one_output_buffer():
    """tiled() equals the whole-image result for up- and down-scaling, ragged edges included."""
    from psic_cli.models.backbones import tiled

    torch.manual_seed(0)
    up = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 3, 5, stride=2, padding=2, output_padding=1),
                             torch.nn.ReLU(), torch.nn.ConvTranspose2d(3, 2, 5, stride=2, padding=2,
                                                                        output_padding=1)).double().eval()
    x = torch.rand(1, 4, 37, 23, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(tiled(up, x, scale=4, tile=8, margin=6), up(x), atol=1e-12)
        down = torch.nn.Conv2d(3, 5, 5, stride=4, padding=2).double().eval()
        y = torch.rand(1, 3, 96, 160, dtype=torch.float64)
        assert torch.allclose(tiled(down, y, scale=1 / 4, tile=32, margin=16), down(y), atol=1e-12)


def test_cdf_indexes_equal_compressais_build_indexes_on_and_around_every_table_entry(tiny_model):
    from psic_cli.models.backbones import cdf_indexes

    tiny_model.update()
    gc = tiny_model.gaussian_conditional
    table = gc.scale_table.double()
    scales = torch.cat([
        torch.exp(torch.randn(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3),
        table, table.nextafter(table + 1), table.nextafter(table - 1),
        torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -1.0], dtype=torch.float64),
    ])
    assert torch.equal(cdf_indexes(gc, scales), gc.build_indexes(scales))


@pytest.mark.parametrize("film", [False, True])
def test_inference_decoder_equals_the_training_decoder_with_every_modulation_active(film):
    """The runtime g_s (in-place blocks, GDN as a matrix product over channels_last pixels) computes what the
    autograd path computes, with the triggers' biases (and FiLM scales) all non-zero."""
    from compressai.layers import GDN

    torch.manual_seed(1)
    tiny_model = build_model(ModelConfig.from_dict({**TINY, "trigger_scale": film, "trigger_head": film}))
    with torch.no_grad():
        for name, p in tiny_model.g_s.named_parameters():
            if name.split(".")[-2] in {"p1", "p2", "s1", "s2"}:
                p.normal_(0, 0.05)
    y = torch.round(torch.randn(1, tiny_model.cfg.M, 5, 7) * 3)
    cond = torch.sign(torch.randn(1, tiny_model.cfg.cond_dim))
    q = torch.tensor([1])
    ref = tiny_model.synthesize(y, cond, q)  # autograd on: the training path
    assert ref.requires_grad
    rt = tiny_model.runtime_modules()["g_s"]
    assert not any(isinstance(m, GDN) for m in rt.modules())  # every GDN replaced by its frozen copy
    with torch.no_grad():
        fast = tiny_model.synthesize(y, cond, q, runtime=True)
    assert (fast - ref.detach()).abs().max() < 1e-4


def test_frozen_gdn_equals_gdn_in_both_layouts_and_leaves_its_input_alone():
    from compressai.layers import GDN

    from psic_cli.models.layers import FrozenGDN

    torch.manual_seed(2)
    for inverse in (False, True):
        gdn = GDN(6, inverse=inverse)
        with torch.no_grad():
            gdn.gamma.add_(torch.rand(6, 6) * 0.1)
        x = torch.randn(2, 6, 5, 4)
        ref = gdn(x)
        frozen = FrozenGDN(gdn)
        for inp in (x.clone(), x.clone().contiguous(memory_format=torch.channels_last)):
            with torch.no_grad():
                out = frozen(inp)
            assert torch.allclose(out, ref.detach(), atol=1e-6)
            assert torch.equal(inp, x)


def test_decoder_hyper_keeps_the_encoders_float64_scales_exactly_and_its_means_closely():
    torch.manual_seed(3)
    m = build_model(ModelConfig.from_dict({**TINY, "arch": "mean-scale-hyperprior"}))
    m.eval()
    z_hat = torch.round(torch.randn(1, m.cfg.N, 3, 4) * 4)
    y_shape = (10, 13)  # not a multiple of 4 latents: the crop must come after the last 3x3 layer
    with torch.no_grad():
        params = m.runtime_modules()["h_s"](z_hat.double())[..., : y_shape[0], : y_shape[1]]
        scales, means = params.chunk(2, 1)  # what the encoder uses, all in float64
        d_scales, d_means = m.decoder_hyper(z_hat, y_shape)
    assert d_scales.dtype == d_means.dtype == torch.float64
    assert torch.equal(d_scales, scales)
    assert d_means.shape == means.shape and (d_means - means).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ["scale-hyperprior", "mean-scale-hyperprior"])
def test_decoder_hyper_in_tiles_equals_one_pass(monkeypatch, arch):
    """Large latents run h_s in overlapping tiles; the margin covers its reach, so every scale is the one-pass
    float64 value (to rounding far below a CDF bucket) and the means too."""
    import psic_cli.models.backbones as backbones

    torch.manual_seed(4)
    m = build_model(ModelConfig.from_dict({**TINY, "arch": arch}))
    m.eval()
    z_hat = torch.round(torch.randn(1, m.cfg.N, 9, 11) * 4)
    y_shape = (34, 43)
    with torch.no_grad():
        whole = m.decoder_hyper(z_hat, y_shape)
        monkeypatch.setattr(backbones, "HYPER_TILE", 2)  # 2x2 z latents: seams everywhere
        tiles = m.decoder_hyper(z_hat, y_shape)
    (scales, means), (t_scales, t_means) = whole, tiles
    assert scales.shape == t_scales.shape and (scales - t_scales).abs().max() < 1e-12  # float64
    if means is None:
        assert t_means is None
    else:
        assert means.shape == t_means.shape and (means - t_means).abs().max() < 1e-5  # float32 convolution


def test_synthesis_margins_cover_the_decoders_reach():
    """One changed input moves outputs only as far as each tiled part's margin: the blocks before the last
    upsampling reach at most 5.75 latents (SYNTHESIS_FRONT_MARGIN), the rest (the last upsampling, the
    conditional blocks after it, the output layer) 4 pixels of their input (SYNTHESIS_BACK_MARGIN); the
    whole decoder reaches 6.75 latents."""
    import math

    from psic_cli.models.backbones import SYNTHESIS_BACK_MARGIN, SYNTHESIS_FRONT_MARGIN

    torch.manual_seed(5)
    cfg = {**TINY, "arch": "mean-scale-hyperprior", "trigger_head": True}  # the deepest decoder built
    m = build_model(ModelConfig.from_dict(cfg)).eval()
    with torch.no_grad():
        for p in m.g_s.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no zero-initialised path hides a branch's reach
        rt = m.runtime_modules()
        g_s = rt["g_s"]
        cond = torch.randn(1, m.cfg.cond_dim)
        tau = m.trigger(rt["cltg"], cond)
        split, u = g_s.split, g_s.split_stride
        assert u == 4

        def reach(fn, x: Tensor, scale: int) -> float:
            """How far (in input pixels) a change at the centre of ``x`` moves ``fn``'s output."""
            c = x.shape[-1] // 2
            x2 = x.clone()
            x2[..., c, c] += 5.0
            moved = ((fn(x) - fn(x2)).abs().amax(1)[0] > 0).nonzero()
            return max(c * scale - int(moved[:, 0].min()), int(moved[:, 0].max()) - ((c + 1) * scale - 1)) / scale

        def cl(t: Tensor) -> Tensor:
            return t.contiguous(memory_format=torch.channels_last)

        y = torch.randn(1, m.cfg.M, 25, 25)
        whole = reach(lambda t: g_s(cl(t), tau, None, (25, 25, 0, 25, 0, 25)), y, 16)
        front = reach(lambda t: g_s(cl(t), tau, None, (25, 25, 0, 25, 0, 25), blocks=slice(0, split)), y, u)
        f = torch.randn(1, m.cfg.N, 41, 41)
        back = reach(lambda t: g_s(cl(t), tau, None, (41, 41, 0, 41, 0, 41), blocks=slice(split, None), unit=u),
                     f, 16 // u)
    assert whole > 6.5 and front > 5.5 and back > 3.5, (whole, front, back)  # the changes do travel
    assert math.ceil(front) <= SYNTHESIS_FRONT_MARGIN and math.ceil(back) <= SYNTHESIS_BACK_MARGIN, (front, back)
