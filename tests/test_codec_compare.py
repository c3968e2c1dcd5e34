"""benchmarks/codec_compare.py: BD-rate arithmetic, and the committed page is the JSON's rendering."""

import importlib.util
import json
from pathlib import Path

import pytest

from .conftest import REPO

SPEC = importlib.util.spec_from_file_location("codec_compare", REPO / "benchmarks" / "codec_compare.py")
cc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(cc)


def test_bd_rate_sign_and_size():
    anchor = {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr": [28.0, 30.0, 32.0, 34.0]}
    assert cc.bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    cheaper = {"bpp": [b * 0.8 for b in anchor["bpp"]], "psnr": anchor["psnr"]}
    assert cc.bd_rate(anchor, cheaper) == pytest.approx(-20.0, abs=1e-6)
    far = {"bpp": [1, 2], "psnr": [40.0, 42.0]}
    assert cc.bd_rate(anchor, far) is None  # no overlap: no number, never a nan


PAGES = [(cc.RESULTS, cc.DOC), (Path("results/codec-large-psic-sh.json"), Path("docs/codec-large-psic-sh.md")),
         (Path("results/codec-large-psic-msh2.json"), Path("docs/codec-large-psic-msh2.md")),
         (Path("results/codec-large-psic-msh2c.json"), Path("docs/codec-large-psic-msh2c.md")),
         (Path("results/codec-compare-psic-msh2.json"), Path("docs/codec-compare-psic-msh2.md")),
         (Path("results/codec-compare-effort.json"), Path("docs/codec-compare-effort.md")),
         (Path("results/codec-compare-psic-msh4.json"), Path("docs/codec-compare-psic-msh4.md")),
         (Path("results/codec-compare-psic-msh2c-cont.json"), Path("docs/codec-compare-psic-msh2c-cont.md")),
         (Path("results/codec-compare-psic-msh2r.json"), Path("docs/codec-compare-psic-msh2r.md"))]


@pytest.mark.parametrize(("results_rel", "doc_rel"), PAGES, ids=lambda p: Path(p).name)
def test_committed_page_matches_results(tmp_path, results_rel, doc_rel):
    results = REPO / results_rel
    if not results.exists():
        pytest.skip("not measured yet")
    assert (REPO / doc_rel).read_text() == cc.render(results)
    edited = json.loads(results.read_text())
    edited["speed"]["decode_ratio_psic_over_compressai"] += 1.0
    fake = tmp_path / "edited.json"
    fake.write_text(json.dumps(edited))
    assert cc.render(fake) != (REPO / doc_rel).read_text()  # an edited number shows up as drift


def _part(res: dict, first: int, shift: float) -> dict:
    part = json.loads(json.dumps(res))
    part["rd"]["first_image"] = first
    for c in part["rd"]["curves"].values():
        c["psnr"] = [p + shift for p in c["psnr"]]
    return part


def test_merge_averages_disjoint_parts_and_recomputes_the_bd_rates(tmp_path):
    res = json.loads((REPO / "results/codec-compare-effort.json").read_text())
    n = res["rd"]["images"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_part(res, 0, +0.5)))
    b.write_text(json.dumps(_part(res, n, -0.5)))
    merged = cc.merge([a, b], tmp_path / "m.json")
    assert merged["rd"]["images"] == 2 * n
    for k, c in res["rd"]["curves"].items():  # +0.5 dB and -0.5 dB average back to the original curve
        assert merged["rd"]["curves"][k]["psnr"] == pytest.approx(c["psnr"], abs=1e-4)
    for k, v in res["rd"]["efforts"].items():
        assert merged["rd"]["efforts"][k]["bd_rate_psnr_percent"]["webp"] == pytest.approx(
            v["bd_rate_psnr_percent"]["webp"], abs=1e-2)
    assert "images 1 to" in cc.render(tmp_path / "m.json")
    b.write_text(json.dumps(_part(res, n - 1, 0.0)))  # one image in both parts
    with pytest.raises(SystemExit, match="overlap"):
        cc.merge([a, b], tmp_path / "m.json")
    other = _part(res, n, 0.0)
    other["model"]["weights_sha256"] = "0" * 64
    b.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different weights"):
        cc.merge([a, b], tmp_path / "m.json")
