"""Train ``judge-scratch``: a small CNN image tower from random init against the frozen MiniLM text tower.

    python -m psic_lab.vlp.train_judge --epochs 18 --threads 1

The strong shield's from-scratch surrogate is the same recipe with another tower and seed:

    python -m psic_lab.vlp.train_judge --name surrogate-scratch --tower PlainCNN --seed 1 \
        --out weights/surrogate-scratch.safetensors --epochs 12 --threads 2

Images (imagenette train, centre square) are decoded once and kept in memory as 72x72 uint8.  Each
step draws random-resized crops (scale 0.3-1, aspect 3/4-4/3) at 56 px plus horizontal flips with
one batched ``grid_sample``.  The loss is cross-entropy of ``scale * img . text`` over the 10 class
captions, each class captioned with a random prompt template per step (a caption-contrastive loss
in which the candidate captions are the class captions).  SGD+Nesterov, one-cycle LR, label
smoothing 0.1.  The judge is evaluated at 64 px (train/test resolution ratio of FixRes).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import ZERO_SHOT_TEMPLATES
from .data_utils import list_labelled_folder, load_square_uint8
from .judges import SCRATCH_MEAN, SCRATCH_STD, TOWERS
from .text import IMAGENETTE_CLASSES_FILE, read_class_file, shared_minilm
from .train_mini import TRAIN_TEMPLATES

DATA = Path("/work/shared/data/imagenette")


def cached_uint8(folder: Path, size: int, cache: Path, wnids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, 3, size, size]`` uint8 images and labels of a labelled folder, cached to ``cache``."""
    if cache.is_file():
        d = torch.load(cache)
        return d["images"], d["labels"]
    files, labels = list_labelled_folder(folder)
    imgs = np.stack([load_square_uint8(f, size) for f in files])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([wnids.index(lab) for lab in labels])
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"images": x, "labels": y}, cache)
    return x, y


def augment(batch: torch.Tensor, out: int, scale: tuple[float, float] = (0.3, 1.0)) -> torch.Tensor:
    """Random-resized crop + horizontal flip of a uint8 batch via one affine ``grid_sample``; float in [0, 1]."""
    b = batch.shape[0]
    x = batch.float().div_(255.0)
    area = torch.empty(b).uniform_(*scale)
    logr = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3))
    sx = (area * logr.exp()).sqrt().clamp(max=1.0)
    sy = (area / logr.exp()).sqrt().clamp(max=1.0)
    tx = (torch.rand(b) * 2 - 1) * (1 - sx)
    ty = (torch.rand(b) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, [b, 3, out, out], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def prep(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float [0,1] batch -> resized to ``size`` (antialiased) and normalised."""
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(SCRATCH_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(SCRATCH_STD).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(tower: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, class_emb: torch.Tensor, size: int) -> float:
    """10-way top-1 of ``tower`` on uint8 images ``x`` resized to ``size``."""
    tower.eval()
    correct = 0
    for i in range(0, len(x), 256):
        emb = F.normalize(tower(prep(x[i : i + 256].float() / 255.0, size)), dim=-1)
        correct += (emb @ class_emb.t()).argmax(1).eq(y[i : i + 256]).sum().item()
    tower.train()
    return correct / len(x)


def main(argv: list[str] | None = None) -> None:
    """Train and save ``weights/judge-scratch.safetensors`` (or ``--name``/``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/vlp"))
    ap.add_argument("--out", type=Path, default=Path("weights/judge-scratch.safetensors"))
    ap.add_argument("--name", default="judge-scratch", help="model name stored in the metadata")
    ap.add_argument("--tower", choices=sorted(TOWERS), default="SmallResNet")
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.4)
    ap.add_argument("--store-size", type=int, default=72)
    ap.add_argument("--train-size", type=int, default=56)
    ap.add_argument("--test-size", type=int, default=64)
    ap.add_argument("--widths", type=str, default="32,64,128,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every", type=int, default=3, help="epochs between val checks (monitoring only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    wnids = list(read_class_file(IMAGENETTE_CLASSES_FILE))
    names = list(read_class_file(IMAGENETTE_CLASSES_FILE).values())
    size = args.store_size
    xtr, ytr = cached_uint8(args.data / "train", size, args.cache_dir / f"nette-train-{size}.pt", wnids)
    xva, yva = cached_uint8(args.data / "val", size, args.cache_dir / f"nette-val-{size}.pt", wnids)
    text = shared_minilm()
    caption_emb = text([t.format(c) for c in names for t in TRAIN_TEMPLATES]).view(len(names), len(TRAIN_TEMPLATES), -1)
    eval_emb = text([t.format(c) for c in names for t in ZERO_SHOT_TEMPLATES]).view(len(names), -1, 384)
    eval_emb = F.normalize(eval_emb.mean(1), dim=-1)

    widths = [int(w) for w in args.widths.split(",")]
    tower = TOWERS[args.tower](widths).to(memory_format=torch.channels_last)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    decay = [p for n, p in tower.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in tower.named_parameters() if p.ndim <= 1] + [log_scale]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, momentum=0.9, nesterov=True,
    )
    steps_per_epoch = len(xtr) // args.batch
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.25)
    t0, c0 = time.time(), time.process_time()
    step = 0
    history = []
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xtr))
        run_loss = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch : (i + 1) * args.batch]
            x = prep(augment(xtr[idx], args.train_size), args.train_size)
            tmpl = torch.randint(len(TRAIN_TEMPLATES), (len(names),))
            cls_emb = caption_emb[torch.arange(len(names)), tmpl]
            emb = F.normalize(tower(x), dim=-1)
            logits = log_scale.exp().clamp(max=100.0) * emb @ cls_emb.t()
            loss = F.cross_entropy(logits, ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            run_loss += loss.item()
        msg = {"epoch": epoch + 1, "loss": run_loss / steps_per_epoch, "scale": log_scale.exp().item(),
               "wall_s": round(time.time() - t0), "cpu_s": round(time.process_time() - c0)}
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs:
            msg["val_top1"] = evaluate(tower, xva, yva, eval_emb, args.test_size)
        history.append(msg)
        print(json.dumps(msg), flush=True)
    final = {f"val_top1@{s}": evaluate(tower, xva, yva, eval_emb, s) for s in (56, 64, 72)}
    print(json.dumps(final), flush=True)

    from safetensors.torch import save_file

    tower = tower.to(memory_format=torch.contiguous_format)
    meta = {
        "architecture": json.dumps({"model": args.name, "tower": args.tower, "widths": widths, "out_dim": 384,
                                    "image_size": args.test_size, "logit_scale": log_scale.exp().item(),
                                    "text_tower": "all-MiniLM-L6-v2 (frozen)", "init": "random (from scratch)"}),
        "training_data": "imagenette train (9469 images, 10 classes), centre square at "
                         f"{args.store_size}px, random-resized crops at {args.train_size}px + flips",
        "steps": str(total),
        "training": json.dumps({**vars(args), "data": str(args.data), "cache_dir": str(args.cache_dir),
                                "out": str(args.out), "cpu_s": round(time.process_time() - c0),
                                "wall_s": round(time.time() - t0), "history": history, "final": final}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(args.out), metadata=meta)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
