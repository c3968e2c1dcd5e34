"""How far does the strong shield transfer to the models it never trained against?  Compare weights files.

Decodes the images ``python -m psic_lab.evaluation.attacks --limit 150`` evaluates (the same seeded draw
from Imagenette val) in process, with each weights file, at one quality: the full view (shipped key) and
the ``strong`` shielded view, rounded to 8 bits as the file path writes them.  Reports each model's
10-way zero-shot top-1 on both views and the strong view's PSNR against the full view and the original, and
its PSNR cost (how much lower its PSNR against the original is than the full view's: the issue's bound).
Use it to compare shield stages before running the full evaluation; writes ``results/strong-transfer.json``.

    python benchmarks/strong_transfer.py --weights weights/psic-sh.safetensors runs/x/psic-sh.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", default=["weights/psic-sh.safetensors"])
    ap.add_argument("--val", type=Path, default=Path("../shared/data/imagenette/val"))
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--quality", type=int, default=2)
    ap.add_argument("--vlps", nargs="+", default=["psic-vlp-mini", "judge-scratch", "effnet-lite2"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/strong-transfer.json"))
    args = ap.parse_args(argv)
    from PIL import Image
    from safetensors import safe_open

    from psic_cli._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from psic_cli.codec import pad_to_multiple
    from psic_cli.container import FORMAT_VERSION, PAD_MULTIPLE
    from psic_cli.keys import read_key
    from psic_cli.models import build_model, load_config
    from psic_cli.views import View, condition
    from psic_lab.evaluation.attacks import attack_subset, top1
    from psic_lab.evaluation.metrics import psnr
    from psic_lab.training.train import load_matching
    from psic_lab.vlp import load_vlp
    from psic_lab.vlp.text import read_class_file

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("psic-sh")
    key = read_key(ROOT / "weights/shipped.key")
    conds = {v: torch.tensor(condition(v, key, cfg.cond_dim)) for v in (View.FULL, View.STRONG)}
    files, labels, ev, _ = attack_subset(args.val, args.images, 32)
    mapping = read_class_file(ROOT / "psic_lab/vlp/data/imagenette_classes.tsv")
    wnids = list(mapping)
    originals = [np.asarray(Image.open(files[i]).convert("RGB")) for i in ev]
    y = np.array([wnids.index(labels[i]) for i in ev])
    vlps = {s: load_vlp(s) for s in args.vlps}
    emb = {s: v.class_embeddings([mapping[w] for w in wnids]) for s, v in vlps.items()}
    res: dict = {"images": len(originals), "quality": args.quality, "weights": {},
                 "original": {s: top1(v, emb[s], originals, y) for s, v in vlps.items()}}
    lines = ["| weights (steps) | view | " + " | ".join(vlps)
             + " | PSNR vs full | PSNR vs original | PSNR cost (dB) |",
             "|---|---|" + "---|" * (len(vlps) + 3)]
    for w in args.weights:
        with safe_open(str(w), framework="pt") as f:
            steps = f.metadata().get("steps", "?")
        model = build_model(cfg)
        load_matching(model, w)
        model.eval()
        views: dict[str, list[np.ndarray]] = {v: [] for v in conds}
        q = torch.tensor([args.quality - 1])
        with torch.no_grad():
            for img in originals:
                x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
                hh, ww = x.shape[-2:]
                lat = model.quantized_latents(pad_to_multiple(x, PAD_MULTIPLE[FORMAT_VERSION]), q)
                for v, c in conds.items():
                    xh = model.finish(model.synthesize(lat, c[None], q)[..., :hh, :ww], c[None])[0]
                    views[v].append((xh.permute(1, 2, 0) * 255).round().byte().numpy())
        entry: dict = {"steps": steps}
        for v, imgs in views.items():
            entry[v] = {"top1": {s: top1(vl, emb[s], imgs, y) for s, vl in vlps.items()},
                        "psnr_vs_full": None if v == View.FULL else float(np.mean(
                            [psnr(a, b) for a, b in zip(views[View.FULL], imgs, strict=True)])),
                        "psnr_vs_original": float(np.mean([psnr(a, b) for a, b in zip(originals, imgs, strict=True)]))}
            e = entry[v]
            # the cost the issue bounds: how much lower the view's PSNR is than the full view's (both vs original)
            e["psnr_cost_db"] = None if v == View.FULL else (entry[View.FULL]["psnr_vs_original"]
                                                           - e["psnr_vs_original"])
            vs_full = "-" if e["psnr_vs_full"] is None else f"{e['psnr_vs_full']:.2f}"
            cost = "-" if e["psnr_cost_db"] is None else f"{e['psnr_cost_db']:.2f}"
            lines.append(f"| {w} ({steps}) | {v} | " + " | ".join(f"{a:.1%}" for a in e["top1"].values())
                         + f" | {vs_full} | {e['psnr_vs_original']:.2f} | {cost} |")
        res["weights"][str(w)] = entry
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"10-way zero-shot top-1 on {len(originals)} Imagenette val images (the attack subset), quality "
          f"{args.quality}; originals: " + ", ".join(f"{s} {a:.1%}" for s, a in res["original"].items()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
