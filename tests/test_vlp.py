"""Fast checks of the VLP interface (psic_lab.vlp): offline loading, pixel gradients, zero-shot, open_clip I/O."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from psic_cli._compat import ensure_torchvision_importable

ensure_torchvision_importable()

from psic_lab.vlp.base import VLP, retrieval_recall_at_1  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MINI_WEIGHTS = REPO / "weights" / "psic-vlp-mini.safetensors"
JUDGE_WEIGHTS = REPO / "weights" / "judge-scratch.safetensors"
TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _images(n: int = 2, h: int = 96, w: int = 128) -> torch.Tensor:
    """Deterministic synthetic images in [0, 1] (a gradient with a bright square)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, h, w, generator=g) * 0.3
    x[:, 0, h // 4 : h // 2, w // 4 : w // 2] = 0.9
    return x


def _check_vlp(model: VLP, n_classes: int = 3) -> None:
    """Pixel gradients flow and the zero-shot API returns valid shapes."""
    x = _images().requires_grad_(True)
    emb = model.encode_image(x)
    assert emb.shape == (2, model.embed_dim)
    assert torch.isfinite(emb).all()
    emb.pow(2).sum().backward() if model.embed_dim == 1000 else emb[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())  # frozen
    names = ["tench", "golf ball", "church"][:n_classes]
    logits = model.zero_shot_logits(_images(), names)
    assert logits.shape == (2, n_classes) and torch.isfinite(logits).all()
    pred = model.zero_shot_predict(_images(), names)
    assert pred.shape == (2,) and int(pred.max()) < n_classes


def test_package_import_is_lazy() -> None:
    code = "import sys, psic_lab.vlp; print(any(m in sys.modules for m in ('torch', 'transformers', 'open_clip')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_codec_runtime_does_not_import_vlp() -> None:
    """The codec runtime (codec, models, file I/O, keys) never imports psic_lab.vlp; CLI/training may, lazily."""
    names = ("codec.py", "container.py", "imageio.py", "fileio.py", "keys.py", "errors.py", "_compat.py", "zoo.py")
    runtime = [REPO / "psic_cli" / n for n in (*names, "batch.py")]
    runtime += sorted((REPO / "psic_cli" / "models").rglob("*.py"))
    for path in (p for p in runtime if p.is_file()):
        text = path.read_text()
        assert "psic_lab.vlp" not in text and "from .vlp" not in text and "from ..vlp" not in text, path


def test_bundled_class_lists() -> None:
    from psic_lab.vlp.text import IMAGENETTE_CLASSES_FILE, imagenet_classes, read_class_file

    wnids, names = imagenet_classes()
    assert len(wnids) == len(names) == 1000 and wnids[0] == "n01440764" and names[0] == "tench"
    nette = read_class_file(IMAGENETTE_CLASSES_FILE)
    assert len(nette) == 10 and set(nette) <= set(wnids)


def test_retrieval_recall_counts_identical_captions() -> None:
    img = torch.eye(3)
    txt = torch.eye(3)[[0, 1, 1]]
    r = retrieval_recall_at_1(img, txt, ["a", "b", "b"])
    assert r["i2t_r1"] == pytest.approx(2 / 3) and r["t2i_r1"] == 1.0


@pytest.fixture(scope="module")
def minilm():
    from psic_lab.vlp.text import shared_minilm

    return shared_minilm()


def test_minilm_offline_semantics(minilm) -> None:
    e = minilm(["a photo of a dog", "a picture of a puppy", "a garbage truck"])
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3


def test_psic_vlp_mini_architecture(minilm) -> None:
    from psic_lab.vlp.mini import PsicVlpMini

    _check_vlp(PsicVlpMini().freeze())  # random projection: checks the frozen backbone + text path


@pytest.mark.skipif(not MINI_WEIGHTS.is_file(), reason="weights/psic-vlp-mini.safetensors not trained yet")
def test_psic_vlp_mini_bundled_weights(minilm) -> None:
    from safetensors import safe_open

    from psic_lab.vlp.factory import load_vlp

    assert MINI_WEIGHTS.stat().st_size < 5_000_000
    with safe_open(str(MINI_WEIGHTS), framework="pt") as f:
        assert {"architecture", "training_data", "steps"} <= set(f.metadata())
    model = load_vlp("psic-vlp-mini")
    _check_vlp(model)


def test_judge_scratch_architecture(minilm) -> None:
    from psic_lab.vlp.judges import ScratchJudge

    _check_vlp(ScratchJudge().freeze())


@pytest.mark.skipif(not JUDGE_WEIGHTS.is_file(), reason="weights/judge-scratch.safetensors not trained yet")
def test_judge_scratch_bundled_weights(minilm) -> None:
    from safetensors import safe_open

    from psic_lab.vlp.factory import load_vlp

    with safe_open(str(JUDGE_WEIGHTS), framework="pt") as f:
        meta = f.metadata()
        assert {"architecture", "training_data", "steps"} <= set(meta)
        assert json.loads(meta["architecture"])["init"].startswith("random")
    _check_vlp(load_vlp("judge-scratch"))


def test_surrogate_scratch_is_another_model(minilm) -> None:
    """The shield's from-scratch surrogate is its own architecture and weights, named as such."""
    from safetensors import safe_open

    from psic_lab.vlp.factory import load_vlp
    from psic_lab.vlp.judges import UNSEEN_JUDGES

    path = REPO / "weights" / "surrogate-scratch.safetensors"
    with safe_open(str(path), framework="pt") as f:
        arch = json.loads(f.metadata()["architecture"])
    assert arch["model"] == "surrogate-scratch" and arch["tower"] == "PlainCNN"
    surrogate, judge = load_vlp("surrogate-scratch"), load_vlp("judge-scratch")
    assert surrogate.name not in UNSEEN_JUDGES and judge.name in UNSEEN_JUDGES
    assert type(surrogate.tower) is not type(judge.tower)
    _check_vlp(surrogate)


def test_effnet_lite2_label_judge() -> None:
    from psic_lab.vlp.factory import load_vlp

    judge = load_vlp("effnet-lite2")
    assert judge.class_index("a photo of a chain saw.") == 491  # imagenette alias of "chainsaw"
    assert judge.class_index("a photo of a golf ball") == 574
    assert judge.class_index("nothing known here") is None
    _check_vlp(judge)
    probs = judge.encode_image(_images())
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-4)


