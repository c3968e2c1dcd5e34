"""The white-box residual bound in docs/shield-design.md is the one rendered from its committed JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mod():
    spec = importlib.util.spec_from_file_location("residual_bound", ROOT / "benchmarks" / "residual_bound.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_design_doc_tables_match_results():
    """The bound's table and each network's (``results/residual-net-*.json``) are what their JSON renders."""
    mod = _mod()
    files = [ROOT / "results" / "residual-bound.json", *sorted((ROOT / "results").glob("residual-net-*.json"))]
    for path in files:
        res = json.loads(path.read_text())
        assert mod.pasted(ROOT / "docs" / "shield-design.md", path.stem) == mod.render_md(res, path.stem), (
            f"docs/shield-design.md is stale: python benchmarks/residual_bound.py --render-only --out {path}")


def test_render_shows_every_measured_residual():
    mod = _mod()
    pre = {"short224": 1.0, "short336": 0.75, "short448": 0.5, "squash224": 1.0}
    res = {"size": [64, 43], "steps": 2, "eot": "all", "command": "c", "rows": [{}],
           "network": {"name": "ir9", "weights": "w/ir9.safetensors", "rms": {"shielded": 4.5}},
           "summary": {"original": pre,
                       "net_shielded": {**pre, "short224": 0.5, "psnr": 37.0},
                       "thumb0_rms4.5": {"short224": 0.25, "short336": 0.0, "short448": 1.0, "squash224": 0.0,
                                         "psnr": 36.1}}}
    md = mod.render_md(res)
    assert "| residual | PSNR to the image (dB) | short224 | short336 | short448 | squash224 |" in md
    assert "| full resolution, RMS 4.5 levels | 36.1 | 25% | 0% | 100% | 0% |" in md
    assert "| network `ir9`, shielded view (RMS 4.5 levels at 224) | 37.0 | 50% | 75% | 50% | 100% |" in md
    assert "all four preprocessings each step" in md and "one forward pass from `w/ir9.safetensors`" in md
    assert md.startswith(mod.START) and md.endswith(mod.END)


def test_render_shows_the_embedding_cosine_when_measured():
    """Similarity search ranks by the embedding: the table shows its cosine to the original when the JSON has it."""
    mod = _mod()
    pre = {"short224": 1.0, "short336": 1.0, "short448": 1.0, "squash224": 1.0}
    res = {"size": [64, 43], "steps": 2, "eot": "all", "command": "c", "rows": [{}],
           "network": {"name": "up9", "weights": "w/up9.safetensors", "rms": {"shielded": 4.5}},
           "summary": {"original": pre, "net_shielded": {**pre, "psnr": 35.0, "cos": 0.25}}}
    md = mod.render_md(res)
    assert "| squash224 | embedding cos to the original (short224) |" in md
    assert "| network `up9`, shielded view (RMS 4.5 levels at 224) | 35.0 | 100% | 100% | 100% | 100% | 0.25 |" in md
    assert "| none (the image) | n/a | 100% | 100% | 100% | 100% | 1.00 |" in md
    del res["summary"]["net_shielded"]["cos"]
    assert "embedding cos" not in mod.render_md(res)
