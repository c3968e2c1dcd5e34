"""Paste generated tables into README.md and docs/ between ``<!-- BEGIN name -->`` / ``<!-- END name -->``.

    python scripts/update_readme.py           # rewrite the blocks from results/*.json and the generated docs
    python scripts/update_readme.py --check   # exit 1 when a block differs from what they render (CI)

The blocks live in :data:`TARGETS` (the README keeps the headline size table; the other tables are in
docs/results.md and docs/benchmarks.md); every block of :data:`BLOCKS` must appear in one of them.

Each block is filled from a generated file (results/*.json, docs/*.md), so the README never carries a
hand-typed figure.  A value that is not a number (NaN, a missing point) renders as "—"; a block that would
still publish ``nan`` is an error (exit 2).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MISSING = "—"
TARGETS = ("README.md", "docs/results.md", "docs/benchmarks.md")


def num(v: float | None, spec: str, suffix: str = "") -> str:
    """``format(v, spec) + suffix``, or "—" when ``v`` is None or not finite (never publish nan)."""
    if v is None or not math.isfinite(v):
        return MISSING
    return format(v, spec) + suffix


def kodak_block(name: str = "kodak-rd") -> str:
    p = ROOT / "results" / f"{name}.json"
    if not p.exists():
        return (f"_not generated yet: run `python -m psic_lab.evaluation.rd --folder ../shared/data/kodak "
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
    at_rates = r.get("vs_compressai_at_equal_bpp", [])
    for e in at_rates:
        lines.append(f"| at {e['bpp']} bpp vs CompressAI bmshj2018 (published {e['compressai_psnr']} dB) | "
                     f"{num(e['delta_db'], '+.2f', ' dB')} |")
    if any(num(e["delta_db"], ".2f") == MISSING for e in at_rates):
        lines.append(f"\n{MISSING}: outside the rates psic's curve covers (no interpolation there).")
    s = r["seconds"]
    lines.append("")
    lines.append(f"Mean encode {s['encode_mean']:.2f} s, decode {s['decode_mean']:.2f} s per Kodak image "
                 f"(768x512, model loaded once: {s['model_load']:.2f} s).")
    cw = r.get("cli_wall", {})
    if cw:
        lines.append("Fresh-process wall times: " + ", ".join(f"`{k}` {v:.2f} s" for k, v in cw.items()) + ".")
    lines.append(f"Model: {r['model']} ({r['model_metadata']}). Full table: `docs/{name}.md`, "
                 f"plot `docs/{name}.png`.")
    base = ROOT / "results" / f"{name}-rdonly.json"
    if base.exists():  # the same bitstreams decoded by the rate-distortion weights (before the shield stage)
        b = json.loads(base.read_text())["curves"]["psic-full"]
        c = r["curves"]
        lines += ["", "Cost of the shield at the same bitstream (identical bpp) against the rate-distortion "
                  f"weights before the shield stage (`results/{name}-rdonly.json`, made by "
                  "`PSIC_WEIGHTS=lab_weights/rd "
                  f"python -m psic_lab.evaluation.rd --folder ../shared/data/kodak --model {r['model']} "
                  f"--name {name}-rdonly`):", "",
                  "| quality | bpp | PSNR before | " + " | ".join(f"{k[5:]} view" for k in c if k.startswith("psic-"))
                  + " |", "|---" * (3 + sum(k.startswith("psic-") for k in c)) + "|"]
        for i, (bp, ps) in enumerate(zip(b["bpp"], b["psnr"], strict=True)):
            cells = [f"{c[k]['psnr'][i]:.2f} ({c[k]['psnr'][i] - ps:+.2f})" for k in c if k.startswith("psic-")]
            lines.append(f"| {i + 1} | {bp:.3f} | {ps:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def vlp_block() -> str:
    p = ROOT / "results" / "vlp" / "summary.md"
    if not p.exists():
        return ("_not generated yet: run `python -m psic_lab.vlp.eval --summarize results/vlp/*.json "
                "--md results/vlp/summary.md`_")
    return p.read_text().strip() + "\n\n(from `results/vlp/summary.md`)"


def timing_block() -> str:
    p = ROOT / "docs" / "timing.md"
    if not p.exists():
        return "_not generated yet: run `python benchmarks/timing.py --folder ../shared/data/kodak`_"
    return "\n".join(line for line in p.read_text().splitlines() if line.startswith("|"))


def text_block(path: str) -> str:
    """Table lines of a generated text file (a benchmark's saved output)."""
    p = ROOT / path
    if not p.exists():
        return f"_not generated yet (`{path}`)_"
    kept = [line for line in p.read_text().splitlines() if not line or line.startswith(("|", "#"))]
    return "\n".join(kept).strip().replace("# Generated by:", "Generated by:")


def md_block(path: str) -> str:
    """A generated report (docs/*.md) without its title line; section titles become bold lines."""
    p = ROOT / path
    if not p.exists():
        return f"_not generated yet (`{path}`)_"
    out = []
    for line in p.read_text().splitlines()[1:]:
        out.append(f"**{line.lstrip('#').strip()}**" if line.startswith("#") else line)
    return "\n".join(out).strip()


def summary_block() -> str:
    """The headline numbers, from results/privacy.json and results/attacks.json."""
    from psic_cli.views import SHIELD_VIEWS

    p = ROOT / "results" / "privacy.json"
    if not p.exists():
        return "_not generated yet: run the privacy evaluation (below)_"
    r = json.loads(p.read_text())
    target = next(iter(r["original"]))
    lines = [f"Measured on {r['images']} Imagenette val images (10-way zero-shot top-1, chance 10%; target "
             f"`{target}`, original images {r['original'][target]:.1%}):", "",
             "| quality | bpp | target: full view | target: shielded | target: strong | PSNR full | "
             "PSNR shielded | PSNR strong |", "|---|---|---|---|---|---|---|---|"]
    for q, e in r["qualities"].items():
        t = e[target]
        strong = f"{t['strong_top1']:.1%}" if "strong_top1" in t else "-"
        ps = f"{e['strong_psnr']:.2f}" if "strong_psnr" in e else "-"
        lines.append(f"| {q} | {e['bpp']:.3f} | {t['full_top1']:.1%} | {t['shielded_top1']:.1%} | {strong} | "
                     f"{e['full_psnr']:.2f} | {e['shielded_psnr']:.2f} | {ps} |")
    base = ROOT / "results" / "privacy-rdonly.json"
    if base.exists():  # the same images through the rate-distortion weights, before any shield stage
        b = json.loads(base.read_text())
        def cell(q: str, e: dict) -> str:
            out = f"q{q} {e[target]['full_top1']:.1%} at {e['full_psnr']:.2f} dB"
            if q in r["qualities"]:  # the shielded model's full view, relative to it
                m = r["qualities"][q]
                out += (f" (shielded model's full view: {100 * (m[target]['full_top1'] - e[target]['full_top1']):+.1f}"
                        f" points, {m['full_psnr'] - e['full_psnr']:+.2f} dB)")
            return out

        cells = ", ".join(cell(q, e) for q, e in b["qualities"].items())
        lines += ["", f"The rate-distortion weights before any shield stage (`results/privacy-rdonly.json`) give "
                  f"the target {cells} on the same images: most of the full view's distance from the original "
                  "is the codec's."]
    judges = [v for v in r["original"] if v != target]
    if judges and all("strong_top1" in e.get(j, {}) for e in r["qualities"].values() for j in judges):
        lines.append("")
        for j in judges:  # models the shield never trained against
            cells = ", ".join(f"q{q} {e[j]['strong_top1']:.1%}" for q, e in r["qualities"].items())
            full = ", ".join(f"{e[j]['full_top1']:.1%}" for e in r["qualities"].values())
            lines.append(f"`{j}` (never trained against; originals {r['original'][j]:.1%}) reads the strong view: "
                         f"{cells} (full view: {full}).")
    rk = r.get("random_keys")
    if rk:
        lines += ["", f"Random keys: {rk['unlocked']} of {rk['keys']} unlock the full view."]
    a = ROOT / "results" / "attacks.json"
    if a.exists():
        ar = json.loads(a.read_text())
        for q, e in ar["qualities"].items():
            for v in SHIELD_VIEWS:
                if v in e["views"]:
                    t = e["views"][v]["top1"]
                    lines.append(f"After JPEG q75 re-encoding (quality {q}), the target reads the {v} view "
                                 f"{t['jpeg75'][ar['target']]:.1%} of the time (as decoded: "
                                 f"{t['as decoded'][ar['target']]:.1%}).")
    return "\n".join(lines)


def pct(v: float | None) -> str:
    """A share as a whole percentage, or "n/a" when it was not measured (never nan)."""
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.0%}"


