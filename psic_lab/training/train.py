"""The training loop: rate-distortion training of a conditional codec (resumable, DDP-ready).

Stage ``rd`` (this module) trains the whole model with loss ``bpp + lambda_q * 255^2 * MSE`` for a
per-sample quality ``q``, with per-sample conditions (the model's key, no key, random wrong keys) that
all reconstruct the image.  The privacy stages build on the checkpoints it writes.

Run ``python -m psic_lab.training --help``.  Under ``torchrun`` it trains data-parallel (gloo on CPU,
NCCL on GPU): each rank draws its own crops; gradients are averaged by DistributedDataParallel.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from psic_cli.keys import fingerprint, read_key
from psic_cli.models import build_model, load_config
from psic_cli.models.config import ModelConfig
from psic_cli.views import View, condition
from psic_lab.training.data import PatchBank


@dataclass
class TrainConfig:
    model_id: str = "psic-sh"
    data: list[str] = field(default_factory=list)
    key: str = "weights/shipped.key"
    run_dir: str = "runs/psic-sh"
    out: str = "weights/psic-sh.safetensors"
    steps: int = 20000
    batch: int = 16
    patch: int = 128
    lr: float = 2e-4
    lr_final: float = 2e-5  # cosine decay to this over the last half of the run
    aux_lr: float = 1e-3
    clip: float = 1.0
    threads: int = 0  # 0 = torch default
    seed: int = 2000
    log_every: int = 50
    ckpt_every: int = 250
    limit_images: int | None = None
    init_from: str | None = None  # start from these weights: "a.safetensors[=prefix+prefix],b.pt" (see warm_start)
    max_minutes: float | None = None  # stop (with a checkpoint) after this wall time
    amp: str = "off"  # "bf16": the analysis and synthesis transforms in bfloat16 autocast (entropy models stay fp32)
    compile: bool = False  # torch.compile the training step (pays off on a GPU, not on 2 CPU cores)


class RDStep(nn.Module):
    """One rate-distortion training step as a module, so DDP sees every parameter in forward."""

    def __init__(self, model: nn.Module, cfg: ModelConfig):
        super().__init__()
        self.model = model
        self.register_buffer("lambdas", torch.tensor(cfg.lambdas, dtype=torch.float32))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, q: torch.Tensor) -> dict:
        out = self.model(x, cond, q)
        out["x_hat"] = out["x_hat"].float()
        n, _, h, w = x.shape
        bits = sum(torch.log(lk).flatten(1).sum(1) for lk in out["likelihoods"].values()) / -math.log(2)
        bpp = bits / (h * w)
        mse = F.mse_loss(out["x_hat"].clamp(0, 1), x, reduction="none").flatten(1).mean(1)
        loss = (bpp + self.lambdas[q] * 255**2 * mse).mean()
        aux = self.model.aux_loss()
        return {"loss": loss, "aux": aux, "bpp": bpp.mean(), "mse": mse.mean()}


def draw_conditions(n: int, key_cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-sample conditions: the key's full view (1/2), the shielded view (no key, 1/4), a random wrong key
    (1/4); ``key_cond`` is ``condition(View.FULL, key, cond_dim)``."""
    u = torch.rand(n, generator=gen)
    rand_keys = torch.randint(0, 2, (n, key_cond.numel()), generator=gen).float() * 2 - 1
    shielded = torch.tensor(condition(View.SHIELDED, None, key_cond.numel()), dtype=rand_keys.dtype)
    cond = torch.where((u < 0.5)[:, None], key_cond[None], shielded[None].expand_as(rand_keys))
    return torch.where((u >= 0.75)[:, None], rand_keys, cond)


def cosine_lr(step: int, steps: int, lr: float, lr_final: float) -> float:
    """Constant ``lr`` for the first half of ``steps``, then cosine decay to ``lr_final``."""
    half = steps // 2
    if step < half:
        return lr
    t = (step - half) / max(1, steps - half)
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * t))


def lr_at(step: int, tc: TrainConfig) -> float:
    return cosine_lr(step, tc.steps, tc.lr, tc.lr_final)


