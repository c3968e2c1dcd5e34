"""One training loop for every stage: resume, learning-rate schedule, JSON-lines log, time limit, checkpoints.

A stage (``train.RDStage``, ``shield.ShieldStage``) owns its model, optimisers, data and loss; the
:class:`Trainer` owns the steps around them.  A checkpoint holds the model, every named optimiser, the step,
the model config, the stage's options and the stage's own state (``extra``), so a run resumes where it
stopped.  Under DDP a non-finite loss is skipped by every rank together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from psic_cli.models.config import ModelConfig


class Stage(Protocol):
    """What the trainer needs from a training stage."""

    name: str  # the checkpoint's ``extra["stage"]`` (export reads it)
    config: Any  # the stage's options (a dataclass), saved in the checkpoint
    model: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]  # "opt" follows the schedule (times a group's "lr_mult")
    clip_params: list[torch.Tensor]
    clip: float
    # optional: ``stop_reason`` (str), set by the stage when it should end early; the trainer checkpoints, logs
    # the reason as the event and stops

    def fresh_start(self) -> tuple[int, dict | None]:
        """No checkpoint: initialise; return the first step and the event to log."""

    def load_state(self, extra: dict) -> None:
        """Restore the stage's own state from a checkpoint's ``extra``."""

    def start(self, step: int) -> None:
        """Load the data and seed the per-step generators (from ``step``, so a resumed run draws anew)."""

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one step (with gradient) and its terms for the log."""

    def after_step(self) -> dict[str, float]:
        """Called after each optimiser step; updates that must not follow a skipped step, their log terms."""

    def summary(self, recs: list[dict[str, float]]) -> dict[str, float]:
        """The log line of the steps since the last one."""

    def state(self) -> dict:
        """The stage's own state for the checkpoint's ``extra``."""


def cosine_lr(step: int, steps: int, lr: float, lr_final: float) -> float:
    """Constant ``lr`` for the first half of ``steps``, then cosine decay to ``lr_final``."""
    half = steps // 2
    if step < half:
        return lr
    t = (step - half) / max(1, steps - half)
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * t))


def all_finite(loss: torch.Tensor, distributed: bool) -> bool:
    """True when the loss is finite on every rank (one all-reduce under DDP), so all ranks skip together."""
    ok = torch.isfinite(loss.detach()).float().reshape(1)
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def init_distributed() -> tuple[bool, int, torch.device]:
    """Join the ``torchrun`` process group when there is one; return (distributed, rank, device)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    rank = 0
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = dist.get_rank()
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    return distributed, rank, device


def log_event(run_dir: Path, rec: dict) -> None:
    """Print ``rec`` as one JSON line and append it to ``run_dir/log.jsonl`` (rank 0 only)."""
    if is_main():
        line = json.dumps(rec)
        print(line, flush=True)
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(line + "\n")


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint (a trusted local file: it holds the optimiser state and the options)."""
    return torch.load(path, map_location="cpu", weights_only=False)


class Trainer:
    """Runs a :class:`Stage` to ``steps`` in ``run_dir``, resuming from ``run_dir/checkpoint.pt``.

    Args:
        cfg: the stage's options; the trainer reads ``run_dir``, ``steps``, ``lr``, ``lr_final``,
            ``log_every``, ``ckpt_every`` and ``max_minutes``.
        distributed: under ``torchrun``: skip non-finite steps on all ranks together, log and save on rank 0.
    """

    def __init__(self, cfg: Any, distributed: bool = False) -> None:
        self.cfg = cfg
        self.distributed = distributed
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.run_dir / "checkpoint.pt"

    def lr_at(self, step: int) -> float:
        return cosine_lr(step, self.cfg.steps, self.cfg.lr, self.cfg.lr_final)

    def log(self, rec: dict) -> None:
        log_event(self.run_dir, rec)

    def resume(self, stage: Stage) -> int:
        """Load the checkpoint into ``stage`` if there is one, else start it fresh; return the step."""
        if not self.checkpoint.exists():
            step, event = stage.fresh_start()
            if event:
                self.log(event)
            return step
        state = read_checkpoint(self.checkpoint)
        # Compare as configs, not strings: a field added later with its default matches an older checkpoint.
        if ModelConfig.from_dict(json.loads(state["model_config"])) != stage.model.cfg:
            raise SystemExit(f"{self.checkpoint}: checkpoint is for another model config")
        stage.model.load_state_dict(state["model"])
        for name, opt in stage.optimizers.items():
            opt.load_state_dict(state[name])
        stage.load_state(state.get("extra", {}))
        self.log({"event": "resume", "step": state["step"]})
        return state["step"]

    def save(self, stage: Stage, step: int) -> None:
        """Write the checkpoint atomically (temp file, then rename)."""
        state = {
            "model": stage.model.state_dict(),
            **{name: opt.state_dict() for name, opt in stage.optimizers.items()},
            "step": step,
            "model_config": stage.model.cfg.to_json(),
            "train_config": json.dumps(dataclasses.asdict(stage.config)),
            "extra": {"stage": stage.name, **stage.state()},
        }
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)

    def run(self, stage: Stage) -> Path:
        """Train to ``steps`` (or the time limit, or a SIGTERM) and return the checkpoint's path."""
        step = self.resume(stage)
        stage.start(step)
        stop: dict[str, str | None] = {"signal": None}
        restore = self._catch_sigterm(stop)
        try:
            self._loop(stage, step, stop)
        finally:
            restore()
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()
        return self.checkpoint

    def _catch_sigterm(self, stop: dict):
        """On SIGTERM (``kill``), finish the step, write a checkpoint and return, instead of dying between
        checkpoints.  Single-process runs only: under DDP the ranks could stop at different steps."""
        if self.distributed:
            return lambda: None
        try:
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal="SIGTERM"))
        except ValueError:  # not the main thread
            return lambda: None
        return lambda: signal.signal(signal.SIGTERM, previous)

    def _loop(self, stage: Stage, step: int, stop: dict) -> None:
        cfg = self.cfg
        main_opt = stage.optimizers["opt"]
        t0 = last = time.time()
        recs: list[dict[str, float]] = []
        while step < cfg.steps:
            for g in main_opt.param_groups:
                g["lr"] = self.lr_at(step) * g.get("lr_mult", 1.0)
            loss, rec = stage.loss(step)
            if not all_finite(loss, self.distributed):  # every rank skips together, or DDP would stall
                self.log({"event": "non-finite loss, step skipped", "step": step})
                continue
            for opt in stage.optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(stage.clip_params, stage.clip)
            for opt in stage.optimizers.values():
                opt.step()
            step += 1
            recs.append({**rec, **stage.after_step()})
            out_of_time = cfg.max_minutes is not None and time.time() - t0 > 60 * cfg.max_minutes
            halt = ("time limit" if out_of_time else f"stopped by {stop['signal']}" if stop["signal"]
                    else getattr(stage, "stop_reason", None))  # why the run ends here; None: it goes on
            if step % cfg.log_every == 0 or step == cfg.steps:
                self.log({"step": step, **stage.summary(recs), "lr": round(self.lr_at(step), 8),
                          "s_per_step": round((time.time() - last) / len(recs), 3)})
                recs, last = [], time.time()
            if (step % cfg.ckpt_every == 0 or step == cfg.steps or halt) and is_main():
                self.save(stage, step)
            if halt:
                self.log({"event": halt, "step": step})
                break
