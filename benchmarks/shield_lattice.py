"""Shield weights side by side on the keyless `shielded` view: what the target reads, and the lattice (not a test).

    python benchmarks/shield_lattice.py --weights A.safetensors B.safetensors --out results/shield-lattice.json
    python benchmarks/shield_lattice.py --render-only --out results/shield-lattice.json

For each weights file (a model with a trained `shielded` view; no `strong` view needed, unlike
``benchmarks/shield_geometry.py``), the same Imagenette val images as 3:2 photos of each ``--sizes`` long side
(``shield_geometry.labelled_image``), coded at ``--quality`` through the runtime API and decoded full (key)
and shielded (no key). Reported per size: the target's 10-way top-1 after the standard preprocessing (shorter
side to 224, centre crop) on the original, full and shielded views; the PSNR of both views and the shielded
view's gap to the full one; the grid score of (shielded - full) (1 = no peak at the decoder's 16- and 8-pixel
lattice harmonics); and the RMS of its part that repeats every 16 pixels
(``psic_lab.training.losses.lattice_energy``, 8-bit levels), the term ``--grid-weight`` trains against.

Writes ``--out`` (JSON) and ``--docs`` (markdown rendered from it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from psic_cli.views import View  # noqa: E402 (after the path)


def measure(weights: Path, args: argparse.Namespace, idx, files: list[tuple[Path, int]]) -> dict:
    """One weights file's records at every size."""
    from shield_geometry import _tensor, labelled_image

    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model
    from psic_lab.evaluation.metrics import grid_score, psnr
    from psic_lab.evaluation.weights import install_weights
    from psic_lab.training.losses import lattice_energy

    key = read_key(args.key)
    out: dict = {"weights": str(weights), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_id = install_weights(weights, Path(tmp))
        load_model.cache_clear()  # the weights files share a model id: load this one's
        lm = load_model(model_id)
        out.update(model=model_id, weights_sha256=lm.weights_sha256, steps=lm.info.metadata.get("steps"))
        for size in args.sizes:
            prepared, quality = [], {"psnr_full": [], "psnr_shielded": [], "grid": [], "lattice_rms": []}
            for path, _ in files:
                px = labelled_image(path, size)
                data = codec.encode_pixels(np.ascontiguousarray(px), model_id, args.quality)
                full = codec.decode(data, key, View.FULL).pixels
                shielded = codec.decode(data, None, View.SHIELDED).pixels
                prepared += [idx.prepare(v, extras=False) for v in (px, full, shielded)]
                quality["psnr_full"].append(psnr(px, full))
                quality["psnr_shielded"].append(psnr(px, shielded))
                quality["grid"].append(grid_score(shielded, full))
                diff = _tensor(shielded) - _tensor(full)
                quality["lattice_rms"].append(float(lattice_energy(diff).sqrt()) * 255)
            read = idx.read(prepared)
            labels = [label for _, label in files]
            top1 = {}
            for k, name in enumerate(("original", str(View.FULL), str(View.SHIELDED))):
                hits = [read[3 * i + k]["target/short224"][0][0] == y for i, y in enumerate(labels)]
                top1[name] = float(np.mean(hits))
            q = {k: float(np.nanmean(v)) for k, v in quality.items()}
            q["gap_db"] = q["psnr_shielded"] - q["psnr_full"]
            out["sizes"][str(size)] = {"images": len(files), "target_top1": top1, **q}
            print(weights.name, size, json.dumps(out["sizes"][str(size)]), file=sys.stderr, flush=True)
    return out


def render(res: dict) -> str:
    lines = ["# Shield weights side by side: the shielded view and its lattice", "",
             f"Generated from `{res['out']}` (measured by `{res['command']}` at revision "
             f"`{(res.get('git_revision') or '?')[:10]}`); do not edit by hand.", "",
             f"Imagenette val images as 3:2 photos, quality {res['quality']}, target `psic-vlp-mini` after the "
             "standard preprocessing (shorter side to 224, centre crop), 10-way top-1 (chance 10%). Grid: the "
             "grid score of (shielded - full), 1 = no peak at the lattice harmonics. Lattice RMS: the part of "
             "(shielded - full) that repeats every 16 pixels, in 8-bit levels.", "",
             "| weights | steps | long side | images | top-1: original | full | shielded | PSNR full | gap (dB) "
             "| grid | lattice RMS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        for size, s in r["sizes"].items():
            t = s["target_top1"]
            lines.append(f"| `{Path(r['weights']).name}` | {r['steps']} | {size} | {s['images']} | "
                         f"{t['original']:.0%} | {t[View.FULL]:.0%} | {t[View.SHIELDED]:.0%} | {s['psnr_full']:.2f} | "
                         f"{s['gap_db']:+.2f} | {s['grid']:.1f} | {s['lattice_rms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, nargs="+", default=[], help="weights files with a shielded view")
    ap.add_argument("--key", type=Path, default=ROOT / "weights/shipped.key", help="key of the full view")
    ap.add_argument("--val", type=Path, default=ROOT.parent / "shared/data/imagenette/val",
                    help="Imagenette val (<wnid>/ folders)")
    ap.add_argument("--images", type=int, default=40, help="images, taken round-robin over the classes")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512], help="long sides in pixels")
    ap.add_argument("--quality", type=int, default=2, help="quality level to code at")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, default=ROOT / "results/shield-lattice.json", help="JSON to write")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs/shield-lattice.md", help="markdown to write")
    ap.add_argument("--render-only", action="store_true", help="only render --docs from --out")
    args = ap.parse_args(argv)
    if not args.render_only:
        torch.set_num_threads(args.threads)
        from shield_geometry import Indexers

        wnids = sorted(p.name for p in args.val.iterdir() if p.is_dir())
        per_class = [sorted(p for p in (args.val / w).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
                     for w in wnids]
        idx = Indexers(judges=())
        files = [(per_class[i % len(wnids)][i // len(wnids)], idx.wnids.index(wnids[i % len(wnids)]))
                 for i in range(args.images)]
        t0 = time.time()
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        res = {"command": "python benchmarks/shield_lattice.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "git_revision": git.stdout.strip() or None, "quality": args.quality,
               "out": str(args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out),
               "results": [measure(w, args, idx, files) for w in args.weights]}
        res["seconds"] = round(time.time() - t0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    args.docs.write_text(render(json.loads(args.out.read_text())))
    print(f"wrote {args.docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
