"""benchmarks/transform_ceiling.py: each committed page is the rendering of its JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

from .conftest import REPO

SPEC = importlib.util.spec_from_file_location("transform_ceiling", REPO / "benchmarks" / "transform_ceiling.py")
tc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tc)

#: every committed page and its JSON (one weights file: the legacy page; several: side by side)
PAGES = [(tc.OUT, tc.DOCS), (Path("results/transform-ceiling-hq.json"), Path("docs/transform-ceiling-hq.md"))]


@pytest.mark.parametrize(("out", "docs"), PAGES, ids=[str(d) for _, d in PAGES])
def test_committed_page_matches_results(out, docs):
    res = json.loads((REPO / out).read_text())
    assert (REPO / docs).read_text() == tc.render(res, out)
    assert tc.main(["--check", "--out", str(out), "--docs", str(docs)]) == 0
    first = res["models"][0] if "models" in res else res
    first["coded_psnr"][next(iter(first["coded_psnr"]))] += 1.0
    assert tc.render(res, out) != (REPO / docs).read_text()  # an edited number shows up as drift
