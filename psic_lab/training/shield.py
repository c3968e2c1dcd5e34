"""Shield stage (PSIC stage 2): train the decoder and the condition module so that the shielded view
misleads the target vision-language model while both views stay close to the image.

The encoder, hyperprior, entropy models and gains are frozen, so the bitstream (and the bitstream id in
every .psic file) is unchanged.  Per sample the condition is the model's key (full view, ``p_full``), no
key or a random wrong key (the rest, half each); the last two must give the shielded view, so a guessed
key never unlocks.

Losses (see ``../shared/docs/papers.md`` section 2 for the paper's versions), with ``D(a, b) =
lambda_q * 255^2 * MSE(a, b)``:

- full-view samples: ``D(x_full, x) + anchor_weight * D(x_full, x_ref)``, where ``x_ref`` is the frozen
  starting decoder's full view (the rate-distortion model): the full view must not lose quality;
- shielded samples: ``nu * D(x_shield, x) + UAEO``;
- **UAEO** on shielded samples, from the target's soft labels on the *original* image ``u`` over the
  captions ``T``: by default the class captions of the training data (the paper uses the captions of the
  batch; ours come from the class names), or all 1000 ImageNet class prompts (``--captions imagenet``).
  Samples the target classifies correctly ("certain") are pushed away from
  their true class, ``(1 + cos(z, t_y)) / 2``; every shielded sample is pulled towards a soft label that puts
  its mass on the classes the target finds *least* compatible with the original, ``softmax(-s u T^T)`` (our
  softened version of the paper's argmin pseudo-label); the two terms are combined with detached
  inverse-magnitude weights (the paper's stage-2 weighting, made numerically safe);
- optional **margin term** (``--privacy-loss uaeo+margin``, our addition): ``margin_weight *
  relu(l_true - max_other + kappa)`` on the caption logits.  UAEO keeps pushing images the target already
  misreads; the margin stops there and spends the distortion budget on the images it still reads;
- optional **semantic preservation** on full-view samples: ``1 - cos(vlp(x_full), vlp(x))``;
- **adaptive multi-objective weighting** between distortion and privacy, as a constrained problem:
  minimise UAEO subject to "the shielded view's PSNR is at most ``psnr_budget_db`` below the reference
  full view's on the same latents".  ``nu`` is the Lagrange multiplier of that constraint, updated by
  dual ascent (multiplicatively, on an EMA of the measured per-sample gap) and bounded.  ``--weighting
  fixed`` keeps ``nu`` constant, for the ablation.

The parts: options in ``options.ShieldConfig`` (stage files under ``configs/shield/``), one loss object per
view in ``losses.py``, the weighting in ``weighting.py``, and the loop in ``trainer.py``; this module holds
the data, the draw of views and conditions per sample, and :class:`ShieldStage`, which joins them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from psic_cli.codec import pad_to_multiple
from psic_cli.container import FORMAT_VERSION, PAD_MULTIPLE
from psic_cli.keys import fingerprint, read_key
from psic_cli.models import build_model, load_config
from psic_cli.views import SHIELD_VIEWS, View, condition, trained_views
from psic_lab.training.augment import EOTConfig
from psic_lab.training.data import load_rgb_at_least, random_crop
from psic_lab.training.losses import (
    CaptionPrivacy,
    EnsembleMember,
    FullViewLoss,
    MachineViewLoss,
    PreserveLoss,
    Published,
    ShieldViewLoss,
    ViewBatch,
    ViewLoss,
    get_indexer,
    lattice_energy,
)
from psic_lab.training.options import ShieldConfig, parse_aspects, parse_sizes, parse_views
from psic_lab.training.train import load_matching
from psic_lab.training.trainer import Trainer, log_event
from psic_lab.training.weighting import DualAscentWeighting

__all__ = ["LabelledBank", "ShieldConfig", "ShieldStage", "check_seen", "draw_geometry", "draw_views",
           "parse_qualities",
           "parse_views", "reset_trigger", "train_shield", "view_conditions"]

def imagenet_classes() -> tuple[list[str], dict[str, int]]:
    """The 1000 ImageNet class names and a wnid -> index map (the list shipped with psic_lab.vlp)."""
    from psic_lab.vlp.text import imagenet_classes as _classes

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

    def batch_at(self, n: int, height: int, width: int, min_frac: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images at ``height x width``: per image a random crop of the aspect ``width / height`` (between
        ``min_frac`` and all of the largest such crop's side), resized with Pillow's bicubic (upscaling a small
        photo, as the geometry benchmark prepares its labelled images), flipped half of the time."""
        from PIL import Image

        xs, ys = [], []
        for _ in range(n):
            k = self.rng.integers(len(self.images))
            img = self.images[k]
            h0, w0 = img.shape[:2]
            a = width / height
            ch, cw = (h0, h0 * a) if w0 / h0 >= a else (w0 / a, w0)
            t = self.rng.uniform(min_frac, 1.0)
            ch, cw = max(8, min(h0, round(ch * t))), max(8, min(w0, round(cw * t)))
            i, j = self.rng.integers(h0 - ch + 1), self.rng.integers(w0 - cw + 1)
            im = Image.fromarray(np.ascontiguousarray(img[i : i + ch, j : j + cw])).resize((width, height),
                                                                                          Image.BICUBIC)
            arr = np.asarray(im)
            xs.append(np.ascontiguousarray(arr[:, ::-1] if self.rng.random() < 0.5 else arr))
            ys.append(self.labels[k])
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255.0)
        return x, torch.tensor(ys)


