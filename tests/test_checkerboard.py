"""The checkerboard context arch (``mean-scale-checkerboard``): a fresh context codes what the hyperprior codes (up
to the means' float rounding), a trained one still round-trips (in tiles too), the file carries three strings,
everything that picks a CDF runs in float64, and ``rd --train-part context`` moves only the context."""

import json

import pytest
import torch

from .conftest import TEST_KEY, TINY, noise_images

CB = {**TINY, "arch": "mean-scale-checkerboard"}


def _pair():
    """A mean-scale hyperprior and a checkerboard model with the same weights (its context fresh)."""
    from psic_cli.models import ModelConfig, build_model

    torch.manual_seed(0)
    ms = build_model(ModelConfig.from_dict({**TINY, "arch": "mean-scale-hyperprior"}))
    with torch.no_grad():
        ms.g_a[-1].weight.mul_(20)
    cb = build_model(ModelConfig.from_dict(CB))
    missing = cb.load_state_dict(ms.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("context.") for k in missing)
    for m in (ms, cb):
        m.eval()
        m.update()
    return ms, cb


def test_a_fresh_context_codes_the_hyperpriors_latents_in_three_strings():
    ms, cb = _pair()
    x = torch.rand(1, 3, 96, 128)
    a, b = ms.compress(x, 1), cb.compress(x, 1)
    assert len(a["strings"]) == 2 and len(b["strings"]) == 3
    assert b["strings"][1] == a["strings"][1]  # the same hyper-latent
    ya, _ = ms.decode_latent(a["strings"], a["shape"], a["y_shape"])
    yb, checksum = cb.decode_latent(b["strings"], b["shape"], b["y_shape"])
    assert checksum == b["checksum"]
    # the same latents, up to the means' rounding (float64 here, float32 in the hyperprior's decoder) and a
    # symbol that this rounding moves across a half, rarely
    off = (ya - yb).abs()
    assert float((off > 1e-4).double().mean()) < 0.01 and float(off.max()) <= 1.0 + 1e-4
    assert float(off.median()) < 1e-5


def test_a_trained_context_changes_the_others_strings_and_still_round_trips_in_tiles(monkeypatch):
    from psic_cli.models import backbones

    ms, cb = _pair()
    with torch.no_grad():
        torch.nn.init.normal_(cb.context.params[-1].weight, std=0.3)
    cb.reset_runtime()
    x = torch.rand(1, 3, 192, 256)
    a, b = ms.compress(x, 1), cb.compress(x, 1)
    assert b["strings"][2] != a["strings"][0]
    y_whole, checksum = cb.decode_latent(b["strings"], b["shape"], b["y_shape"])
    assert checksum == b["checksum"]
    monkeypatch.setattr(backbones, "CONTEXT_TILE", 3)  # many tiles of the 12x16 latent
    tiles = cb.compress(x, 1)
    assert tiles["checksum"] == b["checksum"]
    y_tiles, checksum = cb.decode_latent(tiles["strings"], tiles["shape"], tiles["y_shape"])
    assert checksum == b["checksum"] and (y_tiles - y_whole).abs().max() < 1e-9


def test_the_reader_wants_the_archs_string_count():
    from psic_cli import container
    from psic_cli.errors import FormatError

    h = container.Header("psic-x", "mean-scale-checkerboard", b"\0" * 8, 1, 64, 64, "RGB")
    z = container.expected_z_shape(h)
    ok = container.PsicFile(h, (container.Tile(z, 0, (b"\0" * 8,) * 3),))
    container.check_geometry(container.unpack(container.pack(ok)))
    two = container.PsicFile(h, (container.Tile(z, 0, (b"\0" * 8,) * 2),))
    with pytest.raises(FormatError, match="expected 3 entropy-coded strings"):
        container.check_geometry(container.unpack(container.pack(two)))


def test_context_training_moves_only_the_context(tmp_path, key_file):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from psic_cli.keys import fingerprint
    from psic_lab.training.__main__ import main
    from psic_lab.training.export import write_weights

    ms, _ = _pair()
    base = tmp_path / "base.safetensors"
    write_weights(ms, base, steps=40, key_fingerprint=fingerprint(TEST_KEY), data_desc="none (test)")
    cfg = tmp_path / "cb.json"
    cfg.write_text(json.dumps(CB))
    run_dir = tmp_path / "run"
    args = ["rd", "--model-id", str(cfg), "--data", str(noise_images(tmp_path / "data", 3)), "--key", str(key_file),
            "--run-dir", str(run_dir), "--steps", "3", "--batch", "2", "--patch", "64", "--log-every", "1",
            "--lr", "1e-2", "--train-part", "context", "--latent-crops", "4", "--init-from", str(base)]
    assert main(args) == 0
    out = tmp_path / "cb.safetensors"
    assert main(["export", str(run_dir / "checkpoint.pt"), str(out), "--data-desc", "noise"]) == 0
    old, new = load_file(str(base)), load_file(str(out))
    assert all(torch.equal(old[k], new[k]) for k in old)  # the codec it was learnt for, untouched
    added = {k for k in new if k not in old}
    assert added and all(k.startswith("context.") for k in added)
    assert new["context.params.4.weight"].abs().sum() > 0  # it learnt: the last layer left zero
    from psic_cli.zoo import bitstream_id

    assert bitstream_id(new) != bitstream_id(old)  # the context picks CDFs: its files are not the base's
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["steps"] == "43" and meta["stage"] == "rd-context"