def geometry_paths(r: dict) -> tuple[str, str]:
    """The results JSON and the page a geometry run wrote, from its command's ``--out`` and ``--docs``."""
    args = str(r.get("command", "")).split()

    def after(flag: str, default: str) -> str:
        return args[args.index(flag) + 1] if flag in args[:-1] else default

    return after("--out", "results/shield-geometry.json"), after("--docs", "docs/shield-geometry.md")


def geometry_headline(r: dict) -> str:
    """The shield at every size (``results/shield-geometry.json``, from ``benchmarks/shield_geometry.py``):
    target top-1 under short224, retrieval R@1, the grid score and the PSNR gap, per long side."""
    from psic_cli.views import View

    lines = ["| long side | images | target top-1: original | full | shielded | strong | R@1 (target / Lite2): "
             "shielded | strong | grid: shielded | strong | PSNR gap to full: shielded | strong |",
             "|---" * 12 + "|"]
    for name, e in r["sizes"].items():
        t = e.get("top1", {}).get("target/short224", {})
        ret, q = e["retrieval_r1"], e["quality"]
        lite = ret.get("effnet-lite2", {})
        label = f"{name} ({', '.join(e['sizes'])})" if name == "native" else name
        lines.append(
            f"| {label} | {e['labelled_images']}+{e['unlabelled_images']} | {pct(t.get('original'))} | "
            f"{pct(t.get(View.FULL))} | {pct(t.get(View.SHIELDED))} | {pct(t.get(View.STRONG))} | "
            f"{pct(ret['target'][View.SHIELDED])} / {pct(lite.get(View.SHIELDED))} | "
            f"{pct(ret['target'][View.STRONG])} / {pct(lite.get(View.STRONG))} | "
            f"{num(q[View.SHIELDED]['grid'], '.1f').replace(MISSING, 'n/a')} | "
            f"{num(q[View.STRONG]['grid'], '.1f').replace(MISSING, 'n/a')} | "
            f"{num(q[View.SHIELDED]['psnr_gap_to_full'], '+.2f').replace(MISSING, 'n/a')} | "
            f"{num(q[View.STRONG]['psnr_gap_to_full'], '+.2f').replace(MISSING, 'n/a')} |")
    gal = sorted({n for e in r["sizes"].values() for n in e["retrieval_r1"]["gallery"].values()})
    m = r["model"]
    json_path, docs_path = geometry_paths(r)
    lines += ["", f"Images: labelled (Imagenette val as 3:2 photos; 10-way zero-shot top-1 after the standard CLIP "
              "preprocessing, shorter side to 224 and centre crop; chance 10%) + unlabelled (Kodak, BSDS500 test; "
              "they count in R@1 and quality). R@1: the view's own original ranked first among "
              f"{'-'.join(str(n) for n in dict.fromkeys(gal[:1] + gal[-1:])) or 'n/a'} originals. Grid: energy of "
              "(view - full) at the decoder's 16- and 8-pixel lattice harmonics against the neighbouring "
              f"frequencies (1 = no peak). Model `{m['id']}` (sha256 `{m['weights_sha256'][:12]}`), quality "
              f"{r['quality']}; `{json_path}`, made by `{r['command']}`; every table (the other "
              f"preprocessings, the judges, re-encoding, tiles, 1000-way agreement) in `{docs_path}`."]
    if r.get("missing"):
        lines.append(f"Not measured (time budget): {', '.join(r['missing'])}.")
    return "\n".join(lines)


