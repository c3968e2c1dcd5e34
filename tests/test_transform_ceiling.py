"""benchmarks/transform_ceiling.py: the committed page is the rendering of its JSON."""

import importlib.util
import json

from .conftest import REPO

SPEC = importlib.util.spec_from_file_location("transform_ceiling", REPO / "benchmarks" / "transform_ceiling.py")
tc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tc)


def test_committed_page_matches_results():
    res = json.loads((REPO / tc.OUT).read_text())
    assert (REPO / tc.DOCS).read_text() == tc.render(res)
    assert tc.main(["--check"]) == 0
    res["coded_psnr"][next(iter(res["coded_psnr"]))] += 1.0
    assert tc.render(res) != (REPO / tc.DOCS).read_text()  # an edited number shows up as drift
