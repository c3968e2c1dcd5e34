"""Rate-distortion evaluation on an image folder (Kodak): psic through its real file path vs Pillow
JPEG and WebP, with BD-rates and timings.  Writes ``results/<name>.json``, ``docs/<name>.md`` and a plot.

    python -m psic_lab.evaluation.rd --folder ../shared/data/kodak --name kodak-rd
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from psic_cli.views import View
from psic_lab.evaluation.metrics import bd_rate, ms_ssim, psnr

# CompressAI's published bmshj2018-hyperprior results on Kodak (quality 1-3): bpp, PSNR
COMPRESSAI_BMSHJ2018 = {"bpp": [0.131, 0.209, 0.320], "psnr": [27.58, 29.20, 30.97]}
JPEG_QUALITIES = [5, 10, 15, 20, 30, 40, 50, 60, 75, 85, 92]
WEBP_QUALITIES = [1, 5, 10, 20, 30, 40, 50, 60, 75, 85, 92]


def _pillow_point(img: np.ndarray, fmt: str, q: int) -> tuple[float, float, float]:
    buf = io.BytesIO()
    kw = {"quality": q}
    if fmt == "WEBP":
        kw["method"] = 6
    Image.fromarray(img).save(buf, fmt, **kw)
    dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return len(buf.getvalue()) * 8 / (img.shape[0] * img.shape[1]), psnr(img, dec), ms_ssim(img, dec)


def _mean_curve(points: list[list[tuple[float, float, float]]]) -> dict:
    arr = np.array(points)  # images x levels x 3
    m = arr.mean(0)
    return {"bpp": m[:, 0].tolist(), "psnr": m[:, 1].tolist(), "ms_ssim": m[:, 2].tolist()}


def evaluate(folder: Path, model_id: str, key_file: Path | None, limit: int | None) -> dict:
    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
    t = time.time()
    lm = load_model(model_id)
    load_s = time.time() - t
    key = read_key(key_file) if key_file else None
    nq = lm.model.cfg.qualities
    views = [View.SHIELDED] + ([View.FULL] if key else [])
    per: dict[str, list] = {v: [] for v in views}
    jpeg, webp, enc_t, dec_t = [], [], [], []
    for p in paths:
        data = p.read_bytes()
        img = np.asarray(Image.open(p).convert("RGB"))
        rows = {v: [] for v in views}
        for q in range(1, nq + 1):
            t = time.time()
            res = codec.encode(data, p.name, model_id, q)
            enc_t.append(time.time() - t)
            bpp = len(res.data) * 8 / (img.shape[0] * img.shape[1])
            for v in views:
                t = time.time()
                dec = codec.decode(res.data, key if v.needs_key else None, v)
                dec_t.append(time.time() - t)
                rows[v].append((bpp, psnr(img, dec.pixels), ms_ssim(img, dec.pixels)))
        for v in views:
            per[v].append(rows[v])
        jpeg.append([_pillow_point(img, "JPEG", q) for q in JPEG_QUALITIES])
        webp.append([_pillow_point(img, "WEBP", q) for q in WEBP_QUALITIES])
        pts = ", ".join(f"q{i + 1} {r[0]:.3f} bpp {r[1]:.2f} dB" for i, r in enumerate(rows[views[-1]]))
        print(f"{p.name}: {pts}", file=sys.stderr, flush=True)
    curves = {f"psic-{v}": _mean_curve(per[v]) for v in views}
    curves["jpeg"] = _mean_curve(jpeg)
    curves["webp"] = _mean_curve(webp)
    main = curves[f"psic-{views[-1]}"]
    bd = {}
    for anchor in ("jpeg", "webp"):
        a = curves[anchor]
        bd[f"vs_{anchor}_psnr"] = bd_rate(a["bpp"], a["psnr"], main["bpp"], main["psnr"])
        bd[f"vs_{anchor}_msssim"] = bd_rate(a["bpp"], a["ms_ssim"], main["bpp"], main["ms_ssim"])
    c = COMPRESSAI_BMSHJ2018
    bd["vs_compressai_bmshj2018_psnr"] = bd_rate(c["bpp"], c["psnr"], main["bpp"], main["psnr"])
    # where BD-rate has no overlap: our PSNR at CompressAI's rates (log-rate interpolation; None outside our range)
    at_their_rates = []
    for b, p_ref in zip(c["bpp"], c["psnr"], strict=True):
        ours = float(np.interp(np.log(b), np.log(main["bpp"]), main["psnr"], left=np.nan, right=np.nan))
        ok = bool(np.isfinite(ours))
        at_their_rates.append({"bpp": b, "compressai_psnr": p_ref, "psic_psnr": ours if ok else None,
                               "delta_db": ours - p_ref if ok else None})
    return {
        "folder": str(folder),
        "images": len(paths),
        "model": model_id,
        "model_metadata": {k: lm.info.metadata.get(k) for k in ("steps", "training_data", "shield", "stage")},
        "views": views,
        "curves": curves,
        "bd_rate_percent": bd,
        "compressai_bmshj2018_published": c,
        "vs_compressai_at_equal_bpp": at_their_rates,
        "seconds": {
            "model_load": load_s,
            "encode_mean": float(np.mean(enc_t)),
            "decode_mean": float(np.mean(dec_t)),
            "encode_max": float(np.max(enc_t)),
            "decode_max": float(np.max(dec_t)),
        },
        "host": {"machine": platform.machine(), "python": platform.python_version()},
    }


def cli_timings(example: Path, model_id: str, tmp: Path) -> dict:
    """Wall time of fresh ``psic`` processes, as a shell script sees them."""
    exe = [sys.executable, "-m", "psic_cli"]
    out = {}

    def wall(args):
        t = time.time()
        subprocess.run(exe + args, check=True, capture_output=True)
        return time.time() - t

    out["psic --help"] = min(wall(["--help"]) for _ in range(3))
    psic = tmp / "t.psic"
    out["psic encode"] = wall(["encode", str(example), "-o", str(psic), "-m", model_id, "--force"])
    out["psic decode"] = wall(["decode", str(psic), "-o", str(tmp / "t.png"), "--force"])
    t = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    out["python -c 'import torch'"] = time.time() - t
    return out


def _num(v: float | None, spec: str, suffix: str = "") -> str:
    """A table cell; "—" for a missing or non-finite value (reports never print nan)."""
    return "—" if v is None or not np.isfinite(v) else format(v, spec) + suffix


def report_md(res: dict, name: str, command: str) -> str:
    """``docs/<name>.md`` rendered from the results dict (``results/<name>.json``)."""
    lines = [f"# Rate-distortion on {res['folder']} ({res['images']} images)", "",
             f"Generated by `{command}`; raw numbers in `results/{name}.json`.", "",
             f"Model `{res['model']}`: {res['model_metadata']}", ""]
    for cname, c in res["curves"].items():
        lines += [f"## {cname}", "", "| point | bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|"]
        for i, (b, p, s) in enumerate(zip(c["bpp"], c["psnr"], c["ms_ssim"], strict=True)):
            lines.append(f"| {i + 1} | {b:.4f} | {p:.2f} | {s:.4f} |")
        lines.append("")
    lines += ["## BD-rate (negative = psic needs fewer bits)", "", "| against | BD-rate |", "|---|---|"]
    lines += [f"| {k} | {v:+.1f}% |" for k, v in res["bd_rate_percent"].items()]
    c = res["compressai_bmshj2018_published"]
    lines += ["", "CompressAI bmshj2018-hyperprior published (Kodak, q1-3): "
              + ", ".join(f"{b}/{p}" for b, p in zip(c["bpp"], c["psnr"], strict=True)) + " bpp/dB", ""]
    lines += ["| bpp | CompressAI bmshj2018 PSNR | psic PSNR at that bpp | difference |", "|---|---|---|---|"]
    lines += [f"| {e['bpp']} | {e['compressai_psnr']:.2f} | {_num(e['psic_psnr'], '.2f')} | "
              f"{_num(e['delta_db'], '+.2f', ' dB')} |" for e in res.get("vs_compressai_at_equal_bpp", [])]
    lines.append("")
    lines += ["## Timings (this machine)", "", "| what | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in res["seconds"].items()]
    lines += [f"| {k} (wall, fresh process) | {v:.3f} |" for k, v in res.get("cli_wall", {}).items()]
    return "\n".join(lines) + "\n"


def write_report(res: dict, name: str, command: str) -> None:
    Path("results").mkdir(exist_ok=True)
    Path("docs").mkdir(exist_ok=True)
    Path(f"results/{name}.json").write_text(json.dumps(res, indent=2))
    Path(f"docs/{name}.md").write_text(report_md(res, name, command))
    c = res["compressai_bmshj2018_published"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for cname, cv in res["curves"].items():
            axes[0].plot(cv["bpp"], cv["psnr"], "o-", label=cname, ms=3)
            axes[1].plot(cv["bpp"], cv["ms_ssim"], "o-", label=cname, ms=3)
        axes[0].plot(c["bpp"], c["psnr"], "k--", label="CompressAI bmshj2018 (published)")
        for ax, yl in zip(axes, ("PSNR (dB)", "MS-SSIM"), strict=True):
            ax.set_xlabel("bpp")
            ax.set_ylabel(yl)
            ax.set_xlim(0, 1.2)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylim(22, 38)
        fig.tight_layout()
        fig.savefig(f"docs/{name}.png", dpi=110)
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--model", default="psic-sh")
    ap.add_argument("--key", type=Path, default=Path("weights/shipped.key"))
    ap.add_argument("--name", default="kodak-rd")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-cli-timings", action="store_true")
    args = ap.parse_args(argv)
    res = evaluate(args.folder, args.model, args.key if args.key and args.key.exists() else None, args.limit)
    if not args.no_cli_timings:
        import tempfile

        first = sorted(args.folder.iterdir())[0]
        with tempfile.TemporaryDirectory() as tmp:
            res["cli_wall"] = cli_timings(first, args.model, Path(tmp))
    write_report(res, args.name, "python -m psic_lab.evaluation.rd " + " ".join(argv or sys.argv[1:]))
    print(json.dumps(res["bd_rate_percent"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
