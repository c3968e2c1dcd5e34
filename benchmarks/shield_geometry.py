"""Does the shield depend on the image borders the decoder sees?

Decodes the same Imagenette val images in process two ways, with one weights file: as 224x224 crops
straight into the encoder (how the shield stages trained without ``--codec-pad``), and padded to a
multiple of 64 exactly as ``psic encode`` pads them (``codec.pad_to_multiple``), cropped back after
decoding.  Prints the target's 10-way top-1 on each view for both, and writes
``results/shield-geometry.json``.

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
    from psic_cli.keys import condition_bits, read_key, shield_condition
    from psic_cli.models import build_model, load_config
    from psic_cli.training.shield import _frozen_latents
    from psic_cli.training.train import load_matching
    from psic_cli.vlp import load_vlp
    from psic_cli.vlp.data_utils import list_labelled_folder
    from psic_cli.vlp.text import read_class_file

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("psic-sh")
    key = read_key(ROOT / "weights/shipped.key")
    conds = {"full": torch.tensor(condition_bits(key, cfg.cond_dim, "full")),
             "shielded": torch.zeros(cfg.cond_dim),
             "strong": torch.tensor(shield_condition(cfg.cond_dim, "strong"))}
    files, labels = list_labelled_folder(args.val, args.images)
    mapping = read_class_file(ROOT / "psic_cli/vlp/data/imagenette_classes.tsv")
    wnids = list(mapping)
    vlp = load_vlp("psic-vlp-mini")
    emb = vlp.class_embeddings([mapping[w] for w in wnids])
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((224, 224))).copy())
                     for f in files]).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([wnids.index(lab) for lab in labels])
    res: dict = {"images": len(files), "quality": args.quality, "weights": {}}
    lines = ["| weights | input | " + " | ".join(conds) + " |", "|---|---|" + "---|" * len(conds)]
    for w in args.weights:
        model = build_model(cfg)
        load_matching(model, w)
        model.eval()
        res["weights"][w] = {}
        for name, inp in (("224x224 as trained", x), ("padded as psic encode does", pad_to_multiple(x, 64))):
            q = torch.full((len(x),), args.quality - 1)
            with torch.no_grad():
                lat = _frozen_latents(model, inp, q)
                accs = {}
                for v, c in conds.items():
                    xh = model.synthesize(lat, c.expand(len(x), -1), q).clamp(0, 1)[..., :224, :224]
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
