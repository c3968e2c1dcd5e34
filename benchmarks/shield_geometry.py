"""Does the shield depend on the image's size and the padding the decoder sees?

Decodes the same Imagenette val images in process, with one weights file, at several geometries:
224x224 as ``psic encode`` format 2 codes it (padded to a multiple of 16: no padding, exactly as the
shield stages train), the same padded to 64 as format 1 did (224 becomes 256), and resized to sizes
training never saw (200x200, padded to 208; 288x288 and 320x240, which the target scales down).  Each
image is padded with ``codec.pad_to_multiple`` and cropped back after decoding.  Prints the target's
10-way top-1 on each view, and writes ``results/shield-geometry.json``.

    python benchmarks/shield_geometry.py --weights weights/psic-sh.safetensors --images 96 --quality 2
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
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--quality", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/shield-geometry.json"))
    args = ap.parse_args(argv)
    from PIL import Image

    from psic_cli.codec import pad_to_multiple
    from psic_cli.keys import read_key
    from psic_cli.models import build_model, load_config
    from psic_cli.views import View, condition
    from psic_lab.training.train import load_matching
    from psic_lab.vlp import load_vlp
    from psic_lab.vlp.data_utils import list_labelled_folder
    from psic_lab.vlp.text import read_class_file

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("psic-sh")
    key = read_key(ROOT / "weights/shipped.key")
    conds = {v: torch.tensor(condition(v, key, cfg.cond_dim)) for v in (View.FULL, View.SHIELDED, View.STRONG)}
    files, labels = list_labelled_folder(args.val, args.images)
    mapping = read_class_file(ROOT / "psic_lab/vlp/data/imagenette_classes.tsv")
    wnids = list(mapping)
    vlp = load_vlp("psic-vlp-mini")
    emb = vlp.class_embeddings([mapping[w] for w in wnids])
    geometries = [("224x224, format 2 (pad to 16)", (224, 224), 16), ("224x224, format 1 (pad to 64)", (224, 224), 64),
                  ("200x200, format 2", (200, 200), 16), ("288x288, format 2", (288, 288), 16),
                  ("320x240, format 2", (320, 240), 16)]
    images = [Image.open(f).convert("RGB") for f in files]

    def batch(size: tuple[int, int]) -> torch.Tensor:
        arrs = [np.asarray(im if im.size == size else im.resize(size, Image.BICUBIC)).copy() for im in images]
        return torch.stack([torch.from_numpy(a) for a in arrs]).permute(0, 3, 1, 2).float() / 255

    y = torch.tensor([wnids.index(lab) for lab in labels])
    res: dict = {"images": len(files), "quality": args.quality, "weights": {}}
    lines = ["| weights | geometry | original | " + " | ".join(conds) + " |", "|---|---|---|" + "---|" * len(conds)]
    for w in args.weights:
        model = build_model(cfg)
        load_matching(model, w)
        model.eval()
        res["weights"][w] = {}
        for name, size, multiple in geometries:
            x = batch(size)
            hh, ww = x.shape[-2:]
            q = torch.full((len(x),), args.quality - 1)
            with torch.no_grad():
                lat = model.quantized_latents(pad_to_multiple(x, multiple), q)
                accs = {"original": float(((vlp.encode_image(x) @ emb.t()).argmax(1) == y).float().mean())}
                for v, c in conds.items():
                    xh = model.synthesize(lat, c.expand(len(x), -1), q).clamp(0, 1)[..., :hh, :ww]
                    xh = (xh * 255).round() / 255
                    accs[v] = float(((vlp.encode_image(xh) @ emb.t()).argmax(1) == y).float().mean())
            res["weights"][w][name] = accs
            lines.append(f"| {w} | {name} | " + " | ".join(f"{a:.1%}" for a in accs.values()) + " |")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"target top-1 (10-way) on {len(files)} Imagenette val images, quality {args.quality}, in process:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
