"""The training loop on a toy stage: schedule, log, checkpoint, resume, skipped steps, time limit."""

import dataclasses
import json
import os
import signal
from dataclasses import dataclass

import pytest
import torch

from psic_cli.models.config import load_config
from psic_lab.training.trainer import Trainer, cosine_lr, read_checkpoint


@dataclass(frozen=True)
class ToyConfig:
    run_dir: str
    steps: int = 4
    lr: float = 0.1
    lr_final: float = 0.01
    log_every: int = 2
    ckpt_every: int = 3
    max_minutes: float | None = None


class ToyStage:
    """Fit w to 3 with plain SGD; ``bad_steps`` return a NaN loss once each."""

    name = "toy"
    clip = 10.0

    def __init__(self, cfg: ToyConfig, bad_steps=()) -> None:
        self.config = cfg
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.model.cfg = load_config("psic-sh")
        self.optimizers = {"opt": torch.optim.SGD(self.model.parameters(), lr=cfg.lr)}
        self.clip_params = list(self.model.parameters())
        self.bad = set(bad_steps)
        self.calls = 0
        self.started_at = None

    def fresh_start(self):
        with torch.no_grad():
            self.model.weight.zero_()
        return 0, {"event": "fresh"}

    def load_state(self, extra):
        self.calls = extra["calls"]

    def start(self, step):
        self.started_at = step

    def loss(self, step):
        loss = (self.model.weight.sum() - 3) ** 2
        if step in self.bad:
            self.bad.discard(step)
            loss = loss * float("nan")
        return loss, {"loss": float(loss.detach())}

    def after_step(self):
        self.calls += 1
        return {"calls": self.calls}

    def summary(self, recs):
        return {"loss": recs[-1]["loss"], "n": len(recs)}

    def state(self):
        return {"calls": self.calls}


def _log(run_dir):
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def test_runs_logs_checkpoints_and_resumes(tmp_path):
    cfg = ToyConfig(run_dir=str(tmp_path / "run"))
    stage = ToyStage(cfg, bad_steps={1})
    ckpt = Trainer(cfg).run(stage)
    log = _log(tmp_path / "run")
    assert log[0] == {"event": "fresh"}
    assert {"event": "non-finite loss, step skipped", "step": 1} in log  # skipped, then retried
    assert [(r["step"], r["n"]) for r in log if "loss" in r] == [(2, 2), (4, 2)]
    assert stage.calls == 4  # after_step only after a real step
    state = read_checkpoint(ckpt)
    assert state["step"] == 4 and state["extra"] == {"stage": "toy", "calls": 4}
    assert set(state) >= {"model", "opt", "model_config", "train_config"} and "aux_opt" not in state
    w = float(stage.model.weight.detach())

    more = ToyConfig(run_dir=cfg.run_dir, steps=6)
    again = ToyStage(more)
    Trainer(more).run(again)
    assert again.started_at == 4 and again.calls == 6
    assert {"event": "resume", "step": 4} in _log(tmp_path / "run")
    assert abs(float(again.model.weight) - 3) < abs(w - 3)  # it continued from the checkpoint's weights


def test_learning_rate_schedule_and_group_multiplier(tmp_path):
    cfg = ToyConfig(run_dir=str(tmp_path / "run"), steps=4, log_every=1)
    stage = ToyStage(cfg)
    stage.optimizers["opt"].param_groups[0]["lr_mult"] = 10.0
    Trainer(cfg).run(stage)
    lrs = [r["lr"] for r in _log(tmp_path / "run") if "lr" in r]
    assert lrs == [pytest.approx(cosine_lr(s, 4, 0.1, 0.01)) for s in (1, 2, 3, 4)]
    assert stage.optimizers["opt"].param_groups[0]["lr"] == pytest.approx(10 * cosine_lr(3, 4, 0.1, 0.01))


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    cfg = ToyConfig(run_dir=str(tmp_path / "run"), steps=100, ckpt_every=50, max_minutes=0.0)
    Trainer(cfg).run(ToyStage(cfg))
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1
    assert _log(tmp_path / "run")[-1] == {"event": "time limit", "step": 1}


def test_checkpoint_of_another_model_is_refused(tmp_path):
    cfg = ToyConfig(run_dir=str(tmp_path / "run"), steps=1)
    Trainer(cfg).run(ToyStage(cfg))
    other = ToyStage(ToyConfig(run_dir=cfg.run_dir, steps=2))
    other.model.cfg = dataclasses.replace(other.model.cfg, N=other.model.cfg.N + 1)
    with pytest.raises(SystemExit, match="another model config"):
        Trainer(other.config).run(other)


def test_checkpoint_from_before_a_new_config_field_resumes(tmp_path):
    """A checkpoint written before ``scale_grid`` existed (field absent) resumes: it has the default."""
    cfg = ToyConfig(run_dir=str(tmp_path / "run"), steps=1)
    ckpt = Trainer(cfg).run(ToyStage(cfg))
    state = read_checkpoint(ckpt)
    old = json.loads(state["model_config"])
    del old["scale_grid"]
    state["model_config"] = json.dumps(old)
    torch.save(state, ckpt)
    more = ToyConfig(run_dir=cfg.run_dir, steps=2)
    Trainer(more).run(ToyStage(more))
    assert read_checkpoint(ckpt)["step"] == 2


def test_sigterm_stops_with_a_checkpoint(tmp_path):
    """``kill`` between checkpoints loses nothing: the step finishes, a checkpoint is written, run returns."""

    class Killed(ToyStage):
        def loss(self, step):
            if step == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().loss(step)

    cfg = ToyConfig(run_dir=str(tmp_path / "run"), steps=100, ckpt_every=50)
    Trainer(cfg).run(Killed(cfg))
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    assert _log(tmp_path / "run")[-1] == {"event": "stopped by SIGTERM", "step": 2}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed afterwards
