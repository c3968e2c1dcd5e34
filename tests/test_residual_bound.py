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
    """The bound's table, each network's (``results/residual-net-*.json``), the label-free runs'
    (``results/residual-labelfree-*.json``), the transfer runs' (``results/residual-transfer-*.json``) and the
    coarse run's (``results/residual-coarse.json``) are what their JSON renders."""
    mod = _mod()
    files = [ROOT / "results" / "residual-bound.json", *sorted((ROOT / "results").glob("residual-net-*.json")),
             *sorted((ROOT / "results").glob("residual-labelfree-*.json")),
             *sorted((ROOT / "results").glob("residual-transfer-*.json")), ROOT / "results" / "residual-coarse.json"]
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


def test_render_names_the_surrogates_and_shows_the_judges_columns():
    """An optimisation against surrogates (``--against``) says so, and the unseen judges get their own columns."""
    mod = _mod()
    pre = {"short224": 1.0, "short336": 1.0, "short448": 1.0, "squash224": 1.0, "effnet-lite2 short224": 1.0}
    res = {"size": [64, 43], "steps": 3, "eot": "all", "command": "c", "rows": [{}],
           "against": ["effnet-lite1", "surrogate-scratch"], "judges": ["effnet-lite2 short224"],
           "summary": {"original": pre,
                       "thumb224_rms9": {**pre, "short224": 0.5, "effnet-lite2 short224": 0.25, "psnr": 29.1}}}
    md = mod.render_md(res)
    assert "| squash224 | effnet-lite2 short224 |" in md
    assert "| 224x224, RMS 9 levels | 29.1 | 50% | 100% | 100% | 100% | 25% |" in md
    assert "against `effnet-lite1` and `surrogate-scratch` only, without labels" in md
    assert "then the unseen judges' (effnet-lite2 short224)" in md


def test_the_unseen_judges_cannot_be_optimised_against(monkeypatch, capsys):
    import sys

    import pytest

    mod = _mod()
    monkeypatch.setattr(sys, "argv", ["residual_bound.py", "--against", "effnet-lite1", "judge-scratch",
                                      "--images", "1", "--steps", "1", "--out", "/nonexistent/x.json"])
    with pytest.raises(SystemExit, match="judge-scratch: the unseen judges only measure transfer"):
        mod.main()
