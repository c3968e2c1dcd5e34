"""The shield stage runs on a tiny codec and a tiny VLP, keeps the bitstream, and its loss behaves."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import TINY


class TinyVLP(torch.nn.Module):
    """A stand-in VLP: a conv image tower and bag-of-characters text vectors (no downloads)."""

    logit_scale = 20.0

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)

    def encode_image(self, x):
        return torch.nn.functional.normalize(self.conv(x).mean((-2, -1)), dim=-1)

    def encode_text(self, texts):
        out = torch.zeros(len(texts), 16)
        for i, t in enumerate(texts):
            for c in t:
                out[i, ord(c) % 16] += 1
        return torch.nn.functional.normalize(out, dim=-1)

    def class_embeddings(self, names):
        return self.encode_text([f"a photo of a {n}." for n in names])


def test_uaeo_loss_pushes_towards_wrong_classes():
    from psic_lab.training.losses import uaeo_loss

    text = torch.nn.functional.normalize(torch.eye(4), dim=-1)
    u = text[[0, 1]]
    labels = torch.tensor([0, 1])
    z_true = text[[0, 1]].clone().requires_grad_(True)
    z_wrong = text[[2, 3]].clone()
    loss_true, stats = uaeo_loss(z_true, u, text, labels, 20.0)
    loss_wrong, _ = uaeo_loss(z_wrong, u, text, labels, 20.0)
    assert stats["certain"] == 1.0 and stats["top1"] == 1.0
    assert loss_wrong < loss_true
    loss_true.backward()
    assert z_true.grad.abs().sum() > 0


def test_margin_loss_stops_once_the_caption_decision_is_wrong():
    from psic_lab.training.losses import margin_loss

    text = torch.nn.functional.normalize(torch.eye(4), dim=-1)
    u = text[[0, 1]]
    labels = torch.tensor([0, -1])  # the second sample's truth is the target's prediction on u (class 1)
    z_read = text[[0, 1]].clone().requires_grad_(True)
    read = margin_loss(z_read, u, text, labels, 20.0, kappa=2.0)
    assert abs(float(read) - 22.0) < 1e-4  # true logit 20, best other 0, plus kappa
    read.backward()
    assert z_read.grad.abs().sum() > 0
    z_fooled = text[[2, 3]].clone().requires_grad_(True)
    fooled = margin_loss(z_fooled, u, text, labels, 20.0, kappa=2.0)
    assert float(fooled) == 0.0  # wrong by 20 logits > kappa: nothing left to push


def _tiny_setup(tmp_path):
    """A tiny model config file and a labelled folder of 2 classes x 3 random images."""
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n02102040"):
        (data / wnid).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(data / wnid / f"{i}.png")
    return cfg, data


@pytest.mark.slow
def test_shield_stage_keeps_bitstream(tmp_path, key_file, monkeypatch):
    """A stage file run from the command line trains the condition path, keeps the bitstream, resumes, exports."""
    import psic_lab.vlp
    from psic_cli.zoo import bitstream_id
    from psic_lab.training.__main__ import main

    monkeypatch.setattr(psic_lab.vlp, "load_vlp", lambda spec: TinyVLP())
    cfg, data = _tiny_setup(tmp_path)
    rd = tmp_path / "rd"
    main(["rd", "--model-id", str(cfg), "--data", str(data), "--key", str(key_file), "--run-dir", str(rd),
          "--steps", "2", "--batch", "2", "--patch", "64"])
    stage = tmp_path / "stage.json"
    stage.write_text(json.dumps({"init": str(rd / "checkpoint.pt"), "model_id": str(cfg), "data": [str(data)],
                                 "key": str(key_file), "run_dir": str(tmp_path / "sh"), "steps": 3, "batch": 4,
                                 "patch": 64, "log_every": 1, "ckpt_every": 3}))
    assert main(["shield", "--config", str(stage)]) == 0
    ckpt = tmp_path / "sh" / "checkpoint.pt"
    before = torch.load(rd / "checkpoint.pt", weights_only=False)["model"]
    after = torch.load(ckpt, weights_only=False)["model"]
    assert bitstream_id(before) == bitstream_id(after)
    assert not torch.equal(before["g_s.blocks.0.p1.weight"], after["g_s.blocks.0.p1.weight"])
    log = [json.loads(x) for x in (tmp_path / "sh" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in steps)
    nu = torch.load(ckpt, weights_only=False)["extra"]["weighting"]["nu"]["shielded"]
    assert main(["shield", "--config", str(stage), "--steps", "4"]) == 0  # a flag overrides the file; resumes
    log = [json.loads(x) for x in (tmp_path / "sh" / "log.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 3} in log and log[-1]["step"] == 4
    assert log[-1]["nu_shielded"] != pytest.approx(1.0) and round(nu, 4) == steps[-1]["nu_shielded"]
    out = tmp_path / "w.safetensors"
    assert main(["export", str(ckpt), str(out), "--data-desc", "test"]) == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="numpy") as f:
        assert f.metadata()["shield"] == "trained" and f.metadata()["stage"] == "shield"


def test_checkpoints_from_before_the_weighting_object_resume(tmp_path, key_file):
    """Older shield checkpoints kept nu and its gap average as loose keys; they load into the weighting."""
    from psic_cli.views import View
    from psic_lab.training.shield import ShieldConfig, ShieldStage

    cfg, data = _tiny_setup(tmp_path)
    stage = ShieldStage(ShieldConfig(init="", model_id=str(cfg), data=[str(data)], key=str(key_file),
                                     views="full,shielded,strong", run_dir=str(tmp_path / "r")), vlp=TinyVLP())
    stage.load_state({"nu": 2.5, "gap_ema": 0.7, "nu_strong": 4.0, "gap_ema_strong": None})
    assert stage.weighting.nu == {View.SHIELDED: 2.5, View.STRONG: 4.0}
    assert stage.weighting.gap_ema == {View.SHIELDED: 0.7, View.STRONG: None}
    assert set(stage.optimizers) == {"opt"}  # no placeholder optimiser


def test_what_the_target_sees_goes_through_the_indexer():
    """The privacy loss of a keyless view reads the target on the indexer's output, not the raw decode."""
    import numpy as np

    from psic_cli.views import View
    from psic_lab.training.augment import EOTConfig
    from psic_lab.training.losses import (
        CaptionPrivacy,
        Published,
        ShieldViewLoss,
        ViewBatch,
        get_indexer,
        identity,
    )

    assert get_indexer("none") is identity
    with pytest.raises(ValueError, match="registered: multi, multi-strong, none"):
        get_indexer("no-such-indexer")
    vlp = TinyVLP()
    seen_by_target = []
    encode = vlp.encode_image
    vlp.encode_image = lambda x: seen_by_target.append(x) or encode(x)
    calls = []

    def flip(x, gen):
        calls.append(x)
        return x.flip(-1)

    text = vlp.class_embeddings(["a", "b", "c"])
    privacy = CaptionPrivacy(vlp, text, torch.arange(3), text, [0, 1, 2])
    x = torch.rand(2, 3, 32, 32)
    x_hat = torch.rand(2, 3, 32, 32, requires_grad=True)
    zeros = torch.zeros(2)
    batch = ViewBatch(x, x_hat, x, torch.tensor([0, 2]), zeros + 1, zeros, zeros, torch.Generator())
    terms = ShieldViewLoss(View.SHIELDED, privacy, flip)(batch)
    assert torch.equal(calls[0][:2], x_hat) and torch.equal(seen_by_target[-1], x_hat.flip(-1))
    assert torch.equal(seen_by_target[0], x.flip(-1))  # the original goes through the same preprocessing
    assert terms.distortion is not None and {"d_shielded", "priv_shielded"} <= set(terms.rec)
    none = EOTConfig(p_jpeg=0, p_resize=0, p_blur=0, p_crop=0)
    published = Published(none, np.random.default_rng(0), flip)(x_hat, torch.Generator())
    assert torch.equal(published, x_hat.clamp(0, 1).flip(-1))  # the published image, then the indexer


