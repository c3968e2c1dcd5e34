"""Shield stage (PSIC stage 2): train the decoder and the condition module so that the shielded view
misleads the target vision-language model while both views stay close to the image.

The encoder, hyperprior, entropy models and gains are frozen, so the bitstream (and the bitstream id in
every .psic file) is unchanged.  Per sample the condition is the model's key (full view, 1/2), no key
(1/4) or a random wrong key (1/4); the last two must give the shielded view, so a guessed key never
unlocks.

Losses (see ``../shared/docs/papers.md`` section 2 for the paper's versions):

- distortion on both views: ``lambda_q * 255^2 * MSE(x_hat, x)``;
- **UAEO** on shielded samples, from the target's soft labels on the *original* image ``u`` over the
  1000 ImageNet class prompts: samples the target classifies correctly ("certain") are pushed away from
  their true class, ``(1 + cos(z, t_y)) / 2``; every shielded sample is pulled towards a soft label that puts
  its mass on the classes the target finds *least* compatible with the original, ``softmax(-s u T^T)`` (our
  softened version of the paper's argmin pseudo-label); the two terms are combined with detached
  inverse-magnitude weights (the paper's stage-2 weighting, made numerically safe);
- **semantic preservation** on full-view samples: ``1 - cos(vlp(x_hat_full), vlp(x))``;
- **adaptive multi-objective weighting** between distortion and privacy: a Lagrange multiplier ``mu`` on
  the privacy term, raised while the shielded view's PSNR is within ``psnr_budget_db`` of the full view's
  and lowered when it falls further behind (dual ascent on a quality constraint).  ``--weighting fixed``
  keeps ``mu`` constant, for the ablation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from psic_cli.keys import condition_bits, fingerprint, read_key
from psic_cli.training.data import load_rgb_at_least, random_crop
from psic_cli.training.train import _log, draw_conditions, load_matching


@dataclass
class ShieldConfig:
    init: str = "weights/psic-sh.safetensors"  # rate-distortion weights or checkpoint to start from
    model_id: str = "psic-sh"
    data: list[str] = field(default_factory=lambda: ["../shared/data/imagenette/train"])  # <wnid>/ folders
    key: str = "weights/shipped.key"
    vlp: str = "psic-vlp-mini"
    run_dir: str = "runs/psic-sh-shield"
    steps: int = 2000
    batch: int = 8
    patch: int = 192
    lr: float = 1e-4
    weighting: str = "adaptive"  # adaptive (Lagrangian) | fixed
    mu: float = 1.0  # initial (adaptive) or constant (fixed) privacy weight
    mu_lr: float = 0.05
    psnr_budget_db: float = 0.7  # allowed PSNR gap between shielded and full view
    semantic_weight: float = 1.0
    threads: int = 0
    seed: int = 2000
    log_every: int = 20
    ckpt_every: int = 100
    limit_images: int | None = None


def imagenet_classes() -> tuple[list[str], dict[str, int]]:
    """The 1000 ImageNet class names and a wnid -> index map (the list shipped with psic_cli.vlp)."""
    from psic_cli.vlp.text import imagenet_classes as _classes

    wnids, names = _classes()
    return list(names), {w: i for i, w in enumerate(wnids)}


class LabelledBank:
    """Labelled images (``<wnid>/`` subfolders) in memory; ``batch()`` gives random crops and labels."""

    def __init__(self, folders: list[str], patch: int, seed: int, limit: int | None = None):
        _, wnid_index = imagenet_classes()
        files = sorted(p for f in folders for p in Path(f).glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg",
                                                                                                    ".png"))
        rng = np.random.default_rng(seed)
        if limit is not None and len(files) > limit:
            files = [files[i] for i in sorted(rng.choice(len(files), limit, replace=False))]
        self.images, self.labels = [], []
        for p in files:
            self.images.append(load_rgb_at_least(p, patch))
            self.labels.append(wnid_index.get(p.parent.name, -1))
        self.patch = patch
        self.rng = np.random.default_rng(seed + 1)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.patch
        xs, ys = [], []
        for _ in range(n):
            k = self.rng.integers(len(self.images))
            xs.append(np.ascontiguousarray(random_crop(self.images[k], p, self.rng)))
            ys.append(self.labels[k])
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255.0)
        return x, torch.tensor(ys)


def uaeo_loss(z: torch.Tensor, u: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
              scale: float) -> tuple[torch.Tensor, dict]:
    """Uncertainty-aware encryption-oriented loss on shielded embeddings ``z`` (see module docstring).

    Args:
        z: embeddings of the shielded views [B, D] (L2-normalised, with gradient).
        u: embeddings of the original images [B, D] (no gradient).
        text: class-prompt embeddings [C, D].
        labels: true class indices [B], -1 where unknown (then the target's own prediction counts).
        scale: the target's logit scale.
    """
    with torch.no_grad():
        logits_u = scale * u @ text.t()
        pred = logits_u.argmax(-1)
        truth = torch.where(labels >= 0, labels, pred)
        certain = pred == truth
        soft_target = (-logits_u).softmax(-1)  # mass on the least compatible classes
    logits_z = scale * z @ text.t()
    l_u = -(soft_target * logits_z.log_softmax(-1)).sum(-1).mean()
    cos_true = (z * text[truth]).sum(-1)
    l_c = ((1 + cos_true) / 2)[certain].mean() if certain.any() else z.sum() * 0
    w_c = 1 / (l_c.detach() + 1e-6)
    w_u = 1 / (l_u.detach() + 1e-6)
    loss = (w_c * l_c + w_u * l_u) / (w_c + w_u)
    acc = float((logits_z.argmax(-1) == truth).float().mean())
    return loss, {"l_c": float(l_c.detach()), "l_u": float(l_u.detach()), "certain": float(certain.float().mean()),
                  "shielded_top1": acc}


def _frozen_latents(model, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Quantised latents as the real codec produces them (the encoder side is frozen)."""
    with torch.no_grad():
        y, z = model._analysis(x, q)
        med = model.entropy_bottleneck._get_medians()
        z_hat = torch.round(z - med) + med
        scales, means = model._hyper(z_hat, model.h_s)
        mu = means if means is not None else torch.zeros_like(y)
        return torch.round(y - mu) + mu


def train_shield(sc: ShieldConfig, vlp=None) -> Path:
    """Run (or resume) the shield stage; ``vlp`` overrides ``sc.vlp`` (tests pass a tiny model)."""
    from psic_cli.models import build_model, load_config
    from psic_cli.training.train import save_checkpoint

    if sc.threads:
        torch.set_num_threads(sc.threads)
    torch.manual_seed(sc.seed)
    run_dir = Path(sc.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    cfg = load_config(sc.model_id)
    model = build_model(cfg)
    key = read_key(sc.key)
    key_cond = torch.tensor(condition_bits(key, cfg.cond_dim, "full"))
    trainable = [p for n, p in model.named_parameters() if n.startswith(("g_s.", "cltg."))]
    opt = torch.optim.Adam(trainable, lr=sc.lr)
    aux_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # checkpoint format compatibility
    step, mu = 0, sc.mu
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, mu = state["step"], state["extra"]["mu"]
        _log(run_dir, {"event": "resume", "step": step})
    else:
        n = load_matching(model, sc.init)
        _log(run_dir, {"event": "init_from", "path": sc.init, "tensors": n})
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(("g_s.", "cltg.")))
    model.eval()  # frozen parts (GDN, entropy models) in inference mode; g_s has no batch-dependent layers

    if vlp is None:
        from psic_cli.vlp import load_vlp

        vlp = load_vlp(sc.vlp)
    names, _ = imagenet_classes()
    text_cache = run_dir / "class_text.pt"
    if text_cache.exists():
        text = torch.load(text_cache)
    else:
        text = vlp.class_embeddings(names)
        torch.save(text, text_cache)
    lambdas = torch.tensor(cfg.lambdas)
    bank = LabelledBank(sc.data, sc.patch, sc.seed, sc.limit_images)
    _log(run_dir, {"event": "data", "images": len(bank.images)})
    gen = torch.Generator().manual_seed(sc.seed + step)
    gap_ema = None
    last = time.time()
    while step < sc.steps:
        x, labels = bank.batch(sc.batch)
        q = torch.randint(0, cfg.qualities, (sc.batch,), generator=gen)
        cond = draw_conditions(sc.batch, key_cond, gen)
        full = (cond == key_cond[None]).all(1)
        y_hat = _frozen_latents(model, x, q)
        x_hat = model.synthesize(y_hat, cond, q).clamp(0, 1)
        mse = F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1)
        dist = (lambdas[q] * 255**2 * mse).mean()
        with torch.no_grad():
            u = vlp.encode_image(x)
        priv, stats = uaeo_loss(vlp.encode_image(x_hat[~full]), u[~full], text, labels[~full], vlp.logit_scale)
        sem = (1 - (vlp.encode_image(x_hat[full]) * u[full]).sum(-1)).mean() if full.any() else dist * 0
        loss = dist + mu * priv + sc.semantic_weight * sem
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            psnr = -10 * torch.log10(mse.clamp_min(1e-10))
            gap = float(psnr[full].mean() - psnr[~full].mean()) if full.any() and (~full).any() else 0.0
            gap_ema = gap if gap_ema is None else 0.9 * gap_ema + 0.1 * gap
        if sc.weighting == "adaptive":  # dual ascent on "shielded PSNR within budget of full"
            mu = float(np.clip(mu * math.exp(sc.mu_lr * (sc.psnr_budget_db - gap_ema)), 1e-3, 1e3))
        if step % sc.log_every == 0 or step == sc.steps:
            _log(run_dir, {"step": step, "loss": round(float(loss.detach()), 4), "dist": round(float(dist.detach()), 4),
                           "priv": round(float(priv.detach()), 4), "sem": round(float(sem.detach()), 4),
                           "mu": round(mu, 4),
                           "psnr_gap_ema": round(gap_ema, 3), **{k: round(v, 3) for k, v in stats.items()},
                           "s_per_step": round((time.time() - last) / sc.log_every, 3)})
            last = time.time()
        if step % sc.ckpt_every == 0 or step == sc.steps:
            save_checkpoint(ckpt_path, model, opt, aux_opt, step, _as_train_config(sc),
                            {"key_fingerprint": fingerprint(key), "stage": "shield", "mu": mu,
                             "shield_config": json.dumps(sc.__dict__)})
    return ckpt_path


def _as_train_config(sc: ShieldConfig):
    from psic_cli.training.train import TrainConfig

    return TrainConfig(model_id=sc.model_id, data=list(sc.data), key=sc.key, run_dir=sc.run_dir)
