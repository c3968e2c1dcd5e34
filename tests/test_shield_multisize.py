"""Multi-size shield training: the indexers' preprocessing is applied to the decoded view (and, with the same
draw, to its original), the decoded size varies per step, the embedding term is there, the stage file loads."""

import numpy as np
import pytest
import torch

from .test_shield import TinyVLP, _tiny_setup


def test_multi_indexers_are_registered_and_draw_varied_preprocessings():
    from psic_lab.training.losses import INDEXERS, get_indexer
    from psic_lab.vlp.preprocess import IndexerSampler

    assert isinstance(get_indexer("multi"), IndexerSampler) and isinstance(get_indexer("multi-strong"), IndexerSampler)
    assert INDEXERS["multi-strong"].degradations and INDEXERS["multi-strong"].p_degrade > 0
    gen = torch.Generator().manual_seed(0)
    draws = [get_indexer("multi").draw(gen) for _ in range(60)]
    assert {d[1] for d in draws} == {"short224", "short336", "short448", "squash224", "tiles2x2"}
    gen = torch.Generator().manual_seed(0)
    assert {d[0] for d in (get_indexer("multi-strong").draw(gen) for _ in range(60))} == {None, "jpeg75", "webp75",
                                                                                          "half"}
    x = torch.rand(2, 3, 96, 144)
    shapes = {tuple(get_indexer("multi")(x, gen).shape) for _ in range(40)}
    assert {(2, 3, 224, 224), (2, 3, 336, 336), (2, 3, 448, 448), (8, 3, 224, 224)} <= shapes


def test_index_pair_gives_view_and_original_the_same_draw():
    from psic_lab.training.augment import EOTConfig
    from psic_lab.training.losses import MULTI_STRONG, Published, identity, index_pair

    x = torch.rand(2, 3, 64, 96)
    x_hat = x.clone()
    for seed in range(12):  # same input -> same output: one crop, one tile cut, one degradation for both
        seen, orig = index_pair(MULTI_STRONG, x_hat, x, torch.Generator().manual_seed(seed))
        assert seen.shape == orig.shape and seen.shape[0] in (2, 8) and torch.allclose(seen, orig)
    assert index_pair(identity, x_hat, x, torch.Generator()) == (x_hat, x)
    spy = []

    def rec(t, gen):
        spy.append(t)
        return t[..., :8, :8]

    none = EOTConfig(p_jpeg=0, p_resize=0, p_blur=0, p_crop=0)
    seen, orig = index_pair(Published(none, np.random.default_rng(0), rec), x_hat, x, torch.Generator())
    assert spy[0].shape[0] == 4 and torch.equal(orig, x[..., :8, :8])  # view and original in one call


def test_the_view_loss_preprocesses_the_decoded_view_and_pushes_the_embedding_apart():
    from psic_cli.views import View
    from psic_lab.training.losses import CaptionPrivacy, ShieldViewLoss, ViewBatch, get_indexer

    vlp = TinyVLP()
    seen = []
    encode = vlp.encode_image
    vlp.encode_image = lambda t: seen.append(t) or encode(t)
    text = vlp.class_embeddings(["a", "b", "c"])
    privacy = CaptionPrivacy(vlp, text, torch.arange(3), text, [0, 1, 2])
    x = torch.rand(2, 3, 80, 120)
    x_hat = x.clone().requires_grad_(True)
    zeros = torch.zeros(2)
    gen = torch.Generator().manual_seed(3)
    batch = ViewBatch(x, x_hat, x, torch.tensor([0, 2]), zeros + 1, zeros, zeros, gen)
    loss = ShieldViewLoss(View.SHIELDED, privacy, get_indexer("multi"), embed_weight=2.0)
    terms = loss(batch)
    assert all(t.shape[-2:] != (80, 120) and t.shape[-1] == t.shape[-2] for t in seen)  # never the raw decode
    assert "cos_shielded" in terms.rec and abs(terms.rec["cos_shielded"] - 1) < 1e-4  # identical: cosine 1
    assert len(terms.terms) == 2
    terms.terms[1].backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    without = ShieldViewLoss(View.SHIELDED, privacy, get_indexer("multi"))(batch)
    assert len(without.terms) == 1 and "cos_shielded" not in without.rec


def test_geometry_draw_and_sized_batches():
    from psic_lab.training.shield import draw_geometry

    gen = torch.Generator().manual_seed(0)
    sizes = {draw_geometry([160, 224, 448], [1.0, 1.5, 2 / 3], gen) for _ in range(80)}
    assert len(sizes) >= 6
    for h, w in sizes:
        assert h % 16 == 0 and w % 16 == 0 and min(h, w) in (160, 224, 448)
    assert (224, 336) in sizes and (336, 224) in sizes and (160, 160) in sizes


def test_stage_trains_at_drawn_sizes(tmp_path, key_file):
    from psic_cli.views import View
    from psic_lab.training.shield import ShieldConfig, ShieldStage

    cfg, data = _tiny_setup(tmp_path)
    sc = ShieldConfig(init="", model_id=str(cfg), data=[str(data)], key=str(key_file), run_dir=str(tmp_path / "r"),
                      batch=4, patch=48, sizes="32,48", indexer="multi", embed_weight=1.0, reset_trigger=False)
    stage = ShieldStage(sc, vlp=TinyVLP())
    (tmp_path / "r").mkdir()
    stage.start(0)
    calls = []
    inner = stage.losses[View.SHIELDED]
    indexer = inner.indexer
    inner.indexer = lambda t, g: calls.append(t.shape) or indexer(t, g)
    shapes = set()
    for step in range(6):
        loss, rec = stage.loss(step)
        assert torch.isfinite(loss)
        shapes.add((int(rec["height"]), int(rec["width"])))
    assert len(shapes) >= 2 and all(min(s) in (32, 48) for s in shapes)
    assert calls and all(tuple(c[-2:]) in shapes for c in calls)  # the indexer gets the decoded size


def test_geo_stage_file_loads_and_is_honest():
    from psic_lab.training.options import CONFIG_DIR, ShieldConfig, load_stage, parse_aspects, parse_sizes

    sc = load_stage(ShieldConfig, CONFIG_DIR / "shield" / "psic-sh-geo1.json")
    assert sc.init == "weights/psic-sh.safetensors" and not sc.reset_trigger
    assert sc.indexer == "multi" and sc.strong_indexer == "multi-strong" and sc.embed_weight > 0
    assert len(parse_sizes(sc.sizes)) >= 3 and parse_aspects(sc.aspects) == [1.0, 1.5, 2 / 3]
    assert not any("kodak" in d or "test" in d for d in sc.data)
    assert not any(j in sc.ensemble for j in ("effnet-lite2", "judge-scratch"))
    with pytest.raises(ValueError, match="multiples of 16"):
        ShieldConfig(sizes="100")
    with pytest.raises(ValueError, match="width:height"):
        ShieldConfig(aspects="3x2")