def draw_geometry(sizes: list[int], aspects: list[float], gen: torch.Generator) -> tuple[int, int]:
    """One decoded size ``(height, width)`` for the next step: a shorter side from ``sizes`` and a
    width:height ratio from ``aspects``, the longer side rounded to a multiple of 16."""
    side = sizes[int(torch.randint(len(sizes), (1,), generator=gen))]
    a = aspects[int(torch.randint(len(aspects), (1,), generator=gen))]
    if a >= 1:
        return side, max(side, 16 * round(side * a / 16))
    return max(side, 16 * round(side / a / 16)), side


def draw_views(n: int, views: list[View], p_full: float, gen: torch.Generator) -> list[View]:
    """Per-sample views: full with probability ``p_full``, the others uniformly."""
    rest = [v for v in views if v is not View.FULL]
    u = torch.rand(n, generator=gen).tolist()
    k = torch.randint(0, max(1, len(rest)), (n,), generator=gen).tolist()
    return [View.FULL if (ui < p_full or not rest) and View.FULL in views else rest[ki]
            for ui, ki in zip(u, k, strict=True)]


def view_conditions(views: list[View], conds: dict[View, torch.Tensor], gen: torch.Generator,
                    wrong_keys: bool = True) -> torch.Tensor:
    """Condition vectors (``conds``: :func:`psic_cli.views.condition` of each view); the shielded view gets
    its own (no key) or, with ``wrong_keys``, a random wrong key, half each, so a guessed key never unlocks."""
    out = []
    for v in views:
        if wrong_keys and v is View.SHIELDED and torch.rand(1, generator=gen).item() >= 0.5:
            wrong = torch.randint(0, 2, conds[v].shape, generator=gen).float() * 2 - 1  # drawn on the CPU
            out.append(wrong.to(conds[v].device))
        else:
            out.append(conds[v])
    return torch.stack(out)


