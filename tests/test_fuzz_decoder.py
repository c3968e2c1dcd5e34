"""A seeded slice of benchmarks/fuzz_decoder.py: no crash, hang, memory blow-up, internal error, multi-line
message or output written, on structure-aware mutations of valid files (tiny model)."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_fuzz_decoder_slice(tiny_env, tmp_path):
    out = tmp_path / "fuzz.json"
    env = {**os.environ, "PSIC_WEIGHTS": str(tiny_env), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fuzz_decoder.py"), "--model", "tiny-sh",
                        "--cases", "200", "--cli-cases", "1", "--seed", "7", "--wall", "60", "--json", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert out.exists(), r.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["failures"] == dict.fromkeys(report["failures"], 0), report["failure_cases"][:5]
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert report["boundary_sweep_cases"] > 50  # every field boundary of a seed file was cut
    kinds = {k.removeprefix("cli ") for k in report["by_mutation"]}
    assert {"geometry", "strings", "random-payload", "splice", "truncate"} <= kinds
    assert sum(report["outcomes"].values()) == 201
