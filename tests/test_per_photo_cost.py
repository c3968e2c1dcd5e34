"""The per-photo cost page is the one rendered from its committed JSON, and it shows every measured size."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mod():
    spec = importlib.util.spec_from_file_location("per_photo_cost", ROOT / "benchmarks" / "per_photo_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_page_matches_results():
    mod = _mod()
    res = json.loads((ROOT / mod.OUT).read_text())
    assert (ROOT / mod.DOCS).read_text() == mod.render_md(res), (
        "docs/per-photo-cost.md is stale: python benchmarks/per_photo_cost.py --render-only")


def test_render_has_a_row_per_size_with_its_ratio():
    mod = _mod()
    res = {"command": "c", "git_revision": "r", "threads": 1, "quality": 2,
           "model": {"weights": "w", "steps": "1"},
           "per_photo": {"steps": 40, "against": ["psic-vlp-mini"], "texture_mask": True},
           "sizes": {"512": {"size": "512x341", "megapixels": 0.17, "photos": 2, "decode_full_s": 0.5,
                             "per_photo_s": 20.0, "peak_rss_mib": 2000.0},
                     "2048": {"size": "2048x1365", "megapixels": 2.8, "photos": 1, "decode_full_s": 2.0,
                              "per_photo_s": 90.0, "peak_rss_mib": 5000.0}}}
    md = mod.render_md(res)
    rows = [line for line in md.splitlines() if line.startswith("| 512 ") or line.startswith("| 2048 ")]
    assert len(rows) == 2
    assert "| 40x |" in rows[0] and "| 45x |" in rows[1]
    assert "texture mask" in md
