"""Is the codec's top quality capped by its rate or by its transforms?  Measure the transforms' own ceiling.

For each quality, the full view's PSNR on Kodak two ways, in process and in float32:

- **coded**: the quantised latent the bitstream carries (``quantized_latents``), decoded by ``g_s``;
- **unquantised**: the analysis output ``g_a(x) * gain`` itself, decoded by ``g_s`` (no rounding at all; the
  gain cancels, so this ceiling is the same at every quality);
- with ``--decoder-steps N``, **the synthesis ceiling**: that latent moved by N Adam steps to minimise the
  error of ``g_s``'s picture, still unrounded: what the decoder can draw at all.  Above the analysis ceiling it
  measures how much ``g_a`` leaves on the table (an encoder-side gap); where both sit near the top quality, the
  synthesis itself caps the codec.

If ``coded`` approaches the ceiling at the top qualities, spending more bits cannot raise the quality: the
analysis/synthesis pair is what caps it (its width, or its training).  Writes JSON, then renders a page::

    python benchmarks/transform_ceiling.py --weights lab_weights/rd/psic-msh2.safetensors --limit 6
    python benchmarks/transform_ceiling.py --render-only    # re-render the page from the JSON

With several ``--weights`` (and ``--out``/``--docs`` for a page of their own) the page compares them side by
side, with each quality's lambda and its real file size (``psic_cli.codec`` bytes, in bits per pixel): models
trained at other lambdas are compared at equal rate, not at equal quality index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from psic_lab.evaluation.report import add_page_options, provenance, run_page  # noqa: E402

OUT = Path("results/transform-ceiling.json")
DOCS = Path("docs/transform-ceiling.md")


def measure(args: argparse.Namespace) -> dict:
    """One weights file: the legacy page's JSON; several: ``{"models": [...]}`` with rates, side by side."""
    head = provenance("benchmarks/transform_ceiling.py", args.argv, ROOT)
    if len(args.weights) == 1:
        return {**head, **measure_one(args, args.weights[0], with_rate=False)}
    return {**head, "models": [measure_one(args, w, with_rate=True) for w in args.weights]}


def measure_one(args: argparse.Namespace, weights: Path, with_rate: bool) -> dict:
    import tempfile

    import torch
    from PIL import Image

    from psic_cli.codec import encode_pixels, pad_to_multiple
    from psic_cli.container import FORMAT_VERSION, PAD_MULTIPLE
    from psic_cli.keys import read_key
    from psic_cli.views import View, condition
    from psic_cli.zoo import load_model
    from psic_lab.evaluation.metrics import psnr
    from psic_lab.evaluation.weights import install_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    load_model.cache_clear()  # the runtime caches by model id, and two weights files may share one
    with tempfile.TemporaryDirectory() as tmp:  # loaded as the runtime loads any weights file (then cached)
        model_id = install_weights(weights, Path(tmp))
        lm = load_model(model_id)
    model, cfg, meta = lm.model, lm.model.cfg, lm.info.metadata
    cond = torch.tensor([condition(View.FULL, read_key(args.key), cfg.cond_dim)])
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() == ".png")[: args.limit]
    qualities = args.qualities or list(range(1, cfg.qualities + 1))
    coded: dict[int, list[float]] = {q: [] for q in qualities}
    bpp: dict[int, list[float]] = {q: [] for q in qualities}
    ceiling: list[float] = []
    synthesis: list[float] = []
    with torch.no_grad():
        for p in paths:
            img = np.asarray(Image.open(p).convert("RGB"))
            h, w = img.shape[:2]
            xp = pad_to_multiple(torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255,
                                 PAD_MULTIPLE[FORMAT_VERSION])

            def view(lat, qt, img=img, h=h, w=w):
                xh = model.synthesize(lat, cond, qt).clamp(0, 1)[0, :, :h, :w]
                return psnr(img, (xh.permute(1, 2, 0) * 255).round().byte().numpy())

            top = torch.tensor([cfg.qualities - 1])
            y_top = model.analysis(xp, top)[0]
            ceiling.append(view(y_top, top))
            if args.decoder_steps:
                synthesis.append(view(best_latent(model, xp, y_top, cond, top, h, w, args.decoder_steps), top))
            for q in qualities:
                qt = torch.tensor([q - 1])
                coded[q].append(view(model.quantized_latents(xp, qt), qt))
                if with_rate:
                    bpp[q].append(len(encode_pixels(img, model_id, q)) * 8 / (h * w))
            print(f"{p.name}: ceiling {ceiling[-1]:.2f}, " + (f"synthesis {synthesis[-1]:.2f}, " if synthesis else "")
                  + ", ".join(f"q{q} {coded[q][-1]:.2f}" for q in qualities),
                  file=sys.stderr, flush=True)
    model_info = {"id": meta.get("model_id"), "weights": str(weights), "steps": meta.get("steps"),
                  "N": cfg.N, "M": cfg.M, "last_width": cfg.last_width}
    if with_rate:
        model_info.update(synthesis_width=cfg.synthesis_width or cfg.N, stage=meta.get("stage"),
                          sha256=lm.weights_sha256,
                          lambdas={str(q): cfg.lambdas[q - 1] for q in qualities})
    return {
        "model": model_info,
        "images": [p.name for p in paths],
        "ceiling_psnr": round(float(np.mean(ceiling)), 3),
        "coded_psnr": {str(q): round(float(np.mean(v)), 3) for q, v in coded.items()},
        **({"bpp": {str(q): round(float(np.mean(v)), 4) for q, v in bpp.items()}} if with_rate else {}),
        **({"synthesis_ceiling_psnr": round(float(np.mean(synthesis)), 3), "decoder_steps": args.decoder_steps}
           if synthesis else {}),
    }


