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

from psic_cli.codec import pad_to_multiple
from psic_cli.container import FORMAT_VERSION, PAD_MULTIPLE
from psic_cli.keys import fingerprint, read_key
from psic_cli.views import SHIELD_VIEWS, View, condition
from psic_lab.training.data import load_rgb_at_least, random_crop
from psic_lab.training.train import cosine_lr, load_matching, log_event


@dataclass
class ShieldConfig:
    init: str = "lab_weights/rd/psic-sh.safetensors"  # rate-distortion weights or checkpoint to start from
    reference: str = ""  # the decoder whose full view is the reference (default: init)
    model_id: str = "psic-sh"
    data: list[str] = field(default_factory=lambda: ["../shared/data/imagenette/train"])  # <wnid>/ folders
    key: str = "weights/shipped.key"
    vlp: str = "psic-vlp-mini"
    run_dir: str = "runs/psic-sh-shield"
    steps: int = 3000
    batch: int = 8
    patch: int = 192
    lr: float = 1e-4
    lr_final: float = 1e-5  # cosine decay to this over the last half of the run
    qualities: str = "all"  # "all" or 1-based quality levels to train, e.g. "2" or "1,2"
    p_full: float = 0.375  # share of samples decoded with the model's key
    weighting: str = "adaptive"  # adaptive (Lagrangian dual ascent) | fixed
    nu: float = 1.0  # initial (adaptive) or constant (fixed) weight of the shielded view's distortion
    nu_lr: float = 0.02
    nu_min: float = 0.05
    nu_max: float = 50.0
    psnr_budget_db: float = 0.6  # allowed PSNR gap between the shielded and the reference full view
    anchor_weight: float = 1.0
    semantic_weight: float = 0.0
    privacy_loss: str = "uaeo"  # uaeo | uaeo+margin (adds a margin loss on the caption decision)
    margin_weight: float = 0.1
    margin_kappa: float = 5.0  # logit units: push the true caption this far below the best other one
    codec_pad: bool = False  # pad each batch as the codec does (replicate, to 16 in format 2), crop back
    eot_lowres: float = 0.0  # strong shield: share of EOT samples seen at 48-96 px (low-resolution models)
    captions: str = "data"  # UAEO's text set: "data" (the training data's class captions) or "imagenet" (1000)
    reset_trigger: bool = True  # re-initialise CLTG and zero the trigger projections at the start
    trigger_lr_mult: float = 10.0  # learning-rate multiplier of the condition path (CLTG, P, S)
    # later stages (machine view, strong shield) train more views on the same decoder:
    views: str = "full,shielded"  # trained views: full, shielded, strong, machine
    preserve: str = ""  # views held to the starting decoder's output (e.g. shielded, in a later stage)
    preserve_weight: float = 4.0
    strong_budget_db: float = 2.5  # allowed PSNR gap of the strong shield
    strong_nu: float = 1.0
    ensemble: str = "effnet-lite1"  # extra models the strong shield must fool (never the unseen judges)
    ensemble_weight: float = 1.0
    ensemble_kappa: float = 0.0  # > 0: hinge on the logit margin (confident misclassification) instead of p_true
    machine_weight: float = 1.0
    machine_dist_weight: float = 0.25
    threads: int = 0
    seed: int = 2000
    log_every: int = 20
    ckpt_every: int = 100
    limit_images: int | None = None
    max_minutes: float | None = None  # stop (with a checkpoint) after this wall time


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