@pytest.fixture(scope="module")
def tiny_openclip(tmp_path_factory):
    """A random tiny open_clip model saved as .safetensors and .bin next to its JSON config."""
    from safetensors.torch import save_file

    from psic_lab.vlp.openclip_backend import import_open_clip

    open_clip = import_open_clip()
    d = tmp_path_factory.mktemp("openclip")
    (d / "psic-tiny-test.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(d / "psic-tiny-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("psic-tiny-test", pretrained=None).eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(d / "open_clip_model.safetensors"))
    torch.save(sd, d / "open_clip_pytorch_model.bin")
    return model, d


@pytest.mark.parametrize("fname", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_openclip_local_round_trip(tiny_openclip, fname: str) -> None:
    from psic_lab.vlp.factory import load_vlp

    ref, d = tiny_openclip
    vlp = load_vlp(f"openclip:psic-tiny-test:{d / fname}")
    assert vlp.embed_dim == 64 and vlp.image_size == 64
    x = torch.rand(2, 3, 64, 64)
    from psic_lab.vlp.base import normalise

    with torch.no_grad():
        want = torch.nn.functional.normalize(ref.encode_image(normalise(x, vlp.mean, vlp.std)), dim=-1)
    assert torch.allclose(vlp.encode_image(x), want, atol=1e-5)
    _check_vlp(vlp)


def test_openclip_rejects_missing_checkpoint(tmp_path) -> None:
    from psic_lab.vlp.factory import load_vlp

    with pytest.raises(FileNotFoundError):
        load_vlp(f"openclip:ViT-B-32:{tmp_path / 'nope.bin'}")
    with pytest.raises(ValueError):
        load_vlp("openclip:ViT-B-32")


def test_evaluate_folder_and_cli(tiny_openclip, tmp_path) -> None:
    from PIL import Image

    from psic_lab.vlp import evaluate_folder
    from psic_lab.vlp.eval import main

    _, d = tiny_openclip
    folder = tmp_path / "imgs"
    for wnid in ("n01440764", "n03445777"):
        (folder / wnid).mkdir(parents=True)
        for k in range(2):
            arr = (torch.rand(40, 50, 3) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(folder / wnid / f"{k}.png")
    classes = tmp_path / "classes.tsv"
    classes.write_text("n01440764\ttench\nn03445777\tgolf ball\n")
    spec = f"openclip:psic-tiny-test:{d / 'open_clip_model.safetensors'}"
    res = evaluate_folder(spec, folder, classes, open_vocab=True)
    assert res["n_images"] == 4 and res["n_classes"] == 2
    for key in ("zero_shot_top1", "i2t_r1", "t2i_r1", "imagenet1k_top1"):
        assert 0.0 <= res[key] <= 1.0
    out = tmp_path / "r.json"
    main(["--vlp", spec, "--folder", str(folder), "--classes", str(classes), "--limit", "2", "--json", str(out)])
    assert json.loads(out.read_text())["n_images"] == 2
