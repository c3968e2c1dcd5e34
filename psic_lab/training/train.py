"""Stage ``rd``: rate-distortion training of a conditional codec (resumable, DDP-ready).

Stage ``rd`` (this module) trains the whole model with loss ``bpp + lambda_q * 255^2 * MSE`` for a
per-sample quality ``q``, with per-sample conditions (the model's key, no key, random wrong keys) that
all reconstruct the image.  The privacy stages build on the checkpoints it writes.

Run ``python -m psic_lab.training rd --help``.  Under ``torchrun`` it trains data-parallel (gloo on CPU,
NCCL on GPU): each rank draws its own crops; gradients are averaged by DistributedDataParallel.  The loop
itself (resume, schedule, log, checkpoints) is :class:`psic_lab.training.trainer.Trainer`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from psic_cli.keys import fingerprint, read_key
from psic_cli.models import build_model, load_config
from psic_cli.models.config import ModelConfig
from psic_cli.views import View, condition
from psic_lab.training.data import PatchBank
from psic_lab.training.options import TrainConfig, parse_weights
from psic_lab.training.trainer import Trainer, init_distributed, log_event, read_checkpoint

__all__ = ["RDStage", "TrainConfig", "draw_conditions", "draw_qualities", "load_matching", "quality_weights", "train",
           "warm_start"]


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


def quality_weights(spec: str, levels: int) -> list[float]:
    """``--quality-weights`` for a model of ``levels`` quality levels (empty: uniform); ValueError otherwise."""
    weights = parse_weights(spec)
    if weights and len(weights) != levels:
        raise ValueError(f"quality_weights has {len(weights)} entries; the model has {levels} quality levels")
    return weights


def draw_qualities(n: int, levels: int, weights: list[float], gen: torch.Generator) -> torch.Tensor:
    """Per-sample quality indexes: uniform over ``levels``, or in proportion to ``weights`` (one per level, as
    :func:`quality_weights` returns them)."""
    if not weights:
        return torch.randint(0, levels, (n,), generator=gen)
    return torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, replacement=True, generator=gen)


#: the analysis side, all that ``train_part: encoder`` trains: nothing the decoder reads from a file
ENCODER_PREFIXES = ("g_a.", "h_a.")
#: the synthesis side, all that ``train_part: decoder`` trains: nothing the bitstream depends on
DECODER_PREFIXES = ("g_s.", "cltg.")
#: all that ``train_part: gain`` trains (and only the rows of levels the initial weights lack)
GAIN_PREFIXES = ("log_gain",)

#: tensors never copied between weights: the entropy models' derived tables (rebuilt by ``update``)
_NOT_COPIED = ("entropy_bottleneck._", "gaussian_conditional._", "gaussian_conditional.scale_table")


def _sources(spec: str):
    """Each source of a ``path[=prefix+prefix],...`` spec: ``(tensors, metadata, prefixes)``, in order."""
    for source in [s for s in spec.split(",") if s]:
        path, _, prefixes = source.partition("=")
        src, meta = _read_source(path)
        yield src, meta, tuple(prefixes.split("+")) if prefixes else ()


def load_matching(model: nn.Module, spec: str) -> int:
    """Copy tensors of matching name and shape from weights files or checkpoints; return the count.

    ``spec`` is a comma-separated list of ``path`` or ``path=prefix+prefix`` (only tensors under those
    prefixes); later sources override earlier ones (e.g. shipped weights, then one module from a run)."""
    own = model.state_dict()
    count = 0
    for src, _, prefixes in _sources(spec):
        keep = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape
                and k.startswith(prefixes or ("",)) and not k.startswith(_NOT_COPIED)}
        own.update(keep)
        count += len(keep)
    model.load_state_dict(own)
    return count


def _read_source(path: str) -> tuple[dict, dict]:
    """Tensors and metadata (empty for checkpoints) of a safetensors weights file or a training checkpoint."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(path), meta
    state = read_checkpoint(path)
    return state["model"], {"steps": str(state["step"]), "config": state["model_config"]}


