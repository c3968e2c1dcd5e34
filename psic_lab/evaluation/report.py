"""Where every evaluation writes: raw numbers to ``results/<name>.json``, the table to ``docs/<name>.md``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def save(name: str, res: dict, lines: list[str]) -> None:
    """Write ``res`` as JSON and ``lines`` as the markdown report (paths relative to the working directory)."""
    Path("results").mkdir(exist_ok=True)
    Path("docs").mkdir(exist_ok=True)
    Path(f"results/{name}.json").write_text(json.dumps(res, indent=2))
    Path(f"docs/{name}.md").write_text("\n".join(lines) + "\n")


def provenance(script: str, argv: list[str], root: Path) -> dict:
    """The command that measured a results file and the revision it ran at (for the page's first line)."""
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
    return {"command": f"python {script} " + " ".join(argv), "git_revision": git}


def add_page_options(ap: argparse.ArgumentParser, out: Path, docs: Path) -> None:
    """``--out``, ``--docs``, ``--render-only`` and ``--check``, for a benchmark that measures to JSON and
    renders a page from it."""
    ap.add_argument("--out", type=Path, default=out, help="the JSON to write (and to render)")
    ap.add_argument("--docs", type=Path, default=docs, help="the page to render")
    ap.add_argument("--render-only", action="store_true", help="only re-render --docs from --out")
    ap.add_argument("--check", action="store_true", help="exit 1 if --docs differs from the rendering of --out")


def run_page(args: argparse.Namespace, root: Path, measure: Callable[[argparse.Namespace], dict],
             render: Callable[[dict, Path], str]) -> int:
    """Measure to ``args.out`` (unless ``--render-only``) and render ``args.docs`` from it; with ``--check``, only
    compare the committed page with the rendering of the committed JSON (paths relative to ``root``)."""
    out, docs = root / args.out, root / args.docs
    if args.check:
        return 0 if docs.read_text() == render(json.loads(out.read_text()), args.out) else 1
    if not args.render_only:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(measure(args), indent=2) + "\n")
    docs.write_text(render(json.loads(out.read_text()), args.out))
    print(f"wrote {args.docs}", file=sys.stderr)
    return 0