def _all_finite(loss: torch.Tensor, distributed: bool) -> bool:
    """True when the loss is finite on every rank (one all-reduce under DDP), so all ranks skip together."""
    ok = torch.isfinite(loss.detach()).float().reshape(1)
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def log_event(run_dir: Path, rec: dict) -> None:
    if _is_main():
        line = json.dumps(rec)
        print(line, flush=True)
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(line + "\n")


def save_checkpoint(path: Path, model, opt, aux_opt, step: int, tc: TrainConfig, extra: dict | None = None) -> None:
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "aux_opt": aux_opt.state_dict(),
        "step": step,
        "model_config": model.cfg.to_json(),
        "train_config": json.dumps(tc.__dict__),
        "extra": extra or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_matching(model: nn.Module, path: str) -> int:
    """Copy tensors of matching name and shape from a checkpoint/safetensors file; return the count."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        src = load_file(path)
    else:
        src = torch.load(path, map_location="cpu", weights_only=False)["model"]
    own = model.state_dict()
    keep = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape and not k.startswith(
        ("entropy_bottleneck._", "gaussian_conditional._", "gaussian_conditional.scale_table"))}
    own.update(keep)
    model.load_state_dict(own)
    return len(keep)


def _read_source(path: str) -> tuple[dict, dict]:
    """Tensors and metadata (empty for checkpoints) of a safetensors weights file or a training checkpoint."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(path), meta
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["model"], {"steps": str(state["step"]), "config": state["model_config"]}


def _map_gains(own: torch.Tensor, src: torch.Tensor, own_lambdas, src_lambdas) -> torch.Tensor:
    """Per-quality log-gains for ``own_lambdas`` from a model trained at ``src_lambdas``: rows of equal
    lambda are copied, others start from the nearest trained row shifted by 0.5 log(lambda ratio)."""
    out = own.clone()
    for i, lam in enumerate(own_lambdas):
        j = min(range(len(src_lambdas)), key=lambda k: abs(math.log(lam / src_lambdas[k])))
        out[i] = src[j] + 0.5 * math.log(lam / src_lambdas[j])
    return out


