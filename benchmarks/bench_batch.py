"""Throughput and memory benchmark (not a test): prints tables.

    python benchmarks/bench_batch.py --folder ../shared/data/imagenette/val --count 100
    python benchmarks/bench_batch.py --big 6000x4000 [--seam 1536x1024]

1. images/s of ``psic encode DIR -o OUT`` and ``psic decode`` at ``--jobs 1`` and ``--jobs 2`` on
   ``--count`` images copied from ``--folder`` (fresh processes, as a shell script runs them);
2. peak memory (max RSS of the process tree) and wall time to encode and decode a ``--big`` image;
3. seams: PSNR of tiled against untiled decoding at a size where both fit.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PSIC = [sys.executable, "-m", "psic_cli"]


# runs one command and prints the peak RSS (KiB) of its process tree: a fresh wrapper per measurement
_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


def run_timed(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of a command (largest process of its tree)."""
    t = time.time()
    r = subprocess.run([sys.executable, "-c", _WRAP, *args], capture_output=True, text=True)
    wall = time.time() - t
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{r.stderr}")
    return wall, int(r.stderr.strip().splitlines()[-1]) / 1024**2


def throughput(folder: Path, count: int, model: str) -> None:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i, f in enumerate(files):
            shutil.copy(f, src / f"{i:04d}{f.suffix.lower()}")
        print("| step | jobs | images | wall s | images/s |\n|---|---|---|---|---|")
        for jobs in (1, 2):
            out, views = Path(tmp) / f"out{jobs}", Path(tmp) / f"views{jobs}"
            wall, _ = run_timed(PSIC + ["encode", str(src), "-o", str(out), "-m", model, "-j", str(jobs), "--quiet"])
            print(f"| encode | {jobs} | {len(files)} | {wall:.1f} | {len(files) / wall:.2f} |")
            wall, _ = run_timed(PSIC + ["decode", str(out), "-o", str(views), "-j", str(jobs), "--quiet"])
            print(f"| decode | {jobs} | {len(files)} | {wall:.1f} | {len(files) / wall:.2f} |")


def big_image(size: str, model: str) -> None:
    w, h = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(0)
    base = np.asarray(Image.open(sorted(Path("examples").glob("*.png"))[0]).convert("RGB").resize((w, h)))
    img = np.clip(base.astype(np.int16) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "big.png"
        Image.fromarray(img).save(p, compress_level=1)
        max_px = str(w * h + 1)
        wall_e, peak_e = run_timed([*PSIC, "encode", str(p), "-o", f"{tmp}/big.psic", "-m", model, "--max-pixels",
                                    max_px])
        wall_d, peak_d = run_timed([*PSIC, "decode", f"{tmp}/big.psic", "-o", f"{tmp}/big-out.png"])
    print(f"| {w}x{h} ({w * h / 1e6:.0f} MP) | wall s | peak RSS GiB |")
    print("|---|---|---|")
    print(f"| encode | {wall_e:.1f} | {peak_e:.2f} |")
    print(f"| decode | {wall_d:.1f} | {peak_d:.2f} |")


def seams(size: str, model: str) -> None:
    from codec_compare import decode_in_tiles

    from psic_cli import codec
    from psic_lab.evaluation.metrics import psnr

    w, h = (int(v) for v in size.split("x"))
    img = np.asarray(Image.open("../shared/data/kodak/kodim23.png").convert("RGB").resize((w, h)))
    data = codec.encode_pixels(img, model, 2)
    # untiled, and 256-pixel tiles: many tile borders
    out = decode_in_tiles(model, data, None, {"whole": 10**6, "tiled": 16})
    whole, tiled = out["whole"], out["tiled"]
    same = np.array_equal(whole, tiled)
    print(f"\n| seams at {w}x{h} | tiled vs untiled PSNR | identical pixels |\n|---|---|---|")
    print(f"| 256-px tiles | {psnr(whole, tiled) if not same else float('inf'):.2f} dB | {same} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--big", default=None, help="WxH, e.g. 6000x4000")
    ap.add_argument("--seam", default=None, help="WxH, e.g. 1536x1024")
    ap.add_argument("--model", default="psic-sh")
    args = ap.parse_args()
    if args.folder:
        throughput(args.folder, args.count, args.model)
    if args.big:
        big_image(args.big, args.model)
    if args.seam:
        seams(args.seam, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