def map_gains(own: torch.Tensor, src: torch.Tensor, own_lambdas, src_lambdas) -> torch.Tensor:
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
    sources = list(_sources(spec))
    for src, meta, prefixes in sources:
        for k, v in src.items():
            if not k.startswith(prefixes or ("",)) or k.startswith(_NOT_COPIED):
                continue
            if k not in own:  # e.g. a 1x1 skip that became the identity: the start is not the source's function
                report["dropped"] = report.get("dropped", 0) + 1
                continue
            if own[k].shape == v.shape:
                own[k] = v
                report["tensors"] += 1
            elif k == "log_gain" and "config" in meta:  # other quality levels: map by lambda, never widen
                src_cfg = ModelConfig.from_dict(json.loads(meta["config"]))
                own[k] = map_gains(own[k], v, cfg.lambdas, src_cfg.lambdas)
                report["tensors"] += 1
            elif own[k].dim() == v.dim() and all(a >= b for a, b in zip(own[k].shape, v.shape, strict=True)):
                own[k] = _widen(own[k], v)
                report["widened"] = report.get("widened", 0) + 1
        if "steps" in meta:
            report["source_steps"] = int(meta["steps"])
        if len(sources) == 1 and not prefixes and "config" in meta and \
                ModelConfig.from_dict(json.loads(meta["config"])) == cfg:  # fields added since default alike
            report["continue_step"] = int(meta.get("steps", "0"))
    model.load_state_dict(own)
    return report




def _added_levels(lambdas: list[float], spec: str | None) -> torch.Tensor:
    """Which of ``lambdas`` the single ``--init-from`` weights file lacks (a bool per quality level); SystemExit
    unless there is such a file and it lacks at least one (``train_part gain`` learns exactly those levels)."""
    sources = [s for s in (spec or "").split(",") if s]
    if len(sources) != 1 or "=" in sources[0]:
        raise SystemExit("train_part gain needs --init-from: one weights file, whole (the codec the levels join)")
    _, meta = _read_source(sources[0])
    if "config" not in meta:
        raise SystemExit(f"train_part gain: {sources[0]} records no model config (its lambdas)")
    have = ModelConfig.from_dict(json.loads(meta["config"])).lambdas
    added = torch.tensor([all(abs(math.log(lam / h)) > 1e-9 for h in have) for lam in lambdas])
    if not added.any():
        raise SystemExit("train_part gain: the model config adds no quality level (lambda) to the weights'")
    return added


def _fix_leading_channels(g_a: nn.Module, n: int, width: int) -> None:
    """Zero the gradient of each ``g_a`` tensor's slice that a narrower ``n``-channel transform had (what
    :func:`_widen` copied), so Adam leaves those weights as they were and only the added channels learn."""
    if width <= n:
        raise ValueError("new_channels_only needs a widened analysis transform (analysis_width > N)")
    layers = list(g_a)
    for i, layer in enumerate(layers):
        widened_in, widened_out = i > 0, i < len(layers) - 1  # g_a's input (RGB) and output (y) keep their width
        for name, p in layer.named_parameters():
            old = torch.zeros_like(p, dtype=torch.bool)
            if isinstance(layer, nn.Conv2d):
                rows = slice(0, n) if widened_out else slice(None)
                if name == "weight":
                    old[rows, slice(0, n) if widened_in else slice(None)] = True
                else:
                    old[rows] = True
            elif p.dim() == 2:  # a GDN's gamma
                old[:n, :n] = True
            else:  # a GDN's beta
                old[:n] = True
            p.register_hook(lambda g, m=old: g.masked_fill(m, 0))


