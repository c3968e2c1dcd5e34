"""benchmarks/refine_tuning.py: the committed page is the rendering of its JSON, and the runtime's step sizes."""

import importlib.util
import json

from .conftest import REPO

SPEC = importlib.util.spec_from_file_location("refine_tuning", REPO / "benchmarks" / "refine_tuning.py")
rt = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(rt)


def test_committed_page_matches_results():
    res = json.loads((REPO / rt.OUT).read_text())
    assert (REPO / rt.DOCS).read_text() == rt.render(res)
    assert rt.main(["--check"]) == 0
    res["rows"][0]["cost_change_percent"] += 50.0
    assert rt.render(res) != (REPO / rt.DOCS).read_text()  # an edited number shows up as drift


def test_the_page_records_the_runtime_settings():
    from psic_cli.models.backbones import ConditionalHyperprior as M

    s = json.loads((REPO / rt.OUT).read_text())["search"]
    assert (s["runtime_lr_q1"], s["runtime_lr_power"], s["runtime_z_lr"], s["runtime_warmup"]) == (
        M.REFINE_LR, M.REFINE_LR_POWER, M.REFINE_Z_LR, M.REFINE_WARMUP)
