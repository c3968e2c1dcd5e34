"""Train the ``psic-vlp-mini`` projection on cached, frozen EfficientNet-Lite0 features.

Two steps::

    python -m psic_lab.vlp.train_mini cache --out runs/vlp/mini-cache.pt     # backbone features, once
    python -m psic_lab.vlp.train_mini train --cache runs/vlp/mini-cache.pt  # projection, minutes

Loss = open-vocabulary distillation + caption contrastive:

* **distillation**: EfficientNet-Lite0's own 1000-class softmax (its ``_fc`` head on the same pooled
  features, temperature ``T``) is the target for ``softmax(s * proj(f) . text(class_k))`` over the text
  embeddings of all 1000 ImageNet class names (prompt-ensembled).  Applied to real features and to
  feature-space mixups of them, which widens the set of teacher distributions seen.
* **contrastive**: symmetric InfoNCE between image embeddings and a prompt-template caption per image
  (imagenette train: its label; BSDS500: the teacher's top-1 ImageNet class name, as a pseudo-caption).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data_utils import list_images, list_labelled_folder, load_image, square_crops
from .text import IMAGENETTE_CLASSES_FILE, imagenet_classes, read_class_file

DATA = Path("/work/shared/data")
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a cropped photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a low resolution photo of a {}.",
    "a good photo of a {}.",
    "a bad photo of the {}.",
    "itap of a {}.",
    "a {} in the scene.",
    "there is a {} in this photo.",
    "a snapshot of a {}.",
)


@torch.no_grad()
def cache_features(out: Path, imagenette: Path, bsds: Path, bsds_crops: int = 3, batch: int = 32) -> None:
    """Compute pooled Lite0 features of imagenette train (1 view) and BSDS500 (``bsds_crops`` squares)."""
    from .mini import LITE_SIZES, lite_pooled_features, load_efficientnet_lite

    backbone = load_efficientnet_lite("efficientnet-lite0")
    size = LITE_SIZES["efficientnet-lite0"]
    wnids = list(read_class_file(IMAGENETTE_CLASSES_FILE))
    files, labels = list_labelled_folder(imagenette / "train")
    items: list[tuple[Path, int, int]] = [(f, wnids.index(lab), 0) for f, lab in zip(files, labels, strict=True)]
    for split in ("train", "val", "test"):
        for f in list_images(bsds / split):
            items.extend((f, -1, k) for k in range(bsds_crops))
    feats, label_list, source = [], [], []
    t0 = time.time()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        imgs = []
        for f, lab, k in chunk:
            img = load_image(f)
            crop = square_crops(img, bsds_crops)[k] if lab < 0 else square_crops(img, 1)[0]
            from .base import resize_center_crop

            imgs.append(resize_center_crop(crop.unsqueeze(0), size)[0])
        feats.append(lite_pooled_features(backbone, torch.stack(imgs), size).half())
        label_list.extend(lab for _, lab, _ in chunk)
        source.extend(str(f) for f, _, _ in chunk)
        if (i // batch) % 20 == 0:
            print(f"{i + len(chunk)}/{len(items)} images, {time.time() - t0:.0f} s", flush=True)
    torch.save(
        {"feats": torch.cat(feats), "labels": torch.tensor(label_list), "files": source, "wnids": wnids}, out
    )
    print(f"cached {len(items)} feature vectors to {out} in {time.time() - t0:.0f} s")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="compute frozen backbone features")
    c.add_argument("--out", type=Path, default=Path("runs/vlp/mini-cache.pt"))
    c.add_argument("--imagenette", type=Path, default=DATA / "imagenette")
    c.add_argument("--bsds", type=Path, default=DATA / "bsds500")
    c.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("train", help="train the projection on cached features")
    t.add_argument("--cache", type=Path, default=Path("runs/vlp/mini-cache.pt"))
    t.add_argument("--out", type=Path, default=Path("weights/psic-vlp-mini.safetensors"))
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--hidden", type=int, default=0)
    t.add_argument("--holdout", type=float, default=0.1, help="fraction of imagenette train held out for checks")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    t.add_argument("--nce-weight", type=float, default=1.0)
    t.add_argument("--init-scale", type=float, default=30.0)
    t.add_argument("--log-every", type=int, default=250)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cmd == "cache":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cache_features(args.out, args.imagenette, args.bsds)
    else:
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        train_projection(args)


def _teacher_head() -> torch.nn.Linear:
    """EfficientNet-Lite0's own 1000-way classifier head (frozen)."""
    from .mini import load_efficientnet_lite

    return load_efficientnet_lite("efficientnet-lite0")._fc


def _caption_bank(names: list[str], cache: Path) -> torch.Tensor:
    """MiniLM embeddings ``[len(names), len(TRAIN_TEMPLATES), 384]`` of every (class, template) caption."""
    if cache.is_file():
        d = torch.load(cache)
        if d["names"] == names and d["templates"] == list(TRAIN_TEMPLATES):
            return d["emb"]
    from .text import shared_minilm

    emb = shared_minilm()([t.format(c) for c in names for t in TRAIN_TEMPLATES])
    emb = emb.view(len(names), len(TRAIN_TEMPLATES), -1)
    torch.save({"names": names, "templates": list(TRAIN_TEMPLATES), "emb": emb}, cache)
    return emb