class TinyClassifier(torch.nn.Module):
    """A stand-in ImageNet classifier for the strong shield's ensemble."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 1000, 5, stride=4)

    def logits(self, x):
        return self.conv(x).mean((-2, -1))


@pytest.mark.slow
def test_later_stage_trains_machine_and_strong_views(tmp_path, key_file):
    """A later stage adds the machine view and the strong shield, holds the subtle shield to its start,
    keeps the bitstream, and the exported weights say which views are trained."""
    from safetensors import safe_open

    from psic_cli.zoo import bitstream_id
    from psic_lab.training.export import export_weights
    from psic_lab.training.shield import ShieldConfig, train_shield

    cfg, data = _tiny_setup(tmp_path)
    common = dict(model_id=str(cfg), data=[str(data)], key=str(key_file), batch=8, patch=64, log_every=1)
    first = train_shield(ShieldConfig(init="", run_dir=str(tmp_path / "s2"), steps=2, ckpt_every=2, **common),
                         vlp=TinyVLP())
    sc = ShieldConfig(init=str(first), run_dir=str(tmp_path / "s3"), steps=3, ckpt_every=3,
                      views="full,shielded,strong,machine", preserve="shielded", p_full=0.25,
                      privacy_loss="uaeo+margin", eot_lowres=0.5, codec_pad=True,
                      **{**common, "patch": 40})  # padded to 64 as the codec would, then cropped back
    ckpt = train_shield(sc, vlp=TinyVLP(), ensemble=[TinyClassifier(), TinyVLP()])  # a classifier and a VLP
    before = torch.load(first, weights_only=False)["model"]
    after = torch.load(ckpt, weights_only=False)["model"]
    assert bitstream_id(before) == bitstream_id(after)
    log = [json.loads(x) for x in (tmp_path / "s3" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r and "loss" in r]
    assert len(steps) == 3 and all(np.isfinite(r["loss"]) for r in steps)
    seen = set().union(*steps)
    assert {"d_shielded_preserve", "priv_strong", "margin_strong", "machine_instance", "ens_strong"} <= seen
    out = tmp_path / "w.safetensors"
    export_weights(ckpt, out, "test")
    with safe_open(str(out), framework="numpy") as f:
        meta = f.metadata()
    assert meta["machine_view"] == "trained" and meta["shield_levels"] == "subtle,strong"


def test_ensemble_member_scores_a_vlp_on_the_data_captions():
    """A VLP in the ensemble is attacked on the captions of the data's classes only."""
    from psic_lab.training.losses import EnsembleMember, ensemble_loss

    names = [f"class{i}" for i in range(20)]
    member = EnsembleMember(TinyVLP(), names, classes=[3, 7, 11])
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    labels = torch.tensor([3, 7, 11, 5])  # class 5 is not among the data's captions
    p_true, valid = member.p_true(x, labels)
    assert valid.tolist() == [True, True, True, False]
    assert ((p_true > 0) & (p_true < 1)).all()
    logits = TinyVLP.logit_scale * member.model.encode_image(x) @ member.caption_emb.t()
    assert torch.allclose(p_true[:3], logits.softmax(-1)[torch.arange(3), torch.tensor([0, 1, 2])])
    loss = ensemble_loss([member, EnsembleMember(TinyClassifier(), names, [3])], x, labels)
    loss.backward()
    assert torch.isfinite(loss) and x.grad.abs().sum() > 0


