"""Training runs, resumes, exports loadable weights, and runs data-parallel under torchrun (gloo, 2 CPUs)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from .conftest import TINY, noise_images


@pytest.fixture()
def train_setup(tmp_path, key_file):
    data = noise_images(tmp_path / "data", 4)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    return data, cfg, key_file


def _args(data, cfg, key, run_dir, steps):
    return ["rd", "--model-id", str(cfg), "--data", str(data), "--key", str(key), "--run-dir", str(run_dir),
            "--steps", str(steps), "--batch", "2", "--patch", "64", "--log-every", "1", "--ckpt-every", "2"]


def test_train_resume_export(train_setup, tmp_path, monkeypatch):
    from psic_cli import zoo
    from psic_lab.training.__main__ import main

    data, cfg, key = train_setup
    run_dir = tmp_path / "run"
    assert main(_args(data, cfg, key, run_dir, 2)) == 0
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r and "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    assert main(_args(data, cfg, key, run_dir, 3)) == 0
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 2} in log and log[-1]["step"] == 3
    wdir = tmp_path / "w"
    wdir.mkdir()
    assert main(["export", str(run_dir / "checkpoint.pt"), str(wdir / "tiny-sh.safetensors"),
                 "--data-desc", "noise"]) == 0
    monkeypatch.setenv("PSIC_WEIGHTS", str(wdir))
    zoo.load_model.cache_clear()
    info = zoo.model_info("tiny-sh")
    assert info.metadata["steps"] == "3" and info.metadata["training_data"] == "noise"
    assert zoo.load_model("tiny-sh").model.cfg.M == TINY["M"]
    zoo.load_model.cache_clear()


@pytest.mark.slow
def test_torchrun_two_cpu_processes(train_setup, tmp_path):
    data, cfg, key = train_setup
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun not found next to the interpreter"
    run_dir = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "psic_lab.training",
           *_args(data, cfg, key, run_dir, 2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, timeout=300, capture_output=True)
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]  # rank 0 logs once per step
    assert (run_dir / "checkpoint.pt").exists()


def test_committed_weights_continue_even_when_the_config_gained_a_field(tmp_path):
    """``--init-from`` weights of this very config continue from their step count, also when they were written
    before a (defaulted) config field existed: the configs are compared as configs, not as JSON strings."""
    import json as _json

    from safetensors.torch import save_file

    from psic_cli.models import ModelConfig, build_model
    from psic_lab.training.train import warm_start


    cfg = ModelConfig.from_dict(TINY)
    model = build_model(cfg)
    old = _json.loads(cfg.to_json())
    old.pop("indexer_residual")  # as weights exported before the field was added
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"config": _json.dumps(old, sort_keys=True), "steps": "7"})
    assert warm_start(build_model(cfg), str(path))["continue_step"] == 7


def test_rd_stage_builds_its_optimisers_over_parameters_on_the_training_device(train_setup, tmp_path):
    """A resumed GPU run failed at its first step: the optimisers were built over CPU parameters, so the
    checkpoint's Adam moments were loaded onto the CPU, and only then was the model moved.  The model must be on
    the training device before the optimisers exist (``load_state_dict`` then moves the state there).  The meta
    device stands in for a GPU."""
    import torch

    from psic_lab.training.options import TrainConfig
    from psic_lab.training.train import RDStage

    data, cfg, key = train_setup
    tc = TrainConfig(model_id=str(cfg), data=[str(data)], key=str(key), run_dir=str(tmp_path / "run"))
    stage = RDStage(tc, torch.device("meta"))
    for opt in stage.optimizers.values():
        assert {p.device.type for g in opt.param_groups for p in g["params"]} == {"meta"}
