"""Paste generated tables into README.md between ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers.

    python scripts/update_readme.py

Each block is filled from a generated file (docs/*.md), so the README never carries a hand-typed figure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def kodak_block(name: str = "kodak-rd") -> str:
    p = ROOT / "results" / f"{name}.json"
    if not p.exists():
        return (f"_not generated yet: run `python -m psic_cli.evaluation.rd --folder ../shared/data/kodak "
                f"--name {name}`_")
    r = json.loads(p.read_text())
    lines = ["| curve | bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|"]
    for curve, c in r["curves"].items():
        if curve in ("jpeg", "webp"):
            continue
        for b, ps, ss in zip(c["bpp"], c["psnr"], c["ms_ssim"], strict=True):
            lines.append(f"| {curve} | {b:.3f} | {ps:.2f} | {ss:.4f} |")
    lines.append("")
    lines.append("| BD-rate of the full view against | PSNR-based |")
    lines.append("|---|---|")
    for k, v in r["bd_rate_percent"].items():
        if k.endswith("_psnr"):
            lines.append(f"| {k[3:-5]} | {v:+.1f}% |")
    for e in r.get("vs_compressai_at_equal_bpp", []):
        lines.append(f"| at {e['bpp']} bpp vs CompressAI bmshj2018 (published {e['compressai_psnr']} dB) | "
                     f"{e['delta_db']:+.2f} dB |")
    s = r["seconds"]
    lines.append("")
    lines.append(f"Mean encode {s['encode_mean']:.2f} s, decode {s['decode_mean']:.2f} s per Kodak image "
                 f"(768x512, model loaded once: {s['model_load']:.2f} s).")
    cw = r.get("cli_wall", {})
    if cw:
        lines.append("Fresh-process wall times: " + ", ".join(f"`{k}` {v:.2f} s" for k, v in cw.items()) + ".")
    lines.append(f"Model: {r['model']} ({r['model_metadata']}). Full table: `docs/{name}.md`, "
                 f"plot `docs/{name}.png`.")
    return "\n".join(lines)


def vlp_block() -> str:
    p = ROOT / "results" / "vlp" / "summary.md"
    if not p.exists():
        return ("_not generated yet: run `python -m psic_cli.vlp.eval --summarize results/vlp/*.json "
                "--md results/vlp/summary.md`_")
    return p.read_text().strip() + "\n\n(from `results/vlp/summary.md`)"


def timing_block() -> str:
    p = ROOT / "docs" / "timing.md"
    if not p.exists():
        return "_not generated yet: run `python benchmarks/timing.py --folder ../shared/data/kodak`_"
    return "\n".join(line for line in p.read_text().splitlines() if line.startswith("|"))


BLOCKS = {
    "timing": timing_block,
    "kodak-rd": kodak_block,
    "kodak-rd-msh": lambda: kodak_block("kodak-rd-msh"),
    "vlp": vlp_block,
}


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, fn in BLOCKS.items():
        pat = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        text = pat.sub(lambda m, fn=fn: m.group(1) + fn() + "\n" + m.group(2), text)
    readme.write_text(text)


if __name__ == "__main__":
    main()