def test_ensemble_hinge_keeps_pushing_until_the_true_class_trails_by_kappa():
    """kappa > 0: zero only once the true logit is kappa below the best other; positive (with a gradient) before."""
    from psic_lab.training.losses import EnsembleMember, ensemble_loss

    class Fixed(torch.nn.Module):
        name = "fixed"

        def logits(self, x):
            return x.flatten(1)

    member = EnsembleMember(Fixed(), [f"c{i}" for i in range(3)], [0, 1, 2])
    labels = torch.tensor([0])
    gone = torch.tensor([[[[0.0, 1.0, 0.5]]]], requires_grad=True)  # true class already wrong by 1
    assert float(ensemble_loss([member], gone, labels, kappa=3.0)) == pytest.approx(2.0)
    ensemble_loss([member], gone, labels, kappa=3.0).backward()
    assert gone.grad[0, 0, 0, 0] > 0 and gone.grad[0, 0, 0, 1] < 0 and gone.grad[0, 0, 0, 2] == 0
    far = torch.tensor([[[[0.0, 4.0, 0.5]]]])
    assert float(ensemble_loss([member], far, labels, kappa=3.0)) == 0.0
    assert float(ensemble_loss([member], gone, labels)) < 0.25  # p_true loss: already small once wrong


def test_unseen_judges_are_refused_whatever_their_spec(tmp_path):
    """judge-scratch is recognised by the name in its weights, even when loaded from another path."""
    import shutil
    from pathlib import Path

    from psic_lab.training.shield import check_seen
    from psic_lab.vlp.judges import ScratchJudge

    weights = Path(__file__).resolve().parents[1] / "weights" / "judge-scratch.safetensors"
    copy = tmp_path / "renamed.safetensors"
    shutil.copy(weights, copy)
    with pytest.raises(ValueError, match="unseen judge"):
        check_seen([ScratchJudge.load(copy)])
    check_seen([TinyClassifier(), TinyVLP()])  # models without a judge's name pass


