"""How the encoder's search (``psic encode --effort N``) sets its step sizes: measured on training images.

``ConditionalHyperprior.refine`` moves the latents ``y`` and ``z`` to lower each quality's own cost
``J = bpp + lambda_q * 255^2 * MSE``.  This benchmark compares search settings by the *coded* cost: each
result is entropy-coded (its real byte count) and decoded as the runtime decodes it (rounded 8-bit pixels).

- ``before``: the search of psic 0.x up to this change: ``y`` moved directly at step size 0.01 at every
  quality, cosine decay, no warm-up;
- ``runtime``: the search ``refine`` runs today (``y`` moved in the analysis transform's units, the step size
  growing with ``lambda_q``, a short warm-up); ``--variants`` adds others for tuning.

Images are centre crops of BSDS500 *training* images, so Kodak stays untouched by the tuning.  Writes
JSON, then renders a page::

    python benchmarks/refine_tuning.py --weights lab_weights/rd/psic-msh2.safetensors --threads 1
    python benchmarks/refine_tuning.py --render-only    # re-render the page from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = Path("results/refine-tuning.json")
DOCS = Path("docs/refine-tuning.md")
DEFAULT_IMAGES = ["100075.jpg", "100080.jpg", "100098.jpg", "103041.jpg"]


def refine_before(model, x, q: int, cond, steps: int, lr: float = 0.01):
    """The search as it was before this benchmark: ``y`` and ``z`` moved directly, one step size, cosine."""
    import torch

    qt = torch.tensor([q])
    with torch.no_grad():
        y0, z0 = model.analysis(x, qt)
    lam = float(model.cfg.lambdas[q]) * 255.0**2
    pixels = x.shape[-1] * x.shape[-2]
    y, z = y0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([y, z], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    best, best_yz = math.inf, (y0, z0)
    with torch.enable_grad():
        for _ in range(steps):
            bits, y_hat = model.rate_bits(y, z)
            loss = bits / pixels + lam * (model.synthesize(y_hat, cond, qt) - x).pow(2).mean()
            if loss.item() < best:
                best, best_yz = loss.item(), (y.detach().clone(), z.detach().clone())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return best_yz


def coded_cost(model, x, q: int, cond, y, z) -> tuple[float, float]:
    """``(bpp, PSNR)`` of coding ``y``, ``z`` as ``compress`` does and decoding to rounded 8-bit pixels."""
    import torch

    out = model.compress_latents(y, z)
    with torch.no_grad():
        y_hat, _ = model.decode_latent(out["strings"], out["shape"], out["y_shape"])
        x_hat = torch.round(model.synthesize(y_hat.float(), cond, torch.tensor([q])).clamp(0, 1) * 255) / 255
        mse = float((x_hat - x).pow(2).mean())
    bits = 8 * sum(len(s[0]) for s in out["strings"])
    return bits / (x.shape[-1] * x.shape[-2]), 10 * math.log10(1 / mse)


def measure(args: argparse.Namespace) -> dict:
    import tempfile

    import torch
    from PIL import Image

    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model
    from psic_lab.evaluation.weights import install_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:  # loaded as the runtime loads any weights file
        lm = load_model(install_weights(args.weights, Path(tmp)))
    model, meta = lm.model, lm.info.metadata
    cond = torch.tensor([codec.effort_condition(lm, read_key(args.key))])
    settings = {"before": None, "runtime": None, **{f"lr{v}": v for v in args.variants}}
    rows = []
    for name in args.images:
        img = np.asarray(Image.open(args.folder / name).convert("RGB"))
        h, w = img.shape[:2]
        ch, cw = min(h, args.crop[0]) // 16 * 16, min(w, args.crop[1]) // 16 * 16
        img = img[(h - ch) // 2: (h - ch) // 2 + ch, (w - cw) // 2: (w - cw) // 2 + cw]
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
        for q in args.qualities:
            lam = float(model.cfg.lambdas[q - 1]) * 255.0**2
            with torch.no_grad():
                y0, z0 = model.analysis(x, torch.tensor([q - 1]))
            bpp0, psnr0 = coded_cost(model, x, q - 1, cond, y0, z0)
            j0 = bpp0 + lam * 10 ** (-psnr0 / 10)
            for setting, lr in settings.items():
                t = time.perf_counter()
                if setting == "before":
                    y, z = refine_before(model, x, q - 1, cond, args.steps)
                else:
                    y, z = model.refine(x, q - 1, cond, args.steps, lr=lr)
                bpp, p = coded_cost(model, x, q - 1, cond, y, z)
                j = bpp + lam * 10 ** (-p / 10)
                rows.append({"image": name, "quality": q, "setting": setting, "bpp": round(bpp, 5),
                             "psnr": round(p, 3), "start_bpp": round(bpp0, 5), "start_psnr": round(psnr0, 3),
                             "cost_change_percent": round(100 * (j / j0 - 1), 3),
                             "seconds": round(time.perf_counter() - t, 1)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {
        "command": "python benchmarks/refine_tuning.py " + " ".join(args.argv),
        "git_revision": git,
        "model": {"id": meta.get("model_id"), "weights": str(args.weights), "steps": meta.get("steps")},
        "search": {"steps": args.steps, "runtime_lr_q1": model.REFINE_LR, "runtime_lr_power": model.REFINE_LR_POWER,
                   "runtime_z_lr": model.REFINE_Z_LR, "runtime_warmup": model.REFINE_WARMUP},
        "crop": args.crop,
        "images": args.images,
        "rows": rows,
    }


def summary(res: dict) -> dict[str, dict[int, float]]:
    """Mean change of the coded cost per setting and quality, in percent (negative: the search helped)."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in res["rows"]:
        out.setdefault(r["setting"], {}).setdefault(r["quality"], []).append(r["cost_change_percent"])
    return {s: {q: float(np.mean(v)) for q, v in d.items()} for s, d in out.items()}