def best_latent(model, xp, y, cond, qt, h: int, w: int, steps: int, lr: float = 0.01):
    """``y`` moved by ``steps`` Adam steps to minimise the MSE of ``g_s``'s picture against ``xp`` (unrounded)."""
    import torch

    y = y.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = (model.synthesize(y, cond, qt)[..., :h, :w] - xp[..., :h, :w]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return y.detach()


def render(res: dict, out: Path = OUT) -> str:
    if "models" in res:
        return render_many(res, out)
    m = res["model"]
    lines = ["# The transforms' ceiling", "",
             f"Generated from `{out}` (measured by `{res['command']}` at revision `{res['git_revision'][:10]}`); "
             "do not edit by hand.", "",
             f"Model `{m['id']}` ({m['steps']} steps; N={m['N']}, M={m['M']}, last stage {m['last_width']} "
             f"channels), full view, mean PSNR (dB) over {len(res['images'])} Kodak images "
             f"({', '.join(res['images'])}). *Coded*: the quantised latent the bitstream carries. *Ceiling*: the "
             "analysis output itself, decoded with no rounding (the same at every quality): "
             f"**{res['ceiling_psnr']:.2f} dB**. Where a quality meets the ceiling, more bits cannot buy quality: "
             "the transforms cap it."
             + (f" *Synthesis ceiling*: that latent moved by {res['decoder_steps']} Adam steps to minimise the "
                "decoder's error, still unrounded (what the decoder can draw at all; the gap above the ceiling is "
                f"the analysis transform's): **{res['synthesis_ceiling_psnr']:.2f} dB**."
                if "synthesis_ceiling_psnr" in res else ""), "",
             "| quality | coded | below the ceiling |", "|---|---|---|"]
    for q, v in res["coded_psnr"].items():
        lines.append(f"| {q} | {v:.2f} | {res['ceiling_psnr'] - v:.2f} |")
    return "\n".join(lines) + "\n"


def render_many(res: dict, out: Path) -> str:
    """Several weights side by side: each quality's lambda, real file size and PSNR, and each model's ceiling."""
    first = res["models"][0]
    lines = ["# The transforms' ceiling, model by model", "",
             f"Generated from `{out}` (measured by `{res['command']}` at revision `{res['git_revision'][:10]}`); "
             "do not edit by hand.", "",
             f"Full view, mean over {len(first['images'])} Kodak images ({', '.join(first['images'])}). *bpp*: the "
             "file's real size through `psic_cli.codec`. *PSNR*: its full view (dB), in process in float32. "
             "*Ceiling*: the analysis output decoded with no rounding at all (dB): what no number of bits can "
             "pass with these transforms.", "",
             "| weights | stage | steps | synthesis width | ceiling | quality | lambda | bpp | PSNR "
             "| below the ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["models"]:
        m = r["model"]
        for q, v in r["coded_psnr"].items():
            lines.append(f"| `{Path(m['weights']).name}` | {m['stage']} | {m['steps']} | {m['synthesis_width']} | "
                         f"{r['ceiling_psnr']:.2f} | {q} | {m['lambdas'][q]:g} | {r['bpp'][q]:.3f} | {v:.2f} | "
                         f"{r['ceiling_psnr'] - v:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, nargs="+", default=[Path("lab_weights/rd/psic-msh2.safetensors")],
                    help="weights file(s) to measure (their metadata holds the model config); several: side by "
                         "side, with each quality's real file size")
    ap.add_argument("--folder", type=Path, default=Path("../shared/data/kodak"), help="evaluation images (Kodak)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    ap.add_argument("--qualities", type=int, nargs="*", default=None, help="qualities to measure (default: all)")
    ap.add_argument("--decoder-steps", type=int, default=0,
                    help="also the synthesis ceiling: Adam steps on the unrounded latent (0: skip)")
    ap.add_argument("--key", type=Path, default=Path("weights/shipped.key"), help="key whose full view is decoded")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_page_options(ap, OUT, DOCS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run_page(args, ROOT, measure, render)


if __name__ == "__main__":
    sys.exit(main())