def _widen(init: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """A wider layer that computes what ``src`` computed: the trained tensor fills the leading slice; the
    new output channels keep their random initialisation (so they learn), and a convolution's new *input*
    channels start at zero (so the new features do not change the output until training uses them)."""
    out = init.clone()
    if out.dim() == 4:
        out[:, src.shape[1]:] = 0
    out[tuple(slice(0, n) for n in src.shape)] = src
    return out


def warm_start(model: nn.Module, spec: str) -> dict:
    """Initialise ``model`` from one or more weight files and return what was done.

    ``spec`` is a comma-separated list of ``path`` or ``path=prefix+prefix`` (only tensors under those
    prefixes); later sources override earlier ones.  Tensors of matching name and shape are copied;
    per-quality gains are mapped by lambda when the quality levels differ.  When the single source is
    a weights file of this very config, training *continues* from its step count (``steps`` metadata):
    that is how a new machine resumes from committed weights.
    """
    own = model.state_dict()
    cfg = model.cfg
    report = {"tensors": 0, "continue_step": 0}
    sources = [s for s in spec.split(",") if s]
    for source in sources:
        path, _, prefixes = source.partition("=")
        src, meta = _read_source(path)
        pre = tuple(prefixes.split("+")) if prefixes else ("",)
        for k, v in src.items():
            if k not in own or not k.startswith(pre) or k.startswith(
                    ("entropy_bottleneck._", "gaussian_conditional._", "gaussian_conditional.scale_table")):
                continue
            if own[k].shape == v.shape:
                own[k] = v
                report["tensors"] += 1
            elif k == "log_gain" and "config" in meta:  # other quality levels: map by lambda, never widen
                src_cfg = ModelConfig.from_dict(json.loads(meta["config"]))
                own[k] = _map_gains(own[k], v, cfg.lambdas, src_cfg.lambdas)
                report["tensors"] += 1
            elif own[k].dim() == v.dim() and all(a >= b for a, b in zip(own[k].shape, v.shape, strict=True)):
                own[k] = _widen(own[k], v)
                report["widened"] = report.get("widened", 0) + 1
        if len(sources) == 1 and not prefixes and meta.get("config") == cfg.to_json():
            report["continue_step"] = int(meta.get("steps", "0"))
    model.load_state_dict(own)
    return report


def train(tc: TrainConfig) -> Path:
    """Train (or resume) and return the path of the latest checkpoint."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device("cpu")
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    else:
        rank = 0
        if torch.cuda.is_available():
            device = torch.device("cuda")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed + rank)

    run_dir = Path(tc.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    cfg = load_config(tc.model_id)
    model = build_model(cfg)
    key = read_key(tc.key)
    key_cond = torch.tensor(condition(View.FULL, key, cfg.cond_dim))

    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=tc.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=tc.aux_lr)
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["model_config"] != cfg.to_json():
            raise SystemExit(f"{ckpt_path}: checkpoint is for another model config")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        step = state["step"]
        log_event(run_dir, {"event": "resume", "step": step})
    elif tc.init_from:
        rep = warm_start(model, tc.init_from)
        step = rep["continue_step"]
        log_event(run_dir, {"event": "init_from", "spec": tc.init_from, **rep})

    model.to(device).train()
    if tc.amp not in ("off", "bf16"):
        raise SystemExit(f"--amp must be off or bf16, not {tc.amp!r}")
    model.transform_dtype = torch.bfloat16 if tc.amp == "bf16" else None
    if device.type == "cuda":  # TF32 matmuls/convolutions: fp32 range, tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    stepper: nn.Module = RDStep(model, cfg).to(device)
    if distributed:
        stepper = nn.parallel.DistributedDataParallel(stepper)
    if tc.compile:
        stepper = torch.compile(stepper)

    t_load = time.time()
    bank = PatchBank([Path(d) for d in tc.data], tc.patch, seed=tc.seed + 1000 * rank, limit=tc.limit_images)
    log_event(run_dir, {"event": "data", "images": len(bank), "seconds": round(time.time() - t_load, 1)})
    gen = torch.Generator().manual_seed(tc.seed + 7919 * rank + step)
    t0, last = time.time(), time.time()
    acc = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "aux": 0.0, "n": 0}
    while step < tc.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        x = bank.batch(tc.batch).to(device)
        q = torch.randint(0, cfg.qualities, (tc.batch,), generator=gen).to(device)
        cond = draw_conditions(tc.batch, key_cond, gen).to(device)
        out = stepper(x, cond, q)
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        total = out["loss"] + out["aux"]
        if not _all_finite(total, distributed):  # every rank skips together, or DDP would stall
            log_event(run_dir, {"event": "non-finite loss, step skipped", "step": step})
            continue
        total.backward()
        torch.nn.utils.clip_grad_norm_(main_params, tc.clip)
        opt.step()
        aux_opt.step()
        step += 1
        for k in ("loss", "bpp", "mse", "aux"):
            acc[k] += float(out[k].detach())
        acc["n"] += 1
        if step % tc.log_every == 0 or step == tc.steps:
            n = acc.pop("n")
            rec = {k: round(v / n, 5) for k, v in acc.items()}
            rec["psnr"] = round(10 * math.log10(1 / max(rec["mse"], 1e-10)), 3)
            rec.update(step=step, lr=round(lr_at(step, tc), 7), s_per_step=round((time.time() - last) / n, 3))
            log_event(run_dir, rec)
            acc = {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "aux": 0.0, "n": 0}
            last = time.time()
        out_of_time = tc.max_minutes is not None and (time.time() - t0) / 60 > tc.max_minutes
        if (step % tc.ckpt_every == 0 or step == tc.steps or out_of_time) and _is_main():
            save_checkpoint(ckpt_path, model, opt, aux_opt, step, tc, {"key_fingerprint": fingerprint(key)})
        if out_of_time:
            log_event(run_dir, {"event": "time limit", "step": step})
            break
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return ckpt_path
