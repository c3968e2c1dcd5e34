"""benchmarks/shield_geometry.py: image geometry, one image through the codec, the aggregation, the report."""

from __future__ import annotations

import importlib.util
import json
import math
import re

import numpy as np
import pytest
import torch

from .conftest import REPO, TEST_KEY

SPEC = importlib.util.spec_from_file_location("shield_geometry", REPO / "benchmarks" / "shield_geometry.py")
sg = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(sg)


def test_images_keep_their_aspect(tmp_path, rgb_image):
    from PIL import Image

    square = tmp_path / "sq.png"
    Image.fromarray(np.resize(rgb_image, (224, 224, 3))).save(square)
    assert sg.labelled_image(square, 224).shape == (149, 224, 3)  # centre rows cropped to 3:2
    assert sg.labelled_image(square, 6000).shape == (4000, 6000, 3)
    assert sg.labelled_image(square, 64).shape == (43, 64, 3)
    tall = tmp_path / "tall.png"
    Image.fromarray(np.resize(rgb_image, (300, 200, 3))).save(tall)
    assert sg.unlabelled_image(tall, 600).shape == (600, 400, 3)
    assert sg.unlabelled_image(tall, None).shape == (300, 200, 3)


class FakeIndexers:
    """Stands in for the towers: the 'prediction' is the image's mean brightness bucket."""

    judges: dict = {}

    def prepare(self, px, extras):
        x = torch.from_numpy(np.array(px)).permute(2, 0, 1)[None].float() / 255
        out = {"target/short224": x.mean().view(1, 1)}
        if extras:
            out["target/tiles2x2"] = x.mean().repeat(4, 1)
        return out

    def read(self, prepared):
        res = []
        for d in prepared:
            r = {k: ([int(v * 10) for v in t[:, 0]], [int(v * 1000) for v in t[:, 0]]) for k, t in d.items()}
            r["emb/target"] = torch.nn.functional.normalize(d["target/short224"][0].repeat(4) + 1, dim=0)
            res.append(r)
        return res


def test_one_image_through_the_codec(tiny_env, rgb_image):
    rec = sg.measure_image(rgb_image, "tiny-views", TEST_KEY, 1, FakeIndexers(), extras=True)
    assert rec["size"] == [100, 70] and rec["bpp"] > 0
    for v in sg.VIEWS:
        q = rec[f"quality/{v}"]
        assert math.isfinite(q["psnr"]) and 0 < q["ms_ssim"] <= 1
        assert "target/short224" in rec[v]
    assert "target/tiles2x2" in rec["strong"] and "target/tiles2x2" not in rec["shielded"]
    assert "grid" in rec["quality/shielded"] and "grid_vs_original" in rec["quality/full"]
    sg.read_records(FakeIndexers(), [rec])
    assert isinstance(rec["full"]["target/short224"][0], list)


def _rec(pred: dict[str, int], psnr: dict[str, float], size=(224, 149)) -> dict:
    r: dict = {"size": list(size), "bpp": 0.3, "encode_s": 0.1}
    for v in ("original", *sg.VIEWS):
        p = pred[v]
        r[v] = {m: ([p], [p + 100]) for m in ("target/short224", "target/short336", "target/short448",
                                            "target/squash224", "effnet-lite2/short224")}
        r[v].update({f"target/{e}": ([p], [p]) for e in ("jpeg75", "webp75", "half")})
        r[v]["target/tiles2x2"] = ([p, p, 9, 9], [p] * 4)
        r[v]["emb/target"] = torch.nn.functional.one_hot(torch.tensor(p), 12).float()
        r[v]["emb/effnet-lite2"] = r[v]["emb/target"]
    for v in sg.VIEWS:
        r[f"decode_s/{v}"] = 0.2
        r[f"quality/{v}"] = {"psnr": psnr[v], "ms_ssim": 0.9, "grid": float("nan") if v == "full" else 3.0,
                             "grid16": 2.0, "grid8": 1.0}
    return r


