"""What a residual at the indexer's scale can do at best (not a test): a white-box, per-image optimum.

    python benchmarks/residual_bound.py --rms 2 4 8 --thumbs 224 448 --size 640 --images 10 --steps 60

For each labelled image (Imagenette val, one per class in turn, resized to ``--size`` on the long side as a
3:2 photo), each RMS budget (8-bit levels) and each thumbnail side, a residual of ``thumb x thumb`` pixels,
stretched bicubically to the image and scaled to exactly that RMS, is optimised *for that image* by Adam
against the target (``psic-vlp-mini``), through a random indexer preprocessing per step (``IndexerSampler``:
short224/336/448, squash224, tiles), with a margin loss on the true caption among the 10 classes.  The table
is the target's 10-way top-1 on the result under short224, squash224 and short448 (the tower at 448), with
the original's for reference.  A decoder-side residual made by a network (``IndexerResidual``) sees no labels
and one forward pass per image, so these numbers are what it could reach at most, not what it reaches.
Writes ``--out`` (JSON) and the table in ``docs/shield-design.md``.  The base image is the original, not a
decoded view: the bound is about the shield.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PREPROC = ("short224", "squash224", "short448")
DOC = Path("docs/shield-design.md")
START, END = "<!-- residual-bound:start -->", "<!-- residual-bound:end -->"


def render_md(res: dict) -> str:
    """The table of ``res`` (this script's JSON) as Markdown, between the page's markers."""
    w, h = res["size"]
    s = res["summary"]
    lines = [START, "", "| residual | PSNR to the image (dB) | short224 | squash224 | short448 |",
             "|---|---|---|---|---|",
             "| none (the image) | n/a | " + " | ".join(f"{s['original'][p]:.0%}" for p in PREPROC) + " |"]
    for key, row in s.items():
        if key == "original":
            continue
        thumb, rms = key.removeprefix("thumb").split("_rms")
        lines.append(f"| {thumb}x{thumb}, RMS {rms} levels | {row['psnr']:.1f} | "
                     + " | ".join(f"{row[p]:.0%}" for p in PREPROC) + " |")
    n = len(res["rows"])
    lines += ["", f"Target 10-way top-1 on {n} labelled Imagenette val images at {w}x{h}, each residual optimised for "
              f"its image ({res['steps']} Adam steps through random indexer preprocessings); "
              f"`results/residual-bound.json`, made by `{res['command']}`.", "", END]
    return "\n".join(lines)


def pasted(page: Path) -> str:
    """What lies between the markers in ``page`` (markers included)."""
    text = page.read_text()
    return text[text.index(START): text.index(END) + len(END)]


def render(out: Path, page: Path) -> None:
    """Replace the table between the markers of ``page`` with the one rendered from ``out``."""
    text = page.read_text()
    block = render_md(json.loads(out.read_text()))
    page.write_text(text[: text.index(START)] + block + text[text.index(END) + len(END):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val", type=Path, default=Path("../shared/data/imagenette/val"), help="<wnid>/ folders")
    ap.add_argument("--rms", type=float, nargs="+", default=[2.0, 4.0, 8.0], help="residual RMS, 8-bit levels")
    ap.add_argument("--thumbs", type=int, nargs="+", default=[224, 448], help="residual resolutions (pixels a side)")
    ap.add_argument("--size", type=int, default=640, help="long side of the 3:2 test images")
    ap.add_argument("--images", type=int, default=10, help="labelled images (one per class in turn)")
    ap.add_argument("--steps", type=int, default=60, help="Adam steps per image")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="random seed (start, preprocessing draws)")
    ap.add_argument("--out", type=Path, default=Path("results/residual-bound.json"), help="JSON to write")
    ap.add_argument("--render-only", action="store_true", help=f"only re-render the table in {DOC} from --out")
    args = ap.parse_args()
    if args.render_only:
        render(args.out, DOC)
        return 0

    from PIL import Image

    from psic_lab.training.shield import imagenet_classes
    from psic_lab.vlp import load_vlp
    from psic_lab.vlp.preprocess import ALL_VARIANTS, IndexerSampler, embed_native

    torch.set_num_threads(args.threads)
    t0 = time.time()
    vlp = load_vlp("psic-vlp-mini")
    for p in vlp.parameters():
        p.requires_grad_(False)
    names, wnid_index = imagenet_classes()
    wnids = sorted(d.name for d in args.val.iterdir() if d.is_dir())
    text = vlp.class_embeddings([names[wnid_index[w]] for w in wnids])
    sampler = IndexerSampler()
    files = []
    for i in range(args.images):
        k = i % len(wnids)
        files.append((k, sorted((args.val / wnids[k]).iterdir())[i // len(wnids)]))

    def read(z: torch.Tensor) -> torch.Tensor:
        return (z @ text.t()).argmax(1)

    def top1(x: torch.Tensor, k: int) -> dict[str, int]:
        out = {}
        for name in PREPROC:
            t = ALL_VARIANTS[name](x)
            z = embed_native(vlp, t) if t.shape[-1] != vlp.image_size else vlp.encode_image(t)
            out[name] = int(read(z).item() == k)
        return out

    w, h = args.size, round(args.size * 2 / 3)
    rows = []
    for k, f in files:
        img = Image.open(f).convert("RGB").resize((w, h), Image.BICUBIC)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            row = {"file": f.name, "class": wnids[k], "original": top1(x, k)}
        for thumb in args.thumbs:
            for rms in args.rms:
                gen = torch.Generator().manual_seed(args.seed)
                d = torch.randn(1, 3, thumb, thumb, generator=gen).requires_grad_(True)
                opt = torch.optim.Adam([d], lr=0.01)

                def view(d: torch.Tensor, rms: float = rms, x: torch.Tensor = x) -> torch.Tensor:
                    up = F.interpolate(d, size=(h, w), mode="bicubic", align_corners=False)
                    return (x + up * (rms / 255) / up.pow(2).mean().sqrt().clamp_min(1e-8)).clamp(0, 1)

                for _ in range(args.steps):
                    logits = vlp.logit_scale * vlp.encode_image(sampler(view(d), gen)) @ text.t()
                    other = logits.masked_fill(F.one_hot(torch.tensor(k), len(wnids)).bool(), -1e9)
                    loss = (logits[:, k] - other.max(1).values).clamp_min(-5).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    v = view(d)
                    row[f"thumb{thumb}_rms{rms:g}"] = {**top1(v, k),
                                                      "psnr": float(-10 * torch.log10(((v - x) ** 2).mean()))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"original": {p: float(np.mean([r["original"][p] for r in rows])) for p in PREPROC}}
    for thumb in args.thumbs:
        for rms in args.rms:
            key = f"thumb{thumb}_rms{rms:g}"
            summary[key] = {p: float(np.mean([r[key][p] for r in rows])) for p in (*PREPROC, "psnr")}
    res = {"command": "python benchmarks/residual_bound.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "render_only")),
        "size": [w, h], "steps": args.steps, "seconds": round(time.time() - t0, 1), "summary": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    render(args.out, DOC)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
