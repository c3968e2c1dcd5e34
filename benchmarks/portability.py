"""Are a weights file's symbols the same on other CPU kernels?  (a benchmark that writes JSON, not a test)

    python benchmarks/portability.py --weights lab_weights/rd/psic-msh2c.safetensors --limit 4

Encodes the first ``--limit`` images of ``--folder`` at every quality with the native kernels, then decodes
every file in a fresh process per kernel set (the ISA variables are read once per process): the native one,
SSE4.1 oneDNN with ATen's default (no AVX) kernels, and oneDNN switched off.  Every decode checks the file's
symbol checksum (a mismatch is a failed decode); the JSON also records the largest pixel difference from the
native decode of the same file.  ``tests/test_determinism.py`` does the same for the installed weights' golden
files; this does it for weights that are not installed (the lab's).  Writes ``results/portability-<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: the kernel sets a user's CPU may give besides the native ones: environment, and "nomkldnn" to switch oneDNN
#: off in the process (tests/test_determinism.py decodes the golden files under the same ones)
KERNEL_SETS = {
    "sse41+aten-default": ({"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41",
                            "ATEN_CPU_CAPABILITY": "default"}, "-"),
    "onednn-off": ({}, "nomkldnn"),
}
VARIANTS = {"native": ({}, "-"), **KERNEL_SETS}

# decodes every .psic file of argv[1] (full view, with the key argv[3]) into <name>.npy; prints failures as JSON
DECODE = """
import json, sys, pathlib, numpy as np, torch
if sys.argv[2] == 'nomkldnn': torch.backends.mkldnn.enabled = False
from psic_cli import codec
from psic_cli.keys import read_key
key, folder, failed = read_key(sys.argv[3]), pathlib.Path(sys.argv[1]), {}
for path in sorted(folder.glob('*.psic')):
    try:
        np.save(folder / sys.argv[4] / (path.stem + '.npy'), codec.decode(path.read_bytes(), key).pixels)
    except Exception as e:  # a checksum mismatch (ChecksumError) is what this looks for
        failed[path.name] = f'{type(e).__name__}: {e}'
print(json.dumps(failed))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="the psic weights file to check")
    ap.add_argument("--folder", default="../shared/data/kodak", help="images to encode")
    ap.add_argument("--limit", type=int, default=4, help="the first N images (sorted by name)")
    ap.add_argument("--key", default="weights/shipped.key", help="key of the full view")
    ap.add_argument("--out", default=None, help="JSON to write (default results/portability-<model>.json)")
    args = ap.parse_args(argv)

    import numpy as np
    from PIL import Image

    from psic_cli import codec
    from psic_cli.container import unpack
    from psic_lab.evaluation.weights import install_weights

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "w").mkdir()
        model_id = install_weights(Path(args.weights), tmp / "w")
        from psic_cli.zoo import load_model

        qualities = load_model(model_id).model.cfg.qualities
        images = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in (".png", ".jpg"))[: args.limit]
        files = []
        for p in images:
            pixels = np.asarray(Image.open(p).convert("RGB"))
            for q in range(1, qualities + 1):
                name = f"{p.stem}-q{q}.psic"
                (tmp / name).write_bytes(codec.encode_pixels(pixels, model_id, q))
                files.append(name)
        results = {}
        for variant, (env, mode) in VARIANTS.items():
            (tmp / variant).mkdir()
            r = subprocess.run([sys.executable, "-c", DECODE, str(tmp), mode, args.key, variant],
                               capture_output=True, text=True, env={**os.environ, **env}, timeout=3600)
            if r.returncode != 0:
                raise SystemExit(f"{variant}: decoder process failed: {r.stderr[-2000:]}")
            results[variant] = {"failed": json.loads(r.stdout.strip().splitlines()[-1])}
        for variant in VARIANTS:
            diffs = []
            for name in files:
                a, b = tmp / "native" / f"{Path(name).stem}.npy", tmp / variant / f"{Path(name).stem}.npy"
                if a.exists() and b.exists():
                    diffs.append(int(np.abs(np.load(a).astype(np.int16) - np.load(b).astype(np.int16)).max()))
            results[variant]["max_pixel_diff"] = max(diffs) if diffs else None
            results[variant]["decoded"] = len(diffs)
        strings = {len(unpack((tmp / name).read_bytes()).tiles[0].strings) for name in files}
    out = Path(args.out or f"results/portability-{model_id}.json")
    report = {"command": "python benchmarks/portability.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": model_id, "files": len(files), "images": [p.name for p in images],
              "strings_per_tile": sorted(strings), "variants": results}
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    bad = [v for v, r in results.items() if r["failed"] or (r["max_pixel_diff"] or 0) > 1]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
