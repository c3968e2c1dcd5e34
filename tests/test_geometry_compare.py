"""The old-against-new geometry tables are rendered from two results files, never typed."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mod():
    spec = importlib.util.spec_from_file_location("geometry_compare", ROOT / "scripts" / "geometry_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tables_show_old_and_new_and_paste_between_markers(tmp_path):
    mod = _mod()
    old = json.loads((ROOT / "results" / "shield-geometry.json").read_text())
    new = copy.deepcopy(old)
    new["sizes"]["224"]["top1"]["target/short224"]["shielded"] = 0.125
    new["sizes"]["224"]["retrieval_r1"]["target"]["shielded"] = 0.0
    md = mod.compare_md(old, new, "A", "B")
    row = next(line for line in md.splitlines() if line.startswith("| 224 | short224 |"))
    assert "56% → 12%" in row
    assert any(line.startswith("| 224 |") and "| target |" in line and "43% → 0%" in line for line in md.splitlines())
    assert "subtle gap" in md and "strong grid" in md
    doc = tmp_path / "d.md"
    doc.write_text(f"intro\n{mod.START}\nstale\n{mod.END}\noutro\n")
    mod.paste(doc, md)
    text = doc.read_text()
    assert "stale" not in text and "56% → 12%" in text and text.startswith("intro") and text.endswith("outro\n")
    mod.paste(doc, md)
    assert doc.read_text() == text  # idempotent
    assert "the same images in both runs" in md
    shorter = copy.deepcopy(old)
    shorter["sizes"]["224"]["labelled_images"] -= 1  # a run cut short by its time limit
    md = mod.compare_md(old, shorter, "A", "B")
    assert "the same images in both runs" not in md and "cut short" in md
    (tmp_path / "e.md").write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        mod.paste(tmp_path / "e.md", md)


def test_named_sections_are_pasted_apart(tmp_path):
    mod = _mod()
    s2, e2 = mod.markers("geo2")
    doc = tmp_path / "d.md"
    doc.write_text(f"{mod.START}\nA\n{mod.END}\n{s2}\nB\n{e2}\n")
    mod.paste(doc, "new\n", "geo2")
    assert mod.pasted(doc) == "A\n" and mod.pasted(doc, "geo2") == "new\n"


# the tables in docs/shield-design.md, each rendered from two committed results files
DESIGN_TABLES = [
    ("", "shield-geometry-geo1-old.json", "shield-geometry-geo1.json", ("psic-sh", "psic-sh-geo1")),
    ("geo2", "shield-geometry-geo1.json", "shield-geometry-geo2.json", ("psic-sh-geo1", "psic-sh-geo2")),
    ("geo3", "shield-geometry-geo1.json", "shield-geometry-geo3.json", ("psic-sh-geo1", "psic-sh-geo3")),
    ("ir2", "shield-geometry-geo1.json", "shield-geometry-ir2.json", ("psic-sh-geo1", "psic-sh-ir2")),
    ("transfer-large", "shield-geometry-perphoto-budget40-large.json", "shield-geometry-perphoto-transfer-large.json",
     ("target margin only", "with both changes")),
    ("transfer-surrogate", "shield-geometry-perphoto-transfer.json", "shield-geometry-perphoto-surrogate.json",
     ("target only", "target + surrogate-scratch")),
    ("mask", "shield-geometry-perphoto-transfer.json", "shield-geometry-perphoto-mask.json",
     ("unmasked", "texture mask")),
    ("mask-large", "shield-geometry-perphoto-transfer-large.json", "shield-geometry-perphoto-mask-large.json",
     ("unmasked", "texture mask")),
]


@pytest.mark.parametrize(("section", "old", "new", "names"), DESIGN_TABLES)
def test_design_doc_tables_match_their_results(section, old, new, names):
    mod = _mod()
    res = ROOT / "results"
    block = mod.compare_md(json.loads((res / old).read_text()), json.loads((res / new).read_text()), *names)
    assert mod.pasted(ROOT / "docs" / "shield-design.md", section) == block, (
        f"docs/shield-design.md is stale: python scripts/geometry_compare.py results/{old} results/{new} "
        f"--names {' '.join(names)} --docs docs/shield-design.md" + (f" --section {section}" if section else ""))
