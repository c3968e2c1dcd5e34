"""Shield weights side by side on their keyless views: what the target reads, and the lattice (not a test).

    python benchmarks/shield_lattice.py --weights A.safetensors B.safetensors --out results/shield-lattice.json
    python benchmarks/shield_lattice.py --render-only --out results/shield-lattice.json

For each weights file (a model with the keyless ``--views`` trained: `shielded` by default, `strong` where asked;
unlike ``benchmarks/shield_geometry.py`` no judges and no strong view needed), the same Imagenette val images as 3:2
photos of each ``--sizes`` long side (``shield_geometry.labelled_image``), coded at ``--quality`` through the
runtime API and decoded full (key) and each keyless view (no key). Reported per size: the target's 10-way top-1
after the standard preprocessing (shorter side to 224, centre crop) on the original, full and keyless views; the
full view's PSNR and each keyless view's gap to it; the grid score of (view - full) (1 = no peak at the decoder's
16- and 8-pixel lattice harmonics); the RMS of its part that repeats every 16 pixels
(``psic_lab.training.losses.lattice_energy``, 8-bit levels), the term ``--grid-weight`` trains against; and search
by image: how often the target's embedding of the view ranks its own original first among the run's originals.

Writes ``--out`` (JSON) and ``--docs`` (markdown rendered from it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from psic_cli.views import SHIELD_VIEWS, View  # noqa: E402 (after the path)


@contextmanager
def _installed(weights: Path) -> Iterator[tuple[str, object]]:
    """``weights`` installed as a runtime model for the block: its model id and the loaded model."""
    from psic_cli.zoo import load_model
    from psic_lab.evaluation.weights import install_weights

    with tempfile.TemporaryDirectory() as tmp:
        model_id = install_weights(weights, Path(tmp))
        load_model.cache_clear()  # the weights files share a model id: load this one's
        yield model_id, load_model(model_id)


def measure(weights: Path, args: argparse.Namespace, idx, files: list[tuple[Path, int]]) -> dict:
    """One weights file's records at every size: per keyless view in ``args.views``, its top-1, PSNR gap, grid
    score, lattice RMS and search-by-image R@1 (its own original ranked first among the originals of the run)."""
    from shield_geometry import _r1, _tensor, labelled_image

    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_lab.evaluation.metrics import grid_score, psnr
    from psic_lab.training.losses import lattice_energy

    key = read_key(args.key)
    views = [View(v) for v in args.views]
    out: dict = {"weights": str(weights), "sizes": {}}
    with _installed(weights) as (model_id, lm):
        out.update(model=model_id, weights_sha256=lm.weights_sha256, steps=lm.info.metadata.get("steps"))
        names = ["original", str(View.FULL)] + [str(v) for v in views]
        for size in args.sizes:
            prepared, psnr_full = [], []
            per_view: dict[str, dict[str, list]] = {str(v): {"psnr": [], "grid": [], "lattice_rms": []}
                                                   for v in views}
            for path, _ in files:
                px = labelled_image(path, size)
                data = codec.encode_pixels(np.ascontiguousarray(px), model_id, args.quality)
                full = codec.decode(data, key, View.FULL).pixels
                keyless = [codec.decode(data, None, v).pixels for v in views]
                prepared += [idx.prepare(v, extras=False) for v in (px, full, *keyless)]
                psnr_full.append(psnr(px, full))
                for v, pix in zip(views, keyless, strict=True):
                    q = per_view[str(v)]
                    q["psnr"].append(psnr(px, pix))
                    q["grid"].append(grid_score(pix, full))
                    q["lattice_rms"].append(float(lattice_energy(_tensor(pix) - _tensor(full)).sqrt()) * 255)
            read = idx.read(prepared)
            labels = [label for _, label in files]
            n = len(names)
            top1 = {name: float(np.mean([read[n * i + k]["target/short224"][0][0] == y
                                         for i, y in enumerate(labels)]))
                    for k, name in enumerate(names)}
            gallery = torch.stack([read[n * i]["emb/target"] for i in range(len(files))])
            rec = {"images": len(files), "target_top1": top1, "psnr_full": float(np.nanmean(psnr_full)), "views": {}}
            for k, name in enumerate(names[2:], start=2):
                queries = torch.stack([read[n * i + k]["emb/target"] for i in range(len(files))])
                q = {m: float(np.nanmean(v)) for m, v in per_view[name].items()}
                rec["views"][name] = {**q, "gap_db": q["psnr"] - rec["psnr_full"], "r1": _r1(queries, gallery)}
            out["sizes"][str(size)] = rec
            print(weights.name, size, json.dumps(rec), file=sys.stderr, flush=True)
    return out


def reference_psnr(weights: Path, args: argparse.Namespace, files: list[tuple[Path, int]]) -> dict:
    """The full view's mean PSNR per size from ``weights`` (the decoder the shield stages started from), on the
    same images and quality: what the key holder would get without the shield training."""
    from shield_geometry import labelled_image

    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_lab.evaluation.metrics import psnr

    key = read_key(args.key)
    out: dict = {"weights": str(weights), "psnr_full": {}}
    with _installed(weights) as (model_id, lm):
        out["weights_sha256"] = lm.weights_sha256
        for size in args.sizes:
            values = []
            for path, _ in files:
                px = np.ascontiguousarray(labelled_image(path, size))
                values.append(psnr(px, codec.decode(codec.encode_pixels(px, model_id, args.quality), key,
                                                    View.FULL).pixels))
            out["psnr_full"][str(size)] = float(np.nanmean(values))
    return out


def _view_rows(s: dict) -> dict[str, dict]:
    """Per keyless view of one size record: top-1, gap, grid, lattice RMS and R@1 (None where a record from
    before the ``views`` layout, which held the shielded view only, has no R@1)."""
    if "views" in s:
        return {v: {**r, "top1": s["target_top1"][v]} for v, r in s["views"].items()}
    return {str(View.SHIELDED): {"top1": s["target_top1"][View.SHIELDED], "gap_db": s["gap_db"], "grid": s["grid"],
                                 "lattice_rms": s["lattice_rms"], "r1": None}}


def render(res: dict) -> str:
    lines = ["# Shield weights side by side: the keyless views and their lattice", "",
             f"Generated from `{res['out']}` (measured by `{res['command']}` at revision "
             f"`{(res.get('git_revision') or '?')[:10]}`); do not edit by hand.", "",
             f"Imagenette val images as 3:2 photos, quality {res['quality']}, target `psic-vlp-mini` after the "
             "standard preprocessing (shorter side to 224, centre crop), 10-way top-1 (chance 10%). Gap: the "
             "view's PSNR minus the full view's. Grid: the grid score of (view - full), 1 = no peak at the lattice "
             "harmonics. Lattice RMS: the part of (view - full) that repeats every 16 pixels, in 8-bit levels. "
             "R@1: search by image, the view's own original ranked first by the target's embedding among the "
             "run's originals of that size (one gallery entry per image; - where not measured). vs ref: the full "
             "view's PSNR minus that of the reference decoder's full view"
             + (f" (`{Path(res['reference']['weights']).name}`, sha256 `{res['reference']['weights_sha256'][:12]}`)"
                if "reference" in res else "") + ", on the same images (- where not measured).", "",
             "| weights | steps | long side | images | top-1: original | full | view | top-1 | PSNR full | vs ref (dB) "
             "| gap (dB) | grid | lattice RMS | R@1 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ref = res.get("reference", {}).get("psnr_full", {})
    for r in res["results"]:
        for size, s in r["sizes"].items():
            t = s["target_top1"]
            for view, v in _view_rows(s).items():
                r1 = "-" if v["r1"] is None else f"{v['r1']:.0%}"
                vs_ref = f"{s['psnr_full'] - ref[size]:+.2f}" if size in ref else "-"
                lines.append(f"| `{Path(r['weights']).name}` | {r['steps']} | {size} | {s['images']} | "
                             f"{t['original']:.0%} | {t[View.FULL]:.0%} | {view} | {v['top1']:.0%} | "
                             f"{s['psnr_full']:.2f} | {vs_ref} | {v['gap_db']:+.2f} | {v['grid']:.1f} | "
                             f"{v['lattice_rms']:.2f} | {r1} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, nargs="+", default=[], help="weights files with a shielded view")
    ap.add_argument("--reference", type=Path, default=None,
                    help="weights whose full view the table compares each full view with (the stages' start)")
    ap.add_argument("--key", type=Path, default=ROOT / "weights/shipped.key", help="key of the full view")
    ap.add_argument("--val", type=Path, default=ROOT.parent / "shared/data/imagenette/val",
                    help="Imagenette val (<wnid>/ folders)")
    ap.add_argument("--images", type=int, default=40, help="images, taken round-robin over the classes")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512], help="long sides in pixels")
    ap.add_argument("--quality", type=int, default=2, help="quality level to code at")
    ap.add_argument("--views", nargs="+", default=[str(View.SHIELDED)],
                    choices=[str(v) for v in SHIELD_VIEWS], help="keyless views to measure")
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
        if args.reference is not None:
            res["reference"] = reference_psnr(args.reference, args, files)
        res["seconds"] = round(time.time() - t0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    args.docs.write_text(render(json.loads(args.out.read_text())))
    print(f"wrote {args.docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