def parse_qualities(spec: str, n: int) -> list[int]:
    """``"all"`` or 1-based levels (``"1,3"``) -> 0-based quality indices."""
    if spec == "all":
        return list(range(n))
    qs = sorted({int(t) - 1 for t in spec.split(",") if t.strip()})
    if not qs or qs[0] < 0 or qs[-1] >= n:
        raise ValueError(f"qualities must be 'all' or levels in 1..{n}, got {spec!r}")
    return qs


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = F.mse_loss(a, b, reduction="none").flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def _is_trigger(name: str) -> bool:
    """The condition path: CLTG, the per-block trigger projections (bias P, scale S) and the scale branch."""
    return name.startswith(("cltg.", "g_s.scale_branch.")) or (
        name.startswith("g_s.") and name.split(".")[-2] in ("p1", "p2", "s1", "s2"))


def resolve_device(name: str) -> torch.device:
    """The stage's device: ``cpu``, ``cuda`` (an error without one), or ``auto`` (cuda when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA device here (use cpu or auto)")
    return device


def reset_trigger(model, seed: int) -> None:
    """Fresh CLTG weights and zero trigger projections.

    Rate-distortion training draws random conditions that must all reconstruct the image, which teaches
    the condition path to ignore its input (measured on our rd weights: the trigger of the key and of
    random keys is exactly zero, dead ReLUs).  The shield stage therefore restarts that path; with zero
    projections the decoder's output is unchanged at the start.
    """
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU, so the draw is the same on every device
    for m in model.cltg.modules():
        if isinstance(m, torch.nn.Linear):
            bound = 1 / math.sqrt(m.in_features)
            with torch.no_grad():
                for p in (m.weight, m.bias):
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
    for name, p in model.named_parameters():
        if _is_trigger(name) and not name.startswith(("cltg.", "g_s.scale_branch.")):
            with torch.no_grad():
                p.zero_()
    if model.g_s.scale_branch is not None:  # its output convolutions, as at construction
        for head in model.g_s.scale_branch.heads:
            with torch.no_grad():
                head.weight.zero_()
                head.bias.zero_()


def check_seen(models: list) -> None:
    """Refuse to train against an unseen judge, whatever spec or path it was loaded from."""
    from psic_lab.vlp.judges import UNSEEN_JUDGES

    for m in models:
        name = getattr(getattr(m, "model", m), "name", "")
        if name in UNSEEN_JUDGES:
            raise ValueError(f"{name} is an unseen judge: never train against it")


class ShieldStage:
    """The shield stage for :class:`~psic_lab.training.trainer.Trainer`: the decoder and the condition path
    learn the views of ``sc.views`` from a frozen encoder side; ``vlp``/``ensemble`` override ``sc.vlp`` and
    ``sc.ensemble`` (tests)."""

    name = "shield"
    clip = 1.0

    def __init__(self, sc: ShieldConfig, vlp=None, ensemble: list | None = None) -> None:
        self.config = sc
        self.views = parse_views(sc.views)
        self.preserve = set(parse_views(sc.preserve, "preserve"))
        self.indexer = get_indexer(sc.indexer)
        self.strong_indexer = get_indexer(sc.strong_indexer or sc.indexer)
        self.sizes, self.aspects = parse_sizes(sc.sizes), parse_aspects(sc.aspects)
        torch.manual_seed(sc.seed)
        cfg = load_config(sc.model_id)
        if sc.scale_grid:
            cfg = dataclasses.replace(cfg, scale_grid=sc.scale_grid, scale_keyless_only=sc.scale_keyless_only)
        if sc.indexer_residual:
            cfg = dataclasses.replace(cfg, indexer_residual=sc.indexer_residual)
        if sc.indexer_residual_rms:
            cfg = dataclasses.replace(cfg, indexer_residual_rms=tuple(
                float(v) for v in sc.indexer_residual_rms.split(",")))
        if sc.indexer_residual_mask:
            cfg = dataclasses.replace(cfg, indexer_residual_mask=sc.indexer_residual_mask)
        residual_only = sc.train_part in ("residual", "pattern")
        if residual_only and not cfg.indexer_residual:
            raise ValueError(f"train_part {sc.train_part} needs a model with an indexer residual "
                             "(indexer_residual > 0)")
        if sc.residual_input == "original" and not residual_only:
            raise ValueError("residual_input original needs train_part residual (the decoder would not train)")
        self.qualities = torch.tensor(parse_qualities(sc.qualities, cfg.qualities))
        self.lambdas = torch.tensor(cfg.lambdas)
        self.device = device = resolve_device(sc.device)
        if device.type == "cuda":  # TF32 matmuls/convolutions: fp32 range, tensor-core speed
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model = model = build_model(cfg)
        self.n_init = load_matching(model, sc.init) if sc.init else 0  # no init: random weights (tests)
        model.to(device)  # before the optimiser exists: a resumed optimiser state follows its parameters' device
        self.teacher = copy.deepcopy(model).eval()  # the starting decoder: reference full view, preserved views
        if sc.reference:  # a fresh model: tensors the reference lacks keep their neutral initial values
            self.teacher = build_model(cfg).eval()
            load_matching(self.teacher, sc.reference)
            self.teacher.to(device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.lambdas = self.lambdas.to(device)
        self.key = read_key(sc.key)
        self.conds = {v: torch.tensor(condition(v, self.key, cfg.cond_dim), device=device) for v in View}
        named = list(model.named_parameters())
        own_branch = sc.branch_lr_mult > 0 and model.g_s.scale_branch is not None
        in_branch = {n for n, _ in named if own_branch and n.startswith("g_s.scale_branch.")}
        branch = [p for n, p in named if n in in_branch]
        trigger = [p for n, p in named if _is_trigger(n) and n not in in_branch]
        others = [p for n, p in named if n.startswith("g_s.") and not _is_trigger(n)]
        groups = [{"params": others, "lr_mult": 1.0}, {"params": trigger, "lr_mult": sc.trigger_lr_mult}]
        if own_branch:  # a fresh module in a low-lr fine-tune: it gets its own rate
            groups.append({"params": branch, "lr_mult": sc.branch_lr_mult})
        if sc.train_part == "pattern":  # a universal residual: the U-Net's output is zero, only the patterns learn
            with torch.no_grad():
                model.indexer_residual.out.weight.zero_()
                model.indexer_residual.out.bias.zero_()
            self.trained_prefix = ("indexer_residual.pattern",)
            groups = [{"params": [model.indexer_residual.pattern], "lr_mult": 1.0}]
        elif sc.train_part == "residual":  # the decoder is frozen; only the residual learns
            self.trained_prefix = ("indexer_residual.",)
            groups = [{"params": [p for n, p in named if n.startswith(self.trained_prefix)], "lr_mult": 1.0}]
        else:
            self.trained_prefix = ("g_s.", "cltg.")
        self.clip_params = [p for n, p in named if n.startswith(self.trained_prefix)]
        self.optimizers = {"opt": torch.optim.Adam(groups, lr=sc.lr)}
        trained = [v for v in SHIELD_VIEWS if v in self.views]
        self.weighting = DualAscentWeighting(
            {v: {View.SHIELDED: sc.nu, View.STRONG: sc.strong_nu}[v] for v in trained},
            {v: {View.SHIELDED: sc.psnr_budget_db, View.STRONG: sc.strong_budget_db}[v] for v in trained},
            lr=sc.nu_lr, nu_min=sc.nu_min, nu_max=sc.nu_max, adaptive=sc.weighting == "adaptive")
        self.vlp, self.ensemble = vlp, ensemble
        self.stop_reason: str | None = None  # set when the stage should end early (read by the trainer)
        self._dead_steps = 0

    def fresh_start(self) -> tuple[int, dict | None]:
        if self.config.reset_trigger:
            reset_trigger(self.model, self.config.seed)
        return 0, {"event": "init_from", "path": self.config.init, "tensors": self.n_init}

    def load_state(self, extra: dict) -> None:
        """The weighting's state; checkpoints written before it was an object kept ``nu``, ``gap_ema``,
        ``nu_strong`` and ``gap_ema_strong``."""
        suffix = {View.SHIELDED: "", View.STRONG: "_strong"}
        legacy = {"nu": {str(v): extra[f"nu{s}"] for v, s in suffix.items() if f"nu{s}" in extra},
                  "gap_ema": {str(v): extra.get(f"gap_ema{s}") for v, s in suffix.items()}}
        self.weighting.load_state_dict(extra.get("weighting", legacy))

    def start(self, step: int) -> None:
        """Freeze all but the decoder and condition path, load the target, the ensemble and the data, and
        build one loss per view."""
        sc, views = self.config, self.views
        run_dir = Path(sc.run_dir)
        for n, p in self.model.named_parameters():
            p.requires_grad_(n.startswith(self.trained_prefix))
        self.model.eval()  # frozen parts (GDN, entropy models) in inference mode; g_s has no batch-dependent layers
        if self.vlp is None:
            from psic_lab.vlp import load_vlp

            self.vlp = load_vlp(sc.vlp)
        if self.ensemble is None:
            self.ensemble = []
            if View.STRONG in views and sc.ensemble:
                from psic_lab.vlp import load_vlp

                self.ensemble = [load_vlp(spec.strip()) for spec in sc.ensemble.split(",")]
        check_seen(self.ensemble)
        vlp = self.vlp
        for m in [vlp, *self.ensemble]:
            if isinstance(m, torch.nn.Module):
                m.to(self.device)
                for p in m.parameters():
                    p.requires_grad_(False)
        names, _ = imagenet_classes()
        text_cache = run_dir / "class_text.pt"  # a copy in a fresh run folder spares loading the text tower
        if text_cache.exists():
            text = torch.load(text_cache, map_location="cpu")
        else:
            text = vlp.class_embeddings(names).cpu()
            torch.save(text, text_cache)
        text = text.to(self.device)
        self.bank = bank = LabelledBank(sc.data, sc.patch, sc.seed, sc.limit_images)
        present = sorted({y for y in bank.labels if y >= 0})  # the classes of the data (10-way accuracy)
        ensemble = [e if isinstance(e, EnsembleMember) else
                    EnsembleMember(e, names, present or list(range(len(names)))) for e in self.ensemble]
        if sc.captions == "data" and present:  # the paper's in-batch captions: those of the training data
            u_text = text[present]
            to_caption = torch.full((len(names),), -1, dtype=torch.long)
            to_caption[torch.tensor(present)] = torch.arange(len(present))
        else:
            u_text, to_caption = text, torch.arange(len(names))
        to_caption = to_caption.to(self.device)
        log_event(run_dir, {"event": "data", "images": len(bank.images), "classes": len(present), "views": views,
                            "preserve": sorted(self.preserve)})
        self.gen = torch.Generator().manual_seed(sc.seed + step)
        bank.rng = np.random.default_rng(sc.seed + 1 + step)
        aug_rng = np.random.default_rng(sc.seed + 2 + step)  # EOT chain and machine-view crops, one stream
        privacy = CaptionPrivacy(vlp, u_text, to_caption, text[present] if present else None, present,
                                 sc.margin_weight if sc.privacy_loss == "uaeo+margin" else None, sc.margin_kappa,
                                 native=sc.indexer != "none" or (sc.strong_indexer or "none") != "none")
        losses: dict[View, ViewLoss] = {
            View.FULL: FullViewLoss(sc.anchor_weight, sc.semantic_weight, vlp),
            View.SHIELDED: ShieldViewLoss(View.SHIELDED, privacy, self.indexer, embed_weight=sc.embed_weight),
            View.STRONG: ShieldViewLoss(View.STRONG, privacy, Published(EOTConfig(p_lowres=sc.eot_lowres), aug_rng,
                                                                        self.strong_indexer), texture=True,
                                        ensemble=ensemble, ensemble_weight=sc.ensemble_weight,
                                        ensemble_kappa=sc.ensemble_kappa, embed_weight=sc.embed_weight),
            View.MACHINE: MachineViewLoss(vlp, aug_rng, sc.machine_weight, sc.machine_dist_weight),
        }
        for v in self.preserve:
            losses[v] = PreserveLoss(v, sc.preserve_weight)
        self.losses = {v: loss for v, loss in losses.items() if v in views}

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        sc, views, gen = self.config, self.views, self.gen
        if self.sizes:  # multi-size: one decoded size per step, fewer images when they are larger
            height, width = draw_geometry(self.sizes, self.aspects, gen)
            n = max(sc.min_batch, min(sc.batch, round(sc.batch * sc.patch**2 / (height * width))))
            x, labels = self.bank.batch_at(n, height, width)
        else:
            x, labels = self.bank.batch(sc.batch)
        dev = self.device
        x, labels = x.to(dev), labels.to(dev)
        n = len(x)
        q = self.qualities[torch.randint(0, len(self.qualities), (n,), generator=gen)].to(dev)
        vs = draw_views(n, views, sc.p_full, gen)
        if View.FULL in views and View.FULL not in vs:
            vs[0] = View.FULL
        # a keyless view in every step: the shielded one, or (multi-size, whose large steps hold only two images)
        # either keyless view, so that the strong view also trains at the large sizes
        keyless = [v for v in SHIELD_VIEWS if v in views] if self.sizes else [View.SHIELDED]
        if not any(v in vs for v in keyless):
            vs[-1] = View.SHIELDED
        sel = {v: torch.tensor([w == v for w in vs], device=dev) for v in views}
        cond = view_conditions(vs, self.conds, gen, wrong_keys=sc.train_part == "decoder")
        height, width = x.shape[-2:]
        if sc.residual_input == "original":  # no codec: the residual on the original (the full view's stand-in)
            x_ref = x
            x_hat = self.model.finish(x, cond)
        else:
            # the decoder sees the borders it sees at run time: the codec pads the encoder's input
            x_in = pad_to_multiple(x, PAD_MULTIPLE[FORMAT_VERSION]) if sc.codec_pad else x
            y_hat = self.model.quantized_latents(x_in, q)
            with torch.no_grad():
                # reference: the starting decoder's full view; preserved views: its output for the same condition
                t_cond = torch.stack([c if v in self.preserve else self.conds[View.FULL]
                                      for v, c in zip(vs, cond, strict=True)])
                x_ref = self.teacher.synthesize(y_hat, t_cond, q).clamp(0, 1)[..., :height, :width]
            with torch.set_grad_enabled(sc.train_part == "decoder"):
                x_hat = self.model.synthesize(y_hat, cond, q).clamp(0, 1)[..., :height, :width]
            x_hat = self.model.finish(x_hat, cond)  # the view as the codec makes it at this size (indexer residual)
        lam = self.lambdas[q] * 255**2
        d_img = lam * F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1)
        d_ref = lam * F.mse_loss(x_hat, x_ref, reduction="none").flatten(1).mean(1)
        loss = x_hat.sum() * 0
        rec: dict[str, float] = {}
        for v in (View.FULL, *SHIELD_VIEWS, View.MACHINE):
            m = sel.get(v)
            if m is None or not m.any():
                continue
            terms = self.losses[v](ViewBatch(x[m], x_hat[m], x_ref[m], labels[m], lam[m], d_img[m], d_ref[m], gen))
            if terms.distortion is not None:
                loss = loss + self.weighting.weight(v) * terms.distortion
            for t in terms.terms:
                loss = loss + t
            rec.update(terms.rec)
        keyless = torch.tensor([v in SHIELD_VIEWS for v in vs], device=dev)
        if keyless.any():  # the keyless views' lattice pattern (a loss with grid_weight, logged always)
            energy = lattice_energy(x_hat[keyless] - x_ref[keyless])
            if sc.grid_weight > 0:
                loss = loss + sc.grid_weight * (lam[keyless] * energy).sum() / n
            rec["lattice_rms"] = float(energy.detach().mean().sqrt()) * 255  # 8-bit levels
        self._measured = (x, x_ref, x_hat.detach(), sel)
        if self.sizes:
            rec.update(height=float(height), width=float(width))
        return loss, {"loss": float(loss.detach()), **rec}

    def after_step(self) -> dict[str, float]:
        """Each view's PSNR drop below the reference full view; the keyless views' drops drive the weighting."""
        x, x_ref, x_hat, sel = self._measured
        rec = {}
        with torch.no_grad():
            drop = _psnr(x_ref, x) - _psnr(x_hat, x)  # dB below the reference full view
        for v in (View.FULL, View.MACHINE):
            if sel.get(v) is not None and sel[v].any():
                rec[f"{v}_drop_db"] = float(drop[sel[v]].mean())
        with torch.no_grad():  # live trigger units of each trained view's own condition: 0 means the CLTG's last
            # ReLU is dead for it, and that view decodes like every other view whose trigger is dead (with an
            # indexer residual the shield conditions' trigger is 0 by design: ConditionalHyperprior.trigger)
            for v in self.views:
                tau = self.model.trigger(self.model.cltg, self.conds[v][None].float())
                rec[f"tau_live_{v}"] = float((tau > 0).sum())
        self._check_trigger(rec)
        for v in SHIELD_VIEWS:
            m = sel.get(v)
            if m is None or not m.any() or v in self.preserve:
                continue
            gap = float(drop[m].mean())
            self.weighting.update(v, gap)
            rec[f"gap_db_{v}"] = gap
        return rec

    def _check_trigger(self, rec: dict[str, float]) -> None:
        """Count the steps in a row in which a keyless view's trigger is dead; past ``dead_trigger_patience``,
        set :attr:`stop_reason` (the trainer checkpoints and stops).  A dead trigger gets no gradient, so the
        view stays the full view: the rest of the stage would train no shield.  Models with an indexer residual
        are exempt (their shield conditions' trigger is 0 by design), and so is ``train_part`` other than
        decoder (the condition path is frozen)."""
        patience = self.config.dead_trigger_patience
        if patience <= 0 or self.model.indexer_residual is not None or self.config.train_part != "decoder":
            return
        dead = [v for v in SHIELD_VIEWS if v in self.views and rec.get(f"tau_live_{v}", 1.0) == 0]
        self._dead_steps = self._dead_steps + 1 if dead else 0
        if self._dead_steps >= patience:
            self.stop_reason = f"trigger dead for {','.join(map(str, dead))} for {patience} steps"

    def summary(self, recs: list[dict[str, float]]) -> dict[str, float]:
        """The last step's terms and the weighting's state."""
        return {**{k: round(v, 4) for k, v in recs[-1].items()}, **self.weighting.log_record()}

    def state(self) -> dict:
        return {"key_fingerprint": fingerprint(self.key), "weighting": self.weighting.state_dict(),
                "views": ",".join(self.kept_views()), "shield_config": json.dumps(asdict(self.config))}

    def kept_views(self) -> list[View]:
        """The views the exported weights have: those trained here, and, when only the residual trains (the
        decoder frozen), every view the first init weights file had (its metadata)."""
        views = list(self.views)
        first = self.config.init.split(",")[0].partition("=")[0]
        if self.config.train_part != "decoder" and first.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(first, framework="pt") as f:
                meta = dict(f.metadata() or {})
            views += [v for v in trained_views(meta) if v not in views]
        return views


def train_shield(sc: ShieldConfig, vlp=None, ensemble: list | None = None) -> Path:
    """Run (or resume) a shield stage and return its checkpoint; ``vlp``/``ensemble`` override ``sc.vlp`` and
    ``sc.ensemble`` (tests)."""
    if sc.threads:
        torch.set_num_threads(sc.threads)
    return Trainer(sc).run(ShieldStage(sc, vlp, ensemble))