def test_summary_counts_what_it_should():
    # two labelled images of class 0 and 1, one unlabelled; the shielded view reads class 3 everywhere
    recs = [_rec({"original": c, "full": c, "shielded": 3, "strong": c if c == 0 else 7},
                 {"full": 30.0, "shielded": 29.0, "strong": 27.0}) for c in (0, 1, 2)]
    gallery = {"target": torch.eye(12)[[0, 1, 2, 3]], "effnet-lite2": torch.eye(12)[[0, 1, 2, 3]]}
    e = sg.summarise(recs, [0, 1, -1], [True, True, False], gallery, ("effnet-lite2",))
    t = e["top1"]["target/short224"]
    assert t == {"original": 1.0, "full": 1.0, "shielded": 0.0, "strong": 0.5}
    assert e["top1"]["target/tiles2x2"]["strong"] == pytest.approx(0.25)  # per tile: 2 of 8 tiles
    assert e["agreement_1000way"]["target/short224"]["shielded"] == 0.0
    assert e["agreement_1000way"]["target/short224"]["full"] == 1.0
    assert e["retrieval_r1"]["target"]["full"] == 1.0 and e["retrieval_r1"]["target"]["shielded"] == 0.0
    assert e["retrieval_r1"]["target"]["strong"] == pytest.approx(1 / 3)
    assert e["quality"]["strong"]["psnr_gap_to_full"] == pytest.approx(-3.0)
    assert e["quality"]["full"]["grid"] is None  # nan is not averaged into a number


def test_report_never_publishes_nan():
    recs = [_rec({"original": 0, "full": 0, "shielded": 5, "strong": 7}, {"full": 30.0, "shielded": 29.0,
                                                                          "strong": 27.0})]
    entry = sg.summarise(recs, [-1], [False], {"target": torch.eye(12)[[0]]}, ())
    entry.update(planned={"labelled": 0, "unlabelled": 1})
    entry["seconds"]["wall"] = 1.0
    res = {"command": "python benchmarks/shield_geometry.py --quick", "git_revision": "abc", "quality": 2,
           "host": {"torch_threads": 1}, "labelled_set": "l", "unlabelled_set": "u", "seconds": float("nan"),
           "model": {"id": "psic-sh", "weights": "w", "weights_sha256": "0" * 64}, "sizes": {"224": entry},
           "missing": ["6000"]}
    res = json.loads(json.dumps(res))  # as read back from the results file
    md, head = sg.report_md(res), sg.headline_md(res)
    for text in (md, head):
        assert not re.search(r"\bnan\b", text, re.I)
        assert "n/a" in text and "6000" in text


def test_committed_page_is_the_rendering_of_the_results():
    """docs/shield-geometry.md is re-rendered from results/shield-geometry.json: a hand edit of either fails."""
    results, page = REPO / "results" / "shield-geometry.json", REPO / "docs" / "shield-geometry.md"
    res = json.loads(results.read_text())
    if "sizes" not in res:
        pytest.skip("results/shield-geometry.json predates the size table")
    md = page.read_text()
    assert sg.report_md(res) == md
    assert not re.search(r"\bnan\b", md, re.I)
    assert set(res["sizes"]) | set(res["missing"]) >= {str(s) for s in sg.SIZES}


@pytest.mark.parametrize("results", sorted((REPO / "results").glob("shield-geometry-*.json")), ids=lambda p: p.stem)
def test_every_lab_page_is_the_rendering_of_its_results(results):
    """Each lab run's page (``docs/shield-geometry-<name>.md``, where one was written) matches its JSON."""
    page = REPO / "docs" / f"{results.stem}.md"
    if not page.exists():
        pytest.skip(f"{results.name} is only read by the old-to-new tables of docs/shield-design.md")
    assert sg.report_md(json.loads(results.read_text())) == page.read_text(), (
        f"{page.name} is stale: re-render it from {results.name}")


def test_lab_results_never_render_over_the_shipped_page(tmp_path, monkeypatch):
    """With another --out, the shipped weights' page is left alone unless --docs names a page."""
    monkeypatch.chdir(tmp_path)
    lab = tmp_path / "lab.json"
    lab.write_text((REPO / "results" / "shield-geometry.json").read_text())
    with pytest.raises(SystemExit) as e:
        sg.main(["--render-only", "--out", str(lab)])
    assert e.value.code == 2 and not (tmp_path / "docs").exists()
    assert sg.main(["--render-only", "--out", str(lab), "--docs", str(tmp_path / "lab.md")]) == 0
    assert (tmp_path / "lab.md").read_text() == (REPO / "docs" / "shield-geometry.md").read_text()


def test_plan_measures_the_costliest_sizes_first_and_skips_empty_ones():
    plan = sg.plan_sizes((224, 1024, 512), {224: (4, 2), 512: (3, 1), 1024: (2, 0)}, native_count=1)
    assert [e[0] for e in plan] == ["1024", "native", "512", "224"]
    assert [e[0] for e in sg.plan_sizes((512,), {512: (3, 1)}, native_count=0)] == ["512"]
