"""The device training script, on a tiny CPU run: it trains, exports weights with their step count, and
splits weights the device tool could not bring back whole."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, REPO


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None, reason="needs bash and split")
def test_a_tiny_cpu_run_exports_weights_in_parts_that_join(tmp_path):
    from safetensors import safe_open

    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "MODEL": "psic-msh2", "CONFIG": str(tmp_path / "none.json"),
           "INIT": str(tmp_path / "none.safetensors"), "DATA": str(EXAMPLES), "RUN_DIR": str(tmp_path / "run"),
           "MINUTES": "0.005", "BATCH": "1", "PATCH": "64", "AMP": "off", "COMPILE": "0", "PART_MIB": "1",
           "PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels")}
    r = subprocess.run(["bash", "scripts/train_device.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    parts = sorted(out.glob("psic-msh2.safetensors.part*"))
    assert len(parts) > 1 and not (out / "psic-msh2.safetensors").exists()
    assert all(p.stat().st_size <= 1024 * 1024 for p in parts)
    joined = tmp_path / "joined.safetensors"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with safe_open(str(joined), framework="pt") as f:
        meta = f.metadata()
        assert meta["model_id"] == "psic-msh2" and int(meta["steps"]) >= 1
        assert "g_s.0.weight" in f.keys() or any(k.startswith("g_s.") for k in f.keys())
    assert (out / "log.jsonl").stat().st_size > 0
