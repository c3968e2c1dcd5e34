"""Side-by-side pictures for the README: original and every view psic decodes from one bitstream.

    python scripts/side_by_side.py examples/kodim23.png examples/kodim15.png --quality 2

Writes ``docs/side-by-side.png`` (a grid: one row per image; original, then each trained view, each labelled
with its PSNR against the original and what the target VLP reads) through the real file path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--model", default="psic-sh")
    ap.add_argument("--quality", type=int, default=2)
    ap.add_argument("--key", type=Path, default=ROOT / "weights/shipped.key")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/side-by-side.png")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from psic_cli import codec
    from psic_cli.imageio import load_image
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model
    from psic_lab.evaluation.metrics import psnr
    from psic_lab.evaluation.privacy import available_views, decode_view
    from psic_lab.vlp import load_vlp
    from psic_lab.vlp.text import imagenet_classes

    key = read_key(args.key)
    views = available_views(load_model(args.model).info.metadata)
    vlp = load_vlp("psic-vlp-mini")
    _, names = imagenet_classes()
    text = vlp.class_embeddings(list(names))

    def reads(px: np.ndarray) -> str:
        with torch.no_grad():
            x = torch.from_numpy(px).permute(2, 0, 1)[None].float() / 255
            p = (vlp.logit_scale * vlp.encode_image(x) @ text.t()).softmax(-1)[0]
        i = int(p.argmax())
        return f"{names[i].split(',')[0][:22]} {p[i]:.0%}"

    cols = ["original", *views]
    fig, axes = plt.subplots(len(args.images), len(cols), figsize=(3.3 * len(cols), 2.6 * len(args.images)),
                             squeeze=False)
    for r, path in enumerate(args.images):
        img = load_image(path.read_bytes(), str(path)).pixels
        data = codec.encode_pixels(img, args.model, args.quality)
        bpp = len(data) * 8 / (img.shape[0] * img.shape[1])
        for c, v in enumerate(cols):
            if v == "original":
                px, label = img, f"original\n{path.name}, VLP: {reads(img)}"
            else:
                px = decode_view(data, key, v)
                label = f"{v} ({bpp:.2f} bpp, {psnr(img, px):.2f} dB)\nVLP: {reads(px)}"
            axes[r, c].imshow(px)
            axes[r, c].set_title(label, fontsize=8)
            axes[r, c].axis("off")
    fig.suptitle(f"{args.model} quality {args.quality}: one bitstream, every view (VLP = psic-vlp-mini's "
                 f"top ImageNet class)", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