def render(res: dict) -> str:
    m, s = res["model"], res["search"]
    means = summary(res)
    qualities = sorted({r["quality"] for r in res["rows"]})
    lines = ["# The encoder's search: its step sizes", "",
             f"Generated from `{OUT}` (measured by `{res['command']}` at revision `{res['git_revision'][:10]}`); "
             "do not edit by hand.", "",
             f"Model `{m['id']}` ({m['steps']} steps). {s['steps']} search steps (`--effort {s['steps']}`) on "
             f"{len(res['images'])} centre crops (at most {res['crop'][0]}x{res['crop'][1]}) of BSDS500 training "
             f"images ({', '.join(res['images'])}); Kodak is not used. Each cell: the mean change of the coded "
             "cost `bpp + lambda_q * 255^2 * MSE` (real bytes, 8-bit pixels) against coding the analysis output "
             "as it is; negative is better.", "",
             "*before*: `y` moved directly at step size 0.01 at every quality (the search up to this change). "
             f"*runtime*: the search today: `y` moved in the analysis transform's units, step "
             f"{s['runtime_lr_q1']} x (lambda_q / lambda_1)^{s['runtime_lr_power']}, `z` at {s['runtime_z_lr']}, "
             f"{s['runtime_warmup']} warm-up steps. *lrX*: the runtime search at one step size X at every quality.",
             "",
             "| setting | " + " | ".join(f"q{q}" for q in qualities) + " | mean |",
             "|---|" + "---|" * (len(qualities) + 1)]
    for name, d in means.items():
        vals = [d[q] for q in qualities]
        lines.append(f"| {name} | " + " | ".join(f"{v:+.2f}%" for v in vals) + f" | {np.mean(vals):+.2f}% |")
    secs = [r["seconds"] for r in res["rows"]]
    lines += ["", f"Seconds per search: {np.median(secs):.1f} (median over all rows; one thread)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=Path("lab_weights/rd/psic-msh2.safetensors"),
                    help="weights file to measure (its metadata holds the model config)")
    ap.add_argument("--folder", type=Path, default=Path("../shared/data/bsds500/train"),
                    help="training images to tune on (never Kodak)")
    ap.add_argument("--images", nargs="+", default=DEFAULT_IMAGES, help="file names in --folder")
    ap.add_argument("--crop", type=int, nargs=2, default=[256, 384], metavar=("H", "W"), help="centre crop size")
    ap.add_argument("--qualities", type=int, nargs="+", default=[1, 3, 5, 7], help="qualities to search")
    ap.add_argument("--steps", type=int, default=40, help="search steps (the --effort value)")
    ap.add_argument("--variants", type=float, nargs="*", default=[],
                    help="extra settings: the runtime search at this one step size at every quality")
    ap.add_argument("--key", type=Path, default=Path("weights/shipped.key"), help="key whose full view is kept close")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--render-only", action="store_true", help=f"only re-render {DOCS} from {OUT}")
    ap.add_argument("--check", action="store_true", help=f"exit 1 if {DOCS} differs from the rendering of {OUT}")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.check:
        return 0 if (ROOT / DOCS).read_text() == render(json.loads((ROOT / OUT).read_text())) else 1
    if not args.render_only:
        (ROOT / OUT).write_text(json.dumps(measure(args), indent=2) + "\n")
    (ROOT / DOCS).write_text(render(json.loads((ROOT / OUT).read_text())))
    print(f"wrote {DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
