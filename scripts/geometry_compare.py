"""Old against new: two ``benchmarks/shield_geometry.py`` results files of the same sizes and images, as tables.

    python scripts/geometry_compare.py results/shield-geometry-geo1-old.json results/shield-geometry-geo1.json
    python scripts/geometry_compare.py OLD.json NEW.json --docs docs/shield-design.md   # paste between markers
    python scripts/geometry_compare.py OLD.json NEW.json --docs docs/shield-design.md --section geo2

Every cell is ``old → new``.  The tables: the target's 10-way top-1 on the labelled images under each
preprocessing (and the strong view after re-encoding, downscaling and tiling), the unseen judges' top-1 after
short224, retrieval R@1 among the gallery of originals, and the quality (full-view PSNR, each keyless view's
PSNR gap to its own full view, the grid score of view - full).  With ``--docs`` the tables replace what lies
between ``<!-- geometry-compare:start -->`` and ``<!-- geometry-compare:end -->`` in that file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from psic_cli.views import View

VIEWS = (View.FULL, View.SHIELDED, View.STRONG)
NAMES = {v: str(v.shield_level or v) for v in VIEWS}  # the table headers: subtle, not shielded
START, END = "<!-- geometry-compare:start -->", "<!-- geometry-compare:end -->"


def markers(section: str = "") -> tuple[str, str]:
    """The start and end markers of a named section (``""``: the unnamed one)."""
    if not section:
        return START, END
    return f"<!-- geometry-compare:{section}:start -->", f"<!-- geometry-compare:{section}:end -->"


def _pct(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.0%}"


def _num(v, spec: str) -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def _pair(a, b, f) -> str:
    return f"{f(a)} → {f(b)}"


def _cell(old_q: dict, new_q: dict, view: View, key: str, spec: str) -> str:
    """One quality cell: ``old -> new`` of ``key`` of ``view``."""
    return _pair(old_q[view].get(key), new_q[view].get(key), lambda v: _num(v, spec))


def compare_md(old: dict, new: dict, old_name: str = "old", new_name: str = "new") -> str:
    """The comparison tables (markdown) of the sizes both results files measured."""
    sizes = [k for k in old["sizes"] if k in new["sizes"]]
    counts = ("labelled_images", "unlabelled_images")
    same = {k: all(old["sizes"][k][c] == new["sizes"][k][c] for c in counts) for k in sizes}
    lines = [f"Each cell: {old_name} → {new_name}. {old_name}: `{old['model']['weights']}` "
             f"(sha256 `{old['model']['weights_sha256'][:12]}`, {old['model'].get('steps')} steps of its last stage); "
             f"{new_name}: `{new['model']['weights']}` (sha256 `{new['model']['weights_sha256'][:12]}`, "
             f"{new['model'].get('steps')} steps). Quality {new['quality']}, "
             + ("the same images in both runs:" if all(same.values())
                else "the same list of images, cut short where a run stopped at its time limit (old / new):"), ""]
    lines += ["| long side | image sizes | labelled | unlabelled |", "|---|---|---|---|"]
    for s in sizes:
        o, n = old["sizes"][s], new["sizes"][s]
        cells = (f"{n['labelled_images']}", f"{n['unlabelled_images']}") if same[s] else (
            f"{o['labelled_images']} / {n['labelled_images']}", f"{o['unlabelled_images']} / {n['unlabelled_images']}")
        lines.append(f"| {s} | {', '.join(n['sizes'])} | {cells[0]} | {cells[1]} |")
    lines += ["", "**Target `psic-vlp-mini`, 10-way top-1 on the labelled images** (goal: subtle ≤ 20%, strong ≤ 10% "
              "under every preprocessing; chance 10%). The strong view's extra rows: after JPEG q75, WebP q75 or a "
              "0.5x downscale (then short224), and per tile of a 2x2 grid.", "",
              "| long side | preprocessing | original | full | subtle | strong |", "|---|---|---|---|---|---|"]
    for s in sizes:
        ot, nt = old["sizes"][s].get("top1", {}), new["sizes"][s].get("top1", {})
        for m in nt:
            if not m.startswith("target/") or m not in ot:
                continue
            cells = [_pair(ot[m].get(v), nt[m].get(v), _pct) if v in nt[m] else "" for v in ("original", *VIEWS)]
            lines.append(f"| {s} | {m.split('/')[1]} | " + " | ".join(cells) + " |")
    judges = [m for m in next(iter(new["sizes"].values())).get("top1", {}) if not m.startswith("target/")]
    if judges:
        lines += ["", "**Unseen judges (never trained against), top-1 after short224**", "",
                  "| long side | judge | original | full | subtle | strong |", "|---|---|---|---|---|---|"]
        for s in sizes:
            ot, nt = old["sizes"][s].get("top1", {}), new["sizes"][s].get("top1", {})
            for m in judges:
                if m in ot and m in nt:
                    lines.append(f"| {s} | {m.split('/')[0]} | " + " | ".join(
                        _pair(ot[m].get(v), nt[m].get(v), _pct) for v in ("original", *VIEWS)) + " |")
    lines += ["", "**Retrieval R@1**: the decoded view's own original ranked first among the gallery of originals "
              "(should drop for the keyless views).", "",
              "| long side | queries | gallery | by | full | subtle | strong |", "|---|---|---|---|---|---|---|"]
    for s in sizes:
        orr, nr = old["sizes"][s]["retrieval_r1"], new["sizes"][s]["retrieval_r1"]
        for k, g in nr["gallery"].items():
            if k in orr:
                lines.append(f"| {s} | {nr['queries']} | {g} | {k} | " + " | ".join(
                    _pair(orr[k][v], nr[k][v], _pct) for v in VIEWS) + " |")
    lines += ["", "**Quality**: the full view's PSNR (dB); each keyless view's PSNR gap to its own full view (goal: "
              "subtle ≥ −1.0 dB, strong ≥ −3.0 dB); the grid score of (view − full) (1 = no lattice peak).", "",
              "| long side | full PSNR | subtle gap | strong gap | subtle grid | strong grid |",
              "|---|---|---|---|---|---|"]
    for s in sizes:
        oq, nq = old["sizes"][s]["quality"], new["sizes"][s]["quality"]
        cells = [_cell(oq, nq, View.FULL, "psnr", ".2f"), _cell(oq, nq, View.SHIELDED, "psnr_gap_to_full", "+.2f"),
                 _cell(oq, nq, View.STRONG, "psnr_gap_to_full", "+.2f"), _cell(oq, nq, View.SHIELDED, "grid", ".1f"),
                 _cell(oq, nq, View.STRONG, "grid", ".1f")]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pasted(doc: Path, section: str = "") -> str:
    """The block now between the markers of ``section`` in ``doc``; ValueError when the markers are missing."""
    start, end = markers(section)
    text = doc.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{doc}: no {start} ... {end} markers")
    return text.split(start, 1)[1].split(end, 1)[0].removeprefix("\n")


def paste(doc: Path, block: str, section: str = "") -> None:
    """Replace the text between the markers of ``section`` in ``doc`` by ``block``; ValueError when they are
    missing."""
    start, end = markers(section)
    text = doc.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{doc}: no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{block}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path, help="results of the weights compared against")
    ap.add_argument("new", type=Path, help="results of the new weights (same sizes and counts)")
    ap.add_argument("--names", nargs=2, default=("psic-sh", "psic-sh-geo1"), metavar=("OLD", "NEW"),
                    help="what to call the two weights in the tables")
    ap.add_argument("--docs", type=Path, help="paste the tables between the markers of this file")
    ap.add_argument("--section", default="", help="use the markers <!-- geometry-compare:SECTION:start/end -->")
    args = ap.parse_args(argv)
    block = compare_md(json.loads(args.old.read_text()), json.loads(args.new.read_text()), *args.names)
    if args.docs:
        paste(args.docs, block, args.section)
    else:
        sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
