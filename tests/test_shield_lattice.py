"""benchmarks/shield_lattice.py renders one row per weights file, size and keyless view from its JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

from psic_cli.views import View

ROOT = Path(__file__).resolve().parents[1]
SHIELDED, STRONG = str(View.SHIELDED), str(View.STRONG)


def _module():
    spec = importlib.util.spec_from_file_location("shield_lattice", ROOT / "benchmarks/shield_lattice.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _res(*results: dict) -> dict:
    return {"command": "python benchmarks/shield_lattice.py ...", "git_revision": "0123456789ab", "quality": 2,
            "out": "results/x.json", "results": list(results)}


def test_render_gives_a_row_per_weights_size_and_view():
    view = {"psnr": 26.9, "gap_db": -0.6, "grid": 2.5, "lattice_rms": 0.125, "r1": 0.5}
    size = {"images": 4, "target_top1": {"original": 1.0, str(View.FULL): 0.75, SHIELDED: 0.25, STRONG: 0.0},
            "psnr_full": 27.5, "views": {SHIELDED: view, STRONG: {**view, "gap_db": -2.25}}}
    md = _module().render(_res({"weights": "a/one.safetensors", "steps": 10, "sizes": {"224": size, "512": size}},
                               {"weights": "b/two.safetensors", "steps": 20, "sizes": {"224": size}}))
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == 6
    assert rows[0] == ("| `one.safetensors` | 10 | 224 | 4 | 100% | 75% | shielded | 25% | 27.50 | - | -0.60 | 2.5 "
                       "| 0.12 | 50% |")
    assert rows[1].startswith("| `one.safetensors` | 10 | 224 | 4 | 100% | 75% | strong | 0% | 27.50 | - | -2.25 |")
    assert rows[4].startswith("| `two.safetensors` | 20 | 224 |")


def test_records_from_before_the_views_layout_render_as_the_shielded_view():
    size = {"images": 4, "target_top1": {"original": 1.0, str(View.FULL): 0.75, SHIELDED: 0.25}, "psnr_full": 27.5,
            "psnr_shielded": 26.9, "gap_db": -0.6, "grid": 2.5, "lattice_rms": 0.125}
    md = _module().render(_res({"weights": "a/one.safetensors", "steps": 10, "sizes": {"224": size}}))
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert rows == ["| `one.safetensors` | 10 | 224 | 4 | 100% | 75% | shielded | 25% | 27.50 | - | -0.60 | 2.5 "
                    "| 0.12 | - |"]


def test_a_reference_gives_each_full_view_its_drop():
    size = {"images": 4, "target_top1": {"original": 1.0, str(View.FULL): 0.75, SHIELDED: 0.25}, "psnr_full": 27.5,
            "views": {SHIELDED: {"psnr": 26.9, "gap_db": -0.6, "grid": 2.5, "lattice_rms": 0.125, "r1": 0.5}}}
    res = _res({"weights": "a/one.safetensors", "steps": 10, "sizes": {"224": size, "512": size}})
    res["reference"] = {"weights": "rd/ref.safetensors", "weights_sha256": "ab" * 32, "psnr_full": {"224": 27.75}}
    md = _module().render(res)
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert "| 27.50 | -0.25 | -0.60 |" in rows[0]
    assert "| 27.50 | - | -0.60 |" in rows[1]  # no reference measured at 512
    assert "`ref.safetensors`, sha256 `abababababab`" in md


@pytest.mark.parametrize("page", sorted(p.stem for p in (ROOT / "docs").glob("shield-lattice*.md")))
def test_the_committed_page_is_its_json_rendered(page):
    res = json.loads((ROOT / f"results/{page}.json").read_text())
    assert _module().render(res) == (ROOT / f"docs/{page}.md").read_text()
