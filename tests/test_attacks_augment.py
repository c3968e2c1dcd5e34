"""Publication transforms (evaluation and training), texture weights, machine-view losses, trigger search."""

import numpy as np
import pytest
import torch

from .test_shield import TinyVLP


def test_publish_transforms(rgb_image):
    from psic_lab.evaluation.attacks import publish

    img = np.ascontiguousarray(rgb_image)
    assert publish(img, "as decoded") is img
    j = publish(img, "jpeg50")
    assert j.shape == img.shape and not np.array_equal(j, img)
    r = publish(img, "resize0.5")
    assert r.shape[:2] == (round(img.shape[0] / 2), round(img.shape[1] / 2))
    b = publish(img, "blur1")
    assert np.abs(np.diff(b.astype(float), axis=1)).mean() < np.abs(np.diff(img.astype(float), axis=1)).mean()


def test_training_publish_keeps_shape_and_passes_gradient():
    from psic_lab.training.augment import EOTConfig, jpeg_ste, publish

    x = torch.rand(3, 3, 48, 40, requires_grad=True)
    y = publish(x, np.random.default_rng(0), EOTConfig(p_jpeg=1, p_resize=1, p_blur=1, p_crop=1))
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    j = jpeg_ste(x[0].detach(), 30)
    assert not torch.equal(j, x[0].detach())


def test_lowres_transform_removes_fine_detail():
    from psic_lab.training.augment import EOTConfig, publish

    x = torch.rand(2, 3, 192, 192, generator=torch.Generator().manual_seed(0), requires_grad=True)
    cfg = EOTConfig(p_jpeg=0, p_resize=0, p_blur=0, p_crop=0, p_lowres=1)
    y = publish(x, np.random.default_rng(0), cfg)
    assert y.shape == x.shape
    # seen at <= 96 px: pixel-level noise is averaged away
    assert float(y.detach().diff(dim=-1).abs().mean()) < 0.25 * float(x.detach().diff(dim=-1).abs().mean())
    y.sum().backward()
    assert x.grad.abs().sum() > 0
    same = publish(x, np.random.default_rng(0), EOTConfig(p_jpeg=0, p_resize=0, p_blur=0, p_crop=0))
    assert torch.equal(same, x.clamp(0, 1))


def test_texture_weights_favour_texture():
    from psic_lab.training.augment import texture_weights

    x = torch.full((1, 3, 32, 64), 0.5)
    x[..., 32:] = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    w = texture_weights(x)
    assert torch.allclose(w.mean(), torch.tensor(1.0), atol=1e-4)
    assert w[..., 4:28, 4:28].mean() > 3 * w[..., 4:28, 36:60].mean()  # flat costs more than texture


def test_machine_losses_and_saliency_boxes():
    from psic_lab.training.machine import machine_losses, saliency_boxes

    vlp = TinyVLP()
    x = torch.rand(2, 3, 64, 64)
    m = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    out = machine_losses(vlp, m, x, np.random.default_rng(0), size=32)
    assert set(out) == {"global", "local", "instance"}
    sum(out.values()).backward()
    assert m.grad.abs().sum() > 0
    assert machine_losses(vlp, x.clone(), x, np.random.default_rng(0), size=32)["global"] < 1e-5

    class Mapped(TinyVLP):
        def feature_map(self, images):  # one hot spot in the top-left corner
            f = torch.zeros(len(images), 4, 8, 8)
            f[:, :, 1, 1] = 1
            return f

    (t, b, lf, r), = saliency_boxes(Mapped(), torch.rand(1, 3, 64, 64))
    assert t < 16 and lf < 16 and b - t >= 16 and r - lf >= 16


def test_trigger_search_raises_confidence(tiny_env, rgb_image):
    from psic_cli import codec
    from psic_cli.zoo import load_model
    from psic_lab.evaluation.attacks import trigger_search
    from psic_lab.evaluation.privacy import bitstream_latent

    model = load_model("tiny-sh").model
    y_hat, _ = bitstream_latent(model, codec.encode_pixels(rgb_image, "tiny-sh", 1))
    vlp = TinyVLP()
    text = vlp.class_embeddings(["a", "bb", "ccc", "dddd"])

    def confidence(cond):
        with torch.no_grad():
            x = model.synthesize(y_hat, cond[None], torch.tensor([0])).clamp(0, 1)
            return (vlp.logit_scale * vlp.encode_image(x) @ text.t()).softmax(-1).max().item()

    v = trigger_search(model, vlp, text, y_hat, 1, None, "cond", steps=15)
    assert v.shape == (model.cfg.cond_dim,)
    assert confidence(v) > confidence(torch.zeros(model.cfg.cond_dim))


def test_privacy_report_end_to_end(tiny_env, tmp_path, monkeypatch, key_file):
    """The privacy evaluation runs every trained view through the real codec and writes its report."""
    import json

    from PIL import Image

    import psic_lab.vlp as vlp_pkg
    from psic_lab.evaluation import privacy

    rng = np.random.default_rng(0)
    data = tmp_path / "val"
    for wnid in ("n01440764", "n02102040"):
        (data / wnid).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / wnid / f"{i}.png")
    classes = tmp_path / "classes.tsv"
    classes.write_text("n01440764\ttench\nn02102040\tEnglish springer\n")
    monkeypatch.setattr(vlp_pkg, "load_vlp", lambda spec: TinyVLP())
    res = privacy.evaluate(data, classes, "tiny-views", key_file, ["tiny"], None, 3, [1])
    assert res["views"] == ["full", "shielded", "strong", "machine"]
    e = res["qualities"]["1"]
    assert set(e["tiny"]) >= {"full_top1", "shielded_top1", "strong_top1", "machine_top1",
                              "shielded_attack_success_rate"}
    assert res["random_keys"]["keys"] == 3 and res["random_keys"]["images"] == 6
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    privacy.write_report(res, "p", "test")
    md = (tmp_path / "docs/p.md").read_text()
    assert "PSNR strong" in md and "Random keys: 3 keys" in md
    assert (tmp_path / "docs/p.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results/p.json").read_text())["images"] == 6


def test_face_detector_judge_finds_the_example_face():
    pytest.importorskip("cv2")
    from PIL import Image

    from psic_lab.evaluation.faces import detect, face_detector, iou

    from .conftest import EXAMPLES

    det = face_detector()
    face = detect(det, np.asarray(Image.open(EXAMPLES / "kodim15.png").convert("RGB")))
    assert len(face) == 1
    assert detect(det, np.asarray(Image.open(EXAMPLES / "kodim21.png").convert("RGB"))) == []
    assert iou(face[0], face[0]) == 1.0 and iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_attack_subset_is_seeded_and_splits_evaluation_from_search(tmp_path):
    """The attack report and the transfer benchmark read the same images: a fixed draw, no overlap."""
    from PIL import Image

    from psic_lab.evaluation.attacks import attack_subset

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / c / f"{i}.png")
    files, labels, ev, se = attack_subset(tmp_path, 5, 3)
    assert len(files) == len(labels) == 8 and len(ev) == 5 and len(se) == 3
    assert not set(ev.tolist()) & set(se.tolist())
    again = attack_subset(tmp_path, 5, 3)
    assert again[2].tolist() == ev.tolist() and again[0] == files