def test_lattice_energy_is_the_pattern_that_repeats_every_16_pixels():
    """A pattern tiled every 16 pixels scores its own (luma) variance; noise of the same variance scores about
    that over the number of cells; a constant offset scores 0; and the term has a gradient."""
    from psic_lab.training.losses import lattice_energy

    torch.manual_seed(0)
    cell = torch.randn(1, 3, 16, 16)
    luma = (cell[0] * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)
    pattern = cell.repeat(1, 1, 4, 6)  # 64x96: 24 cells
    e = lattice_energy(pattern)
    assert torch.allclose(e, ((luma - luma.mean()) ** 2).mean()[None], rtol=1e-5)
    noise = torch.randn(8, 3, 64, 96) * pattern.std()
    assert float(lattice_energy(noise).mean()) < 0.1 * float(e)
    assert float(lattice_energy(torch.full((2, 3, 64, 96), 0.3)).abs().max()) < 1e-10
    assert torch.equal(lattice_energy(torch.ones(1, 3, 8, 8)), torch.zeros(1))  # smaller than one cell
    r = pattern.clone().requires_grad_(True)
    lattice_energy(r).sum().backward()
    assert r.grad.abs().sum() > 0


def test_grid_weight_adds_the_keyless_views_lattice_to_the_loss(tmp_path, key_file, monkeypatch):
    """The same first step with and without grid_weight: the same logged lattice (it is logged either way),
    and a larger loss with it (the lattice term is added)."""
    import psic_lab.vlp
    from psic_lab.training.__main__ import main

    monkeypatch.setattr(psic_lab.vlp, "load_vlp", lambda spec: TinyVLP())
    cfg, data = _tiny_setup(tmp_path)
    rd = tmp_path / "rd"
    main(["rd", "--model-id", str(cfg), "--data", str(data), "--key", str(key_file), "--run-dir", str(rd),
          "--steps", "2", "--batch", "2", "--patch", "64"])
    with torch.no_grad():  # a lattice for the keyless views to pay for: make the condition path act
        state = torch.load(rd / "checkpoint.pt", weights_only=False)
        for k, v in state["model"].items():
            if ".p1." in k or ".p2." in k:
                v.normal_(0, 0.5)
        torch.save(state, rd / "checkpoint.pt")
    first = {}
    for weight in (0.0, 1000.0):
        run = tmp_path / f"sh{weight}"
        assert main(["shield", "--init", str(rd / "checkpoint.pt"), "--model-id", str(cfg), "--data", str(data),
                     "--key", str(key_file), "--run-dir", str(run), "--steps", "1", "--batch", "4", "--patch", "64",
                     "--p-full", "0", "--grid-weight", str(weight), "--log-every", "1"]) == 0
        first[weight] = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"loss"' in x][0]
    assert first[0.0]["lattice_rms"] > 0 and first[0.0]["lattice_rms"] == pytest.approx(first[1000.0]["lattice_rms"])
    # the live trigger units of each trained view's condition are logged (0 = a dead CLTG for that view)
    assert {"tau_live_full", "tau_live_shielded"} <= set(first[0.0]) and first[0.0]["tau_live_full"] > 0
    assert first[1000.0]["loss"] > first[0.0]["loss"] + 1e-3


def test_a_dead_trigger_stops_the_stage(tmp_path, key_file, monkeypatch):
    """With the CLTG's last ReLU dead for every condition (no shield can train), the stage checkpoints and
    stops after ``dead_trigger_patience`` steps and says why; with patience 0 it runs all its steps."""
    import psic_lab.vlp
    from psic_lab.training.__main__ import main

    monkeypatch.setattr(psic_lab.vlp, "load_vlp", lambda spec: TinyVLP())
    cfg, data = _tiny_setup(tmp_path)
    rd = tmp_path / "rd"
    main(["rd", "--model-id", str(cfg), "--data", str(data), "--key", str(key_file), "--run-dir", str(rd),
          "--steps", "1", "--batch", "2", "--patch", "64"])
    with torch.no_grad():  # the last Linear's outputs far below zero for any condition
        state = torch.load(rd / "checkpoint.pt", weights_only=False)
        state["model"]["cltg.mlp.2.weight"].zero_()
        state["model"]["cltg.mlp.2.bias"].fill_(-10.0)
        torch.save(state, rd / "checkpoint.pt")
    logs = {}
    for patience in (2, 0):
        run = tmp_path / f"sh{patience}"
        assert main(["shield", "--init", str(rd / "checkpoint.pt"), "--model-id", str(cfg), "--data", str(data),
                     "--key", str(key_file), "--run-dir", str(run), "--steps", "4", "--batch", "2",
                     "--patch", "64", "--no-reset-trigger", "--dead-trigger-patience", str(patience),
                     "--log-every", "1"]) == 0
        logs[patience] = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    steps = {p: max(r.get("step", 0) for r in log) for p, log in logs.items()}
    assert steps == {2: 2, 0: 4}
    assert logs[2][-1]["event"].startswith("trigger dead for shielded")
    assert all(r["tau_live_shielded"] == 0 for r in logs[0] if "loss" in r)