def test_context_training_needs_the_checkerboard_arch(tmp_path, key_file):
    from psic_lab.training.__main__ import main

    cfg = tmp_path / "ms.json"
    cfg.write_text(json.dumps({**TINY, "arch": "mean-scale-hyperprior"}))
    args = ["rd", "--model-id", str(cfg), "--data", str(noise_images(tmp_path / "data", 1)), "--key", str(key_file),
            "--run-dir", str(tmp_path / "run"), "--steps", "1", "--train-part", "context", "--init-from", "x"]
    with pytest.raises(SystemExit, match="mean-scale-checkerboard"):
        main(args)


@pytest.fixture()
def cb_env(tmp_path, monkeypatch):
    """Installed weights of a tiny checkerboard model whose context is not the identity."""
    from psic_cli import zoo
    from psic_cli.keys import fingerprint
    from psic_cli.models import ModelConfig, build_model
    from psic_lab.training.export import write_weights

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**CB, "model_id": "tiny-cb"}))
    with torch.no_grad():
        model.g_a[-1].weight.mul_(20)
        torch.nn.init.normal_(model.context.params[-1].weight, std=0.3)
    write_weights(model, tmp_path / "tiny-cb.safetensors", steps=0, key_fingerprint=fingerprint(TEST_KEY),
                  data_desc="none (test)")
    monkeypatch.setenv("PSIC_WEIGHTS", str(tmp_path))
    zoo.load_model.cache_clear()
    yield model
    zoo.load_model.cache_clear()


def test_checkerboard_files_decode_and_crafted_strings_end_in_a_clean_error(cb_env, rgb_image):
    from psic_cli import codec, container
    from psic_cli.errors import FormatError

    data = codec.encode_pixels(rgb_image, "tiny-cb", 2)
    f = container.unpack(data)
    assert len(f.tiles[0].strings) == 3
    assert codec.decode(data, TEST_KEY).pixels.shape == rgb_image.shape
    rng = torch.Generator().manual_seed(1)
    for i in (0, 2):  # the anchors' string, the others' string: garbage of a valid rANS length
        strings = list(f.tiles[0].strings)
        strings[i] = bytes(torch.randint(0, 256, (len(strings[i]),), generator=rng, dtype=torch.uint8).tolist())
        tile = container.Tile(f.tiles[0].z_shape, f.tiles[0].checksum, tuple(strings))
        with pytest.raises(FormatError):
            codec.decode(container.pack(container.PsicFile(f.header, (tile,))), TEST_KEY)


@pytest.mark.parametrize("parity", [0, 1])
def test_the_decoders_sparse_context_equals_the_dense_one_at_the_non_anchors(parity):
    """``CheckerboardContext.others`` (the coding doors') skips the taps that read non-anchors and the
    anchors' outputs; at the non-anchors it computes what the training ``forward`` does."""
    from psic_cli.models.layers import CheckerboardContext, anchor_mask

    torch.manual_seed(0)
    c = CheckerboardContext(8).double()
    torch.nn.init.normal_(c.params[-1].weight, std=0.3)
    a = anchor_mask(7, 10, parity=parity)
    sym = torch.randn(1, 8, 7, 10, dtype=torch.float64).mul(4).round() * a
    scales, means = torch.rand(1, 8, 7, 10, dtype=torch.float64), torch.randn(1, 8, 7, 10, dtype=torch.float64)
    with torch.no_grad():
        dense = c(sym, scales, means).reshape(16, -1)[:, ~a.reshape(-1)]
        sparse = c.others(sym, scales, means, parity=parity)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)


def test_everything_that_picks_a_cdf_runs_in_float64():
    """The context reads the hyperprior's means: in float32 they differ between CPU kernel sets, and a
    non-anchor's CDF then flips on another machine (benchmarks/portability.py found such a Kodak file)."""
    _, cb = _pair()
    rt = cb.runtime_modules()
    assert rt["h_s_means"].weight.dtype == torch.float64 and rt["h_s_scales"].weight.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in rt["context"].parameters())