class RDStage:
    """The ``rd`` stage for :class:`~psic_lab.training.trainer.Trainer`: the whole model, ``bpp + lambda D``,
    per-sample qualities and conditions; the quantiles have their own optimiser (``aux_opt``)."""

    name = "rd"

    def __init__(self, tc: TrainConfig, device: torch.device, rank: int = 0, distributed: bool = False) -> None:
        self.config, self.device, self.rank = tc, device, rank
        torch.manual_seed(tc.seed + rank)
        self.cfg = load_config(tc.model_id)
        # on the device before the optimisers exist: a resumed optimiser state is then moved onto the
        # parameters' device by ``load_state_dict`` (built on the CPU, Adam's moments stayed there, and the first
        # step of a resumed GPU run failed)
        self.model = build_model(self.cfg).to(device)
        self.quality_weights = quality_weights(tc.quality_weights, self.cfg.qualities)  # checked before any data
        self.key = read_key(tc.key)
        self.key_cond = torch.tensor(condition(View.FULL, self.key, self.cfg.cond_dim))
        self.full_view_only = tc.train_part in ("encoder", "gain")  # what they serve: the key's full view
        self.part_only = tc.train_part in ("encoder", "decoder", "gain")  # one part on frozen weights (``base_steps``)
        self.clip = tc.clip
        if self.part_only:  # one side learns; the other side (and for the decoder, the whole bitstream) is frozen
            self.name = f"rd-{tc.train_part}"
            prefixes = {"encoder": ENCODER_PREFIXES, "decoder": DECODER_PREFIXES, "gain": GAIN_PREFIXES}[tc.train_part]
            for n, p in self.model.named_parameters():
                p.requires_grad_(n.startswith(prefixes))
            if tc.train_part == "gain":  # the levels the weights have keep their gains; the others are drawn
                added = _added_levels(self.cfg.lambdas, tc.init_from)
                self.model.log_gain.register_hook(lambda g, m=~added: g.masked_fill(m[:, None], 0))
                self.quality_weights = self.quality_weights or added.double().tolist()
            if tc.new_channels_only:  # h_a stays as it was too
                _fix_leading_channels(self.model.g_a, self.cfg.N, self.cfg.analysis_width or self.cfg.N)
                for p in self.model.h_a.parameters():
                    p.requires_grad_(False)
            self.clip_params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizers = {"opt": torch.optim.Adam(self.clip_params, lr=tc.lr)}
        else:
            aux_params = [p for n, p in self.model.named_parameters() if n.endswith(".quantiles")]
            self.clip_params = [p for n, p in self.model.named_parameters() if not n.endswith(".quantiles")]
            self.optimizers = {"opt": torch.optim.Adam(self.clip_params, lr=tc.lr),
                               "aux_opt": torch.optim.Adam(aux_params, lr=tc.aux_lr)}
        self.base_steps = 0  # one side only: the steps of the weights it started from (the frozen side's training)
        self.distributed = distributed

    def fresh_start(self) -> tuple[int, dict | None]:
        if not self.config.init_from:
            return 0, None
        rep = warm_start(self.model, self.config.init_from)
        if self.part_only:  # a run of its own from step 0; the frozen side's steps go into the weights' metadata
            self.base_steps, rep["continue_step"] = rep.get("source_steps", 0), 0
        return rep["continue_step"], {"event": "init_from", "spec": self.config.init_from, **rep}

    def load_state(self, extra: dict) -> None:
        self.base_steps = int(extra.get("base_steps", 0))

    def start(self, step: int) -> None:
        tc, device = self.config, self.device
        self.model.to(device).train()
        if tc.train_part == "decoder":  # z rounded as the codec rounds it (no training noise): the synthesis learns
            self.model.entropy_bottleneck.eval()  # on the very latents that files carry
            self.model.gaussian_conditional.eval()
        self.model.transform_dtype = torch.bfloat16 if tc.amp == "bf16" else None
        if device.type == "cuda":  # TF32 matmuls/convolutions: fp32 range, tensor-core speed
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        stepper: nn.Module = RDStep(self.model, self.cfg).to(device)
        if self.distributed:
            stepper = nn.parallel.DistributedDataParallel(stepper)
        self.stepper = torch.compile(stepper) if tc.compile else stepper
        t_load = time.time()
        self.bank = PatchBank([Path(d) for d in tc.data], tc.patch, seed=tc.seed + 1000 * self.rank,
                              limit=tc.limit_images)
        log_event(Path(tc.run_dir), {"event": "data", "images": len(self.bank),
                                     "seconds": round(time.time() - t_load, 1)})
        self.gen = torch.Generator().manual_seed(tc.seed + 7919 * self.rank + step)

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        n, device = self.config.batch, self.device
        x = self.bank.batch(n).to(device)
        q = draw_qualities(n, self.cfg.qualities, self.quality_weights, self.gen).to(device)
        if self.full_view_only:  # what the encoder and the gains serve: the key's full view (the rate is the same)
            cond = self.key_cond[None].expand(n, -1).to(device)
        else:
            cond = draw_conditions(n, self.key_cond, self.gen).to(device)
        out = self.stepper(x, cond, q)
        total = out["loss"] if self.part_only else out["loss"] + out["aux"]
        return total, {k: float(out[k].detach()) for k in ("loss", "bpp", "mse", "aux")}

    def after_step(self) -> dict[str, float]:
        return {}

    def summary(self, recs: list[dict[str, float]]) -> dict[str, float]:
        """Means over the interval, and the PSNR of the mean MSE."""
        rec = {k: round(sum(r[k] for r in recs) / len(recs), 5) for k in recs[0]}
        rec["psnr"] = round(10 * math.log10(1 / max(rec["mse"], 1e-10)), 3)
        return rec

    def state(self) -> dict:
        extra = {"key_fingerprint": fingerprint(self.key)}
        return {**extra, "base_steps": self.base_steps} if self.part_only else extra


def train(tc: TrainConfig) -> Path:
    """Train (or resume) stage ``rd`` and return the path of the latest checkpoint."""
    distributed, rank, device = init_distributed()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.train_part == "context":
        from psic_lab.training.context import ContextStage

        if distributed:
            raise SystemExit("train_part context runs in one process (its steps take milliseconds)")
        return Trainer(tc).run(ContextStage(tc, device))
    return Trainer(tc, distributed).run(RDStage(tc, device, rank, distributed))
