"""benchmarks/shield_lattice.py renders one row per weights file and size from its JSON."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("shield_lattice", ROOT / "benchmarks/shield_lattice.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_render_gives_a_row_per_weights_and_size():
    size = {"images": 4, "target_top1": {"original": 1.0, "full": 0.75, "shielded": 0.25}, "psnr_full": 27.5,
            "psnr_shielded": 26.9, "gap_db": -0.6, "grid": 2.5, "lattice_rms": 0.125}
    res = {"command": "python benchmarks/shield_lattice.py ...", "git_revision": "0123456789ab", "quality": 2,
           "out": "results/x.json",
           "results": [{"weights": "a/one.safetensors", "steps": 10, "sizes": {"224": size, "512": size}},
                       {"weights": "b/two.safetensors", "steps": 20, "sizes": {"224": size}}]}
    md = _module().render(res)
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == 3
    assert rows[0] == "| `one.safetensors` | 10 | 224 | 4 | 100% | 75% | 25% | 27.50 | -0.60 | 2.5 | 0.12 |"
    assert rows[2].startswith("| `two.safetensors` | 20 | 224 |")


def test_the_committed_page_is_its_json_rendered():
    import json

    res = json.loads((ROOT / "results/shield-lattice.json").read_text())
    assert _module().render(res) == (ROOT / "docs/shield-lattice.md").read_text()