def geometry_block() -> str:
    p = ROOT / "results" / "shield-geometry.json"
    if not p.exists():
        return "_not generated yet: run `python benchmarks/shield_geometry.py`_"
    return geometry_headline(json.loads(p.read_text()))


def fuzz_decoder_block() -> str:
    """The decoder fuzzer's counts (``results/fuzz-decoder.json``, from ``benchmarks/fuzz_decoder.py``)."""
    path = ROOT / "results" / "fuzz-decoder.json"
    if not path.exists():
        return "(no results yet: run `python benchmarks/fuzz_decoder.py`)"
    r = json.loads(path.read_text())
    lines = [f"{r['cases']} cases in forked children and {r['cli_cases']} through a fresh `psic decode` "
             f"(model `{r['model']}`, seed {r['seed']}, {r['boundary_sweep_cases']} of them the every-boundary "
             f"truncation sweep) in {r['seconds']} s; slowest case {r['slowest_case_seconds']} s.", "",
             "| failure | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["failures"].items()]
    lines += ["", "| mutation | outcomes |", "|---|---|"]
    lines += [f"| {k} | " + ", ".join(f"{o} {n}" for o, n in v.items()) + " |" for k, v in r["by_mutation"].items()]
    return "\n".join(lines)


BLOCKS = {
    "geometry": geometry_block,
    "summary": summary_block,
    "privacy": lambda: md_block("docs/privacy.md"),
    "privacy-msh": lambda: md_block("docs/privacy-msh.md"),
    "attacks": lambda: md_block("docs/attacks.md"),
    "faces": lambda: md_block("docs/faces.md"),
    "ablation": lambda: md_block("docs/ablation-weighting.md"),
    "bench": lambda: text_block("results/bench_batch.txt"),
    "fuzz": lambda: "```\n" + (ROOT / "results/fuzz_reader.txt").read_text().strip() + "\n```",
    "fuzz-decoder": fuzz_decoder_block,
    "timing": timing_block,
    "kodak-rd": kodak_block,
    "kodak-rd-msh": lambda: kodak_block("kodak-rd-msh"),
    "vlp": vlp_block,
}


NAN = re.compile(r"\bnan\b", re.I)


class NanInBlock(ValueError):
    """A block would publish ``nan``."""


def render(text: str) -> tuple[str, list[str], list[str]]:
    """``text`` with every block re-rendered, the names of the blocks that changed and of those it holds."""
    changed, found = [], []
    for name, fn in BLOCKS.items():
        pat = re.compile(rf"(<!-- BEGIN {name} -->\n)(.*?)(<!-- END {name} -->)", re.S)

        def fill(m: re.Match, name: str = name, fn=fn) -> str:
            body = fn() + "\n"
            if NAN.search(body):
                raise NanInBlock(f"block {name!r} would publish nan; fix the file it is rendered from")
            found.append(name)
            if body != m.group(2):
                changed.append(name)
            return m.group(1) + body + m.group(3)

        text = pat.sub(fill, text)
    return text, changed, found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block is out of date")
    args = ap.parse_args(argv)
    rendered, seen = {}, []
    try:
        for target in TARGETS:
            old = (ROOT / target).read_text()
            new, changed, found = render(old)
            rendered[target] = (old, new, changed)
            seen += found
    except NanInBlock as e:
        print(f"update_readme: {e}", file=sys.stderr)
        return 2
    lost = [name for name in BLOCKS if name not in seen]
    if lost:
        print(f"update_readme: no BEGIN/END markers for {', '.join(lost)} in {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    stale = 0
    for target, (old, new, changed) in rendered.items():
        if not args.check:
            if new != old:
                (ROOT / target).write_text(new)
        elif changed:
            stale += 1
            print(f"{target}: generated blocks out of date: {', '.join(changed)} "
                  "(run python scripts/update_readme.py)", file=sys.stderr)
            sys.stderr.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), target,
                                                       "rendered", n=0))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