def _truth(logits_u: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's prediction on the original images, and the truth: the label, or that prediction where
    the label is unknown (-1)."""
    pred = logits_u.argmax(-1)
    return pred, torch.where(labels >= 0, labels, pred)


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
        pred, truth = _truth(logits_u, labels)
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
                  "top1": acc}


def margin_loss(z: torch.Tensor, u: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: float,
                kappa: float) -> torch.Tensor:
    """Carlini-Wagner style margin on the caption decision: ``relu(l_true - max_other + kappa)``.

    Unlike UAEO it stops pushing a sample once the target prefers another caption by ``kappa`` logits, so
    the shield spends its distortion on the images the target still reads.  ``truth`` as in UAEO.
    """
    with torch.no_grad():
        _, truth = _truth(scale * u @ text.t(), labels)
    logits = scale * z @ text.t()
    true = logits.gather(1, truth[:, None])[:, 0]
    other = logits.scatter(1, truth[:, None], float("-inf")).amax(-1)
    return F.relu(true - other + kappa).mean()


def parse_views(spec: str, what: str = "views") -> list[View]:
    """``"full,shielded"`` -> ``[View.FULL, View.SHIELDED]``; ValueError naming the valid views."""
    names = [v.strip() for v in spec.split(",") if v.strip()]
    if any(v not in {m.value for m in View} for v in names):
        raise ValueError(f"{what} must come from {', '.join(View)}: {names}")
    return [View(v) for v in names]


def draw_views(n: int, views: list[View], p_full: float, gen: torch.Generator) -> list[View]:
    """Per-sample views: full with probability ``p_full``, the others uniformly."""
    rest = [v for v in views if v is not View.FULL]
    u = torch.rand(n, generator=gen).tolist()
    k = torch.randint(0, max(1, len(rest)), (n,), generator=gen).tolist()
    return [View.FULL if (ui < p_full or not rest) and View.FULL in views else rest[ki]
            for ui, ki in zip(u, k, strict=True)]


def view_conditions(views: list[View], conds: dict[View, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """Condition vectors (``conds``: :func:`psic_cli.views.condition` of each view); the shielded view gets
    its own (no key) or a random wrong key, half each, so a guessed key never unlocks."""
    out = []
    for v in views:
        if v is View.SHIELDED and torch.rand(1, generator=gen).item() >= 0.5:
            out.append(torch.randint(0, 2, conds[v].shape, generator=gen).float() * 2 - 1)
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


def _lr(step: int, sc: ShieldConfig) -> float:
    return cosine_lr(step, sc.steps, sc.lr, sc.lr_final)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = F.mse_loss(a, b, reduction="none").flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def _is_trigger(name: str) -> bool:
    """The condition path: CLTG and the per-block trigger projections (bias P, scale S)."""
    return name.startswith("cltg.") or (name.startswith("g_s.") and name.split(".")[-2] in ("p1", "p2", "s1", "s2"))


def reset_trigger(model, seed: int) -> None:
    """Fresh CLTG weights and zero trigger projections.

    Rate-distortion training draws random conditions that must all reconstruct the image, which teaches
    the condition path to ignore its input (measured on our rd weights: the trigger of the key and of
    random keys is exactly zero, dead ReLUs).  The shield stage therefore restarts that path; with zero
    projections the decoder's output is unchanged at the start.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.cltg.modules():
        if isinstance(m, torch.nn.Linear):
            bound = 1 / math.sqrt(m.in_features)
            with torch.no_grad():
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.uniform_(-bound, bound, generator=g)
    for name, p in model.named_parameters():
        if _is_trigger(name) and not name.startswith("cltg."):
            with torch.no_grad():
                p.zero_()


class EnsembleMember:
    """A model the strong shield must fool, with the class scores the loss reads.

    ImageNet classifiers (``effnet-lite*``) score the 1000 ImageNet classes.  Vision-language models
    (e.g. ``surrogate-scratch``) score the captions of ``classes`` (the training data's classes), so a
    model trained on ten captions is attacked on the ten-way decision it was trained for.
    """

    def __init__(self, model, class_names: list[str], classes: list[int]) -> None:
        self.model = model
        self.name = getattr(model, "name", type(model).__name__)
        self.caption_emb = None if hasattr(model, "logits") else model.class_embeddings(
            [class_names[i] for i in classes])
        self.index = torch.full((len(class_names),), -1, dtype=torch.long)
        self.index[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))

    def logits(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class scores, the true class's column in them, and which images have a scorable label."""
        if self.caption_emb is None:
            return self.model.logits(x), labels.clamp_min(0), labels >= 0
        target = torch.where(labels >= 0, self.index[labels.clamp_min(0)], -1)
        logits = self.model.logit_scale * self.model.encode_image(x) @ self.caption_emb.t()
        return logits, target.clamp_min(0), target >= 0

    def p_true(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probability of the true class per image, and which images have a scorable label."""
        logits, target, valid = self.logits(x, labels)
        return logits.softmax(-1).gather(1, target[:, None])[:, 0], valid


def ensemble_loss(models: list[EnsembleMember], x: torch.Tensor, labels: torch.Tensor,
                   kappa: float = 0.0) -> torch.Tensor:
    """Untargeted loss per model, averaged over the models.

    ``kappa == 0``: ``-log(1 - p_true)``, which vanishes once the true class is gone.  ``kappa > 0``: the
    high-confidence hinge ``max(0, z_true - max_other + kappa)`` on the logits (Carlini-Wagner), which keeps
    pushing until the true class trails the best other class by ``kappa``; confident adversarial examples
    transfer better to models the shield never saw.
    """
    loss = x.sum() * 0
    for m in models:
        logits, target, valid = m.logits(x, labels)
        if kappa > 0:
            z_true = logits.gather(1, target[:, None])[:, 0]
            z_other = logits.scatter(1, target[:, None], float("-inf")).amax(1)
            per = F.relu(z_true - z_other + kappa)
        else:
            p_true = logits.softmax(-1).gather(1, target[:, None])[:, 0]
            per = -torch.log1p(-p_true.clamp(max=1 - 1e-4))
        loss = loss + (per * valid).mean()
    return loss / max(1, len(models))


def check_seen(models: list) -> None:
    """Refuse to train against an unseen judge, whatever spec or path it was loaded from."""
    from psic_lab.vlp.judges import UNSEEN_JUDGES

    for m in models:
        name = getattr(getattr(m, "model", m), "name", "")
        if name in UNSEEN_JUDGES:
            raise ValueError(f"{name} is an unseen judge: never train against it")


def train_shield(sc: ShieldConfig, vlp=None, ensemble: list | None = None) -> Path:
    """Run (or resume) the shield stage; ``vlp``/``ensemble`` override ``sc.vlp``/``sc.ensemble`` (tests)."""
    import copy

    from psic_cli.models import build_model, load_config
    from psic_lab.training.augment import EOTConfig, publish, texture_weights
    from psic_lab.training.machine import machine_losses
    from psic_lab.training.train import save_checkpoint

    if sc.threads:
        torch.set_num_threads(sc.threads)
    if sc.privacy_loss not in ("uaeo", "uaeo+margin"):
        raise ValueError(f"privacy_loss must be uaeo or uaeo+margin, got {sc.privacy_loss!r}")
    if sc.weighting not in ("adaptive", "fixed"):
        raise ValueError(f"weighting must be adaptive or fixed, got {sc.weighting!r}")
    views = parse_views(sc.views)
    preserve = set(parse_views(sc.preserve, "preserve"))
    if View.SHIELDED not in views:
        raise ValueError(f"views must include {View.SHIELDED}: {sc.views!r}")
    torch.manual_seed(sc.seed)
    run_dir = Path(sc.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    cfg = load_config(sc.model_id)
    qualities = torch.tensor(parse_qualities(sc.qualities, cfg.qualities))
    model = build_model(cfg)
    n = load_matching(model, sc.init) if sc.init else 0  # no init: random weights (tests)
    teacher = copy.deepcopy(model).eval()  # the starting decoder: reference full view, preserved views
    if sc.reference:  # a fresh model: tensors the reference lacks keep their neutral initial values
        teacher = build_model(cfg).eval()
        load_matching(teacher, sc.reference)
    if sc.reset_trigger and not ckpt_path.exists():
        reset_trigger(model, sc.seed)
    for p in teacher.parameters():
        p.requires_grad_(False)
    key = read_key(sc.key)
    conds = {v: torch.tensor(condition(v, key, cfg.cond_dim)) for v in View}
    key_cond = conds[View.FULL]
    trainable = [p for name, p in model.named_parameters() if name.startswith(("g_s.", "cltg."))]
    trigger = [p for name, p in model.named_parameters() if _is_trigger(name)]
    others = [p for name, p in model.named_parameters() if name.startswith("g_s.") and not _is_trigger(name)]
    opt = torch.optim.Adam([{"params": others, "lr_mult": 1.0}, {"params": trigger, "lr_mult": sc.trigger_lr_mult}],
                           lr=sc.lr)
    aux_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # checkpoint format compatibility
    step = 0
    nu = {View.SHIELDED: sc.nu, View.STRONG: sc.strong_nu}
    budget = {View.SHIELDED: sc.psnr_budget_db, View.STRONG: sc.strong_budget_db}
    gap_ema: dict[View, float | None] = {View.SHIELDED: None, View.STRONG: None}
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ex = state["extra"]
        step = state["step"]
        nu = {View.SHIELDED: ex["nu"], View.STRONG: ex.get("nu_strong", sc.strong_nu)}
        gap_ema = {View.SHIELDED: ex.get("gap_ema"), View.STRONG: ex.get("gap_ema_strong")}
        log_event(run_dir, {"event": "resume", "step": step})
    else:
        log_event(run_dir, {"event": "init_from", "path": sc.init, "tensors": n})
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("g_s.", "cltg.")))
    model.eval()  # frozen parts (GDN, entropy models) in inference mode; g_s has no batch-dependent layers

    if vlp is None:
        from psic_lab.vlp import load_vlp

        vlp = load_vlp(sc.vlp)
    if ensemble is None:
        ensemble = []
        if View.STRONG in views and sc.ensemble:
            from psic_lab.vlp import load_vlp

            ensemble = [load_vlp(spec.strip()) for spec in sc.ensemble.split(",")]
    check_seen(ensemble)
    for m in [vlp, *ensemble]:
        for p in m.parameters() if isinstance(m, torch.nn.Module) else ():
            p.requires_grad_(False)
    names, _ = imagenet_classes()
    text_cache = run_dir / "class_text.pt"
    if text_cache.exists():
        text = torch.load(text_cache)
    else:
        text = vlp.class_embeddings(names)
        torch.save(text, text_cache)
    lambdas = torch.tensor(cfg.lambdas)
    bank = LabelledBank(sc.data, sc.patch, sc.seed, sc.limit_images)
    present = sorted({y for y in bank.labels if y >= 0})  # the classes of the data (10-way accuracy)
    ensemble = [e if isinstance(e, EnsembleMember) else EnsembleMember(e, names, present or list(range(len(names))))
                for e in ensemble]
    if sc.captions == "data" and present:  # the paper's in-batch captions: those of the training data
        u_text = text[present]
        to_caption = torch.full((len(names),), -1, dtype=torch.long)
        to_caption[torch.tensor(present)] = torch.arange(len(present))
    elif sc.captions in ("data", "imagenet"):
        u_text, to_caption = text, torch.arange(len(names))
    else:
        raise ValueError(f"captions must be data or imagenet, got {sc.captions!r}")
    log_event(run_dir, {"event": "data", "images": len(bank.images), "classes": len(present), "views": views,
                   "preserve": sorted(preserve)})
    gen = torch.Generator().manual_seed(sc.seed + step)
    bank.rng = np.random.default_rng(sc.seed + 1 + step)
    aug_rng = np.random.default_rng(sc.seed + 2 + step)

    def acc10(z: torch.Tensor, labels: torch.Tensor) -> float:
        if not present or len(z) == 0:
            return float("nan")
        truth = torch.tensor([present.index(int(y)) if int(y) in present else -1 for y in labels])
        return float(((z.detach() @ text[present].t()).argmax(-1) == truth).float().mean())

    t0 = last = time.time()
    while step < sc.steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, sc) * g["lr_mult"]
        x, labels = bank.batch(sc.batch)
        q = qualities[torch.randint(0, len(qualities), (sc.batch,), generator=gen)]
        vs = draw_views(sc.batch, views, sc.p_full, gen)
        if View.FULL in views and View.FULL not in vs:
            vs[0] = View.FULL
        if View.SHIELDED not in vs:
            vs[-1] = View.SHIELDED
        sel = {v: torch.tensor([w == v for w in vs]) for v in views}
        cond = view_conditions(vs, conds, gen)
        height, width = x.shape[-2:]
        # the decoder sees the borders it sees at run time: the codec pads the encoder's input
        y_hat = model.quantized_latents(pad_to_multiple(x, PAD_MULTIPLE[FORMAT_VERSION]) if sc.codec_pad else x, q)
        with torch.no_grad():
            # reference: the starting decoder's full view; preserved views: its output for the same condition
            t_cond = torch.stack([c if v in preserve else key_cond for v, c in zip(vs, cond, strict=True)])
            x_ref = teacher.synthesize(y_hat, t_cond, q).clamp(0, 1)[..., :height, :width]
        x_hat = model.synthesize(y_hat, cond, q).clamp(0, 1)[..., :height, :width]
        lam = lambdas[q] * 255**2
        d_img = lam * F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1)
        d_ref = lam * F.mse_loss(x_hat, x_ref, reduction="none").flatten(1).mean(1)
        loss = x_hat.sum() * 0
        rec: dict = {}
        m = sel.get(View.FULL)
        if m is not None and m.any():
            d_full = (d_img + sc.anchor_weight * d_ref)[m].mean()
            loss = loss + d_full
            rec["d_full"] = float(d_full.detach())
            if sc.semantic_weight > 0:
                with torch.no_grad():
                    u_full = vlp.encode_image(x[m])
                sem = (1 - (vlp.encode_image(x_hat[m]) * u_full).sum(-1)).mean()
                loss = loss + sc.semantic_weight * sem
                rec["sem"] = float(sem.detach())
        for v in SHIELD_VIEWS:
            m = sel.get(v)
            if m is None or not m.any():
                continue
            if v in preserve:
                d = sc.preserve_weight * d_ref[m].mean()
                loss = loss + d
                rec[f"d_{v}_preserve"] = float(d.detach())
                continue
            if v is View.STRONG:
                w = texture_weights(x[m])
                d = (lam[m] * (w * (x_hat[m] - x[m]) ** 2).mean(dim=(1, 2, 3))).mean()
                seen = publish(x_hat[m], aug_rng, EOTConfig(p_lowres=sc.eot_lowres))
            else:
                d = d_img[m].mean()
                seen = x_hat[m]
            with torch.no_grad():
                u = vlp.encode_image(x[m])
            z = vlp.encode_image(seen)
            lab = labels[m]
            cap = torch.where(lab >= 0, to_caption[lab.clamp_min(0)], -1)
            priv, stats = uaeo_loss(z, u, u_text, cap, vlp.logit_scale)
            if sc.privacy_loss == "uaeo+margin":
                mar = margin_loss(z, u, u_text, cap, vlp.logit_scale, sc.margin_kappa)
                priv = priv + sc.margin_weight * mar
                stats["margin"] = float(mar.detach())
            loss = loss + nu[v] * d + priv
            if v is View.STRONG and ensemble:
                ens = ensemble_loss(ensemble, seen, labels[m], sc.ensemble_kappa)
                loss = loss + sc.ensemble_weight * ens
                rec["ens_strong"] = float(ens.detach())
            rec[f"d_{v}"] = float(d.detach())
            rec[f"priv_{v}"] = float(priv.detach())
            rec[f"top1_10way_{v}"] = acc10(z, labels[m])
            rec.update({f"{k}_{v}": val for k, val in stats.items()})
        m = sel.get(View.MACHINE)
        if m is not None and m.any():
            ml = machine_losses(vlp, x_hat[m], x[m], aug_rng)
            mloss = ml["global"] + ml["local"] + ml["instance"]
            dm = d_img[m].mean()
            loss = loss + sc.machine_weight * mloss + sc.machine_dist_weight * dm
            rec.update({f"machine_{k}": float(val.detach()) for k, val in ml.items()})
            rec["d_machine"] = float(dm.detach())
        if not torch.isfinite(loss):
            log_event(run_dir, {"event": "non-finite loss, step skipped", "step": step})
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            drop = _psnr(x_ref, x) - _psnr(x_hat.detach(), x)  # dB below the reference full view
            for v in (View.FULL, View.MACHINE):
                if sel.get(v) is not None and sel[v].any():
                    rec[f"{v}_drop_db"] = float(drop[sel[v]].mean())
            for v in SHIELD_VIEWS:
                m = sel.get(v)
                if m is None or not m.any() or v in preserve:
                    continue
                gap = float(drop[m].mean())
                gap_ema[v] = gap if gap_ema[v] is None else 0.95 * gap_ema[v] + 0.05 * gap
                rec[f"gap_db_{v}"] = gap
                if sc.weighting == "adaptive":  # dual ascent on "PSNR gap <= budget"
                    nu[v] = float(np.clip(nu[v] * math.exp(sc.nu_lr * (gap_ema[v] - budget[v])), sc.nu_min,
                                          sc.nu_max))
        out_of_time = sc.max_minutes is not None and time.time() - t0 > 60 * sc.max_minutes
        if step % sc.log_every == 0 or step == sc.steps:
            log_event(run_dir, {"step": step, "loss": round(float(loss.detach()), 4),
                           **{k: round(v, 4) for k, v in rec.items()},
                           **{f"nu_{k}": round(v, 4) for k, v in nu.items() if k in views},
                           **{f"gap_ema_{k}": round(v, 3) for k, v in gap_ema.items() if v is not None},
                           "lr": _lr(step, sc), "s_per_step": round((time.time() - last) / sc.log_every, 3)})
            last = time.time()
        if step % sc.ckpt_every == 0 or step == sc.steps or out_of_time:
            save_checkpoint(ckpt_path, model, opt, aux_opt, step, _as_train_config(sc),
                            {"key_fingerprint": fingerprint(key), "stage": "shield", "nu": nu[View.SHIELDED],
                             "gap_ema": gap_ema[View.SHIELDED], "nu_strong": nu[View.STRONG],
                             "gap_ema_strong": gap_ema[View.STRONG], "views": ",".join(views),
                             "shield_config": json.dumps(sc.__dict__)})
        if out_of_time:
            log_event(run_dir, {"event": "time limit", "step": step})
            break
    return ckpt_path


def _as_train_config(sc: ShieldConfig):
    from psic_lab.training.train import TrainConfig

    return TrainConfig(model_id=sc.model_id, data=list(sc.data), key=sc.key, run_dir=sc.run_dir)