def _multi_positive_nce(img: torch.Tensor, txt: torch.Tensor, cls: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every caption of the same class counts as a positive."""
    logits = scale * img @ txt.t()
    pos = (cls[:, None] == cls[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0)).sum(0).mean())


def train_projection(args: argparse.Namespace) -> None:
    """Train the projection on cached features and save ``weights/psic-vlp-mini.safetensors``."""
    from .mini import Projection, PsicVlpMini

    data = torch.load(args.cache)
    feats, labels = data["feats"].float(), data["labels"]
    head = _teacher_head()
    with torch.no_grad():
        teacher_logits = head(feats)
    _, in_names = imagenet_classes()
    nette_names = list(read_class_file(IMAGENETTE_CLASSES_FILE).values())
    wnid_to_in = {w: i for i, w in enumerate(imagenet_classes()[0])}
    nette_in = torch.tensor([wnid_to_in[w] for w in data["wnids"]])
    # caption bank: the 1000 ImageNet names (rows 0-999) then the 10 imagenette names (rows 1000-1009)
    bank = _caption_bank(list(in_names) + nette_names, args.cache.with_name("mini-captions.pt"))
    class_text = F.normalize(bank[:1000].mean(1), dim=-1)  # prompt-ensembled ImageNet class embeddings
    nette_text = F.normalize(bank[1000:].mean(1), dim=-1)
    # caption class of every sample: its imagenette label, or the teacher's top-1 ImageNet class (BSDS500)
    cap_cls = torch.where(labels >= 0, 1000 + labels.clamp(min=0), teacher_logits.argmax(1))

    nette = (labels >= 0).nonzero().squeeze(1)
    perm = nette[torch.randperm(len(nette))]
    n_hold = int(args.holdout * len(nette))
    hold = perm[:n_hold]
    train_mask = torch.ones(len(labels), dtype=torch.bool)
    train_mask[hold] = False
    train_idx = train_mask.nonzero().squeeze(1)
    print(f"{len(train_idx)} training vectors ({int((labels[train_idx] < 0).sum())} BSDS500 crops), {n_hold} held out")

    proj = Projection(hidden=args.hidden)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(args.init_scale)))
    opt = torch.optim.AdamW([*proj.parameters(), log_scale], lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    t0 = time.time()

    def held_out_metrics() -> dict[str, float]:
        with torch.no_grad():
            emb = F.normalize(proj(feats[hold]), dim=-1)
            y10 = labels[hold]
            return {
                "holdout_top1_10way": (emb @ nette_text.t()).argmax(1).eq(y10).float().mean().item(),
                "holdout_top1_1000way": (emb @ class_text.t()).argmax(1).eq(nette_in[y10]).float().mean().item(),
                "teacher_top1_1000way": teacher_logits[hold].argmax(1).eq(nette_in[y10]).float().mean().item(),
            }

    for step in range(1, args.steps + 1):
        idx = train_idx[torch.randint(len(train_idx), (args.batch,))]
        f = feats[idx]
        scale = log_scale.exp().clamp(max=100.0)
        # distillation on real features and on feature-space mixups
        lam, mate = torch.rand(args.batch, 1), torch.randperm(args.batch)
        f_all = torch.cat([f, lam * f + (1 - lam) * f[mate]])
        t_logits = teacher_logits[idx]
        # the teacher head is linear, so the mixup's teacher logits are the mix of the logits
        target = (torch.cat([t_logits, lam * t_logits + (1 - lam) * t_logits[mate]]) / args.temperature).softmax(1)
        emb_all = F.normalize(proj(f_all), dim=-1)
        student = (scale * emb_all @ class_text.t()) / args.temperature
        kd = -(target * student.log_softmax(1)).sum(1).mean() * args.temperature**2
        # caption contrastive on the real features
        tmpl = torch.randint(len(TRAIN_TEMPLATES), (args.batch,))
        cap = bank[cap_cls[idx], tmpl]
        nce = _multi_positive_nce(emb_all[: args.batch], cap, cap_cls[idx], scale)
        loss = kd + args.nce_weight * nce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps:
            msg = {"step": step, "kd": round(kd.item(), 4), "nce": round(nce.item(), 4),
                   "scale": round(scale.item(), 2), "s": round(time.time() - t0, 1), **held_out_metrics()}
            print(json.dumps(msg), flush=True)

    model = PsicVlpMini.__new__(PsicVlpMini)  # save without loading the backbone again
    torch.nn.Module.__init__(model)
    model.projection, model.logit_scale = proj, float(log_scale.detach().exp().clamp(max=100.0))
    final = held_out_metrics()
    meta = {
        "training_data": "imagenette train (9469 images, 1 centre view; "
        f"{n_hold} held out for checks) + BSDS500 train/val/test (500 images x 3 square crops); "
        "ImageNet-1k class names (bundled imagenet_classes.tsv) as the distillation label space",
        "steps": str(args.steps),
        "training": json.dumps({k: str(v) for k, v in vars(args).items()} | {"final_holdout": final}),
        "loss": "KL(Lite0 softmax/T || softmax(scale*cos(proj(f), text(class))/T)) on real+mixup features "
        "+ nce_weight * multi-positive caption InfoNCE",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    PsicVlpMini.save(model, args.out, meta)
    print(f"saved {args.out}: {json.dumps(final)}")


if __name__ == "__main__":
    main()
