"""The shield stage's losses: one object per view, with one small interface, and the privacy terms they use.

A step decodes each sample in one view; :class:`ViewBatch` holds one view's samples, and a view loss
returns :class:`ViewTerms`: a distortion that the adaptive weighting scales (``weighting.py``), terms added
as they are, and numbers for the log.  With ``D(a, b) = lambda_q * 255^2 * MSE(a, b)`` per sample:

- :class:`FullViewLoss`: ``D(x_full, x) + anchor_weight * D(x_full, x_ref)`` (+ semantic preservation);
- :class:`ShieldViewLoss` (shielded, strong): ``nu * D + UAEO`` (+ margin, + the strong shield's ensemble);
- :class:`PreserveLoss`: a view held to the starting decoder, ``preserve_weight * D(x_view, x_ref)``;
- :class:`MachineViewLoss`: the machine view's VLP feature terms plus a little distortion.

What the target (and the ensemble) sees of a decoded view goes through one callable, an :data:`Indexer`
``(x [B, 3, H, W] in [0, 1], generator) -> x'``: the preprocessing of an indexing service.  ``none`` is the
identity; ``multi`` and ``multi-strong`` are :class:`~psic_lab.vlp.preprocess.IndexerSampler` s (one of
short224 / short336 / short448 / squash224 / tiles2x2 per batch; ``multi-strong`` first re-encodes or halves
the image a third of the time).  The decoded view and its original go through the indexer *together*
(:func:`index_pair`: one draw, the same crop, tiles and degradation), so UAEO's soft labels and the embedding
term compare what the target reads of both under the same preprocessing.  The strong shield's
published-image chain (JPEG, resizes, blur, crops, low-resolution thumbnails: ``eot_lowres``) is
:class:`Published`: it transforms the decoded view only, then hands it to the configured indexer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from psic_cli.views import View
from psic_lab.training.augment import EOTConfig, publish, texture_weights
from psic_lab.training.machine import machine_losses
from psic_lab.vlp.preprocess import IndexerSampler, embed_native

Indexer = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def identity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The ``none`` indexer: the target sees the decoded image as it is."""
    return x


#: the indexers' single-image views and tiles (psic_lab.vlp.preprocess), one per batch
MULTI = IndexerSampler(variants=("short224", "short336", "short448", "squash224", "tiles2x2"))
#: the same, after a JPEG q75 / WebP q75 re-encode or a 0.5x downscale a third of the time (the strong shield)
MULTI_STRONG = IndexerSampler(variants=MULTI.variants, degradations=("jpeg75", "webp75", "half"), p_degrade=1 / 3)

#: indexer name -> indexer: the one registry of what the target may see of a decoded view
INDEXERS: dict[str, Indexer] = {"none": identity, "multi": MULTI, "multi-strong": MULTI_STRONG}


def get_indexer(name: str) -> Indexer:
    """The indexer registered as ``name``; ValueError listing the registered ones."""
    if name not in INDEXERS:
        raise ValueError(f"unknown indexer {name!r}; registered: {', '.join(sorted(INDEXERS))}")
    return INDEXERS[name]


class Published:
    """An indexer for the strong shield: the image as a platform publishes it (a random EOT chain of crops,
    blur, resizes, low-resolution thumbnails and JPEG, :func:`~psic_lab.training.augment.publish`), then
    ``then`` (the indexing service's preprocessing).

    The chain draws from ``rng`` (numpy), shared with the machine view's crops, as before the losses were
    objects; ``gen`` goes to ``then``.
    """

    def __init__(self, eot: EOTConfig, rng: np.random.Generator, then: Indexer = identity) -> None:
        self.eot, self.rng, self.then = eot, rng, then

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.then(publish(x, self.rng, self.eot), gen)


def index_pair(indexer: Indexer, x_hat: torch.Tensor, x: torch.Tensor,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """What the target sees of the decoded views ``x_hat`` and of their originals ``x``: both through one draw
    of ``indexer`` (concatenated, so the crop, the tiles and any degradation are the same); a
    :class:`Published` chain transforms ``x_hat`` only.  An indexer that returns ``k`` images per input
    (tiles) returns ``k * B`` rows of each, image-major."""
    if isinstance(indexer, Published):
        x_hat, indexer = publish(x_hat, indexer.rng, indexer.eot), indexer.then
    if indexer is identity:
        return x_hat, x
    both = indexer(torch.cat([x_hat, x.to(x_hat.dtype)]), gen)
    half = both.shape[0] // 2
    return both[:half], both[half:]


def _truth(logits_u: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's prediction on the original images, and the truth: the label, or that prediction where
    the label is unknown (-1)."""
    pred = logits_u.argmax(-1)
    return pred, torch.where(labels >= 0, labels, pred)


def lattice_energy(r: torch.Tensor, period: int = 16) -> torch.Tensor:
    """Per sample, the mean square of the part of ``r`` (``[b, 3, H, W]``, a view minus its reference) that
    repeats every ``period`` pixels from the top left, in luma: ``r`` averaged over all ``period x period``
    cells at each of the cell's positions, less its mean.  That pattern is exactly what the grid score
    measures at the decoder's 16- and 8-pixel lattice harmonics (a period-8 pattern also repeats every 16), so
    a loss on it lowers the score; it is 0 for a residual with no lattice and differentiable.  ``H`` and ``W``
    are cropped to multiples of ``period``; ``[b]`` zeros for inputs smaller than one cell."""
    b, _, h, w = r.shape
    h, w = h // period * period, w // period * period
    if h == 0 or w == 0:
        return r.new_zeros(b)
    from psic_lab.evaluation.metrics import LUMA  # the grid score's channel weights

    luma = torch.einsum("bchw,c->bhw", r[..., :h, :w], r.new_tensor(LUMA))
    cells = luma.reshape(b, h // period, period, w // period, period).mean(dim=(1, 3))
    return (cells - cells.mean(dim=(1, 2), keepdim=True)).pow(2).mean(dim=(1, 2))


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
        if self.index.device != labels.device:  # the model and the batch moved to a device after this was made
            self.index = self.index.to(labels.device)
            self.caption_emb = self.caption_emb.to(labels.device)
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


@dataclass
class ViewBatch:
    """The samples of one view in a step (all tensors sliced to those samples)."""

    x: torch.Tensor  # originals [b, 3, H, W] in [0, 1]
    x_hat: torch.Tensor  # decoded in this view (with gradient)
    x_ref: torch.Tensor  # the starting decoder's full view, or its output in this view when preserved
    labels: torch.Tensor  # ImageNet class indices, -1 where unknown
    lam: torch.Tensor  # lambda_q * 255^2 per sample
    d_img: torch.Tensor  # lam * MSE(x_hat, x) per sample
    d_ref: torch.Tensor  # lam * MSE(x_hat, x_ref) per sample
    gen: torch.Generator  # the step's generator (indexers draw from it)


@dataclass
class ViewTerms:
    """What a view loss returns: the weighting scales ``distortion``; ``terms`` are added as they are."""

    distortion: torch.Tensor | None
    terms: list[torch.Tensor] = field(default_factory=list)
    rec: dict[str, float] = field(default_factory=dict)


class FullViewLoss:
    """Full view: close to the image and to the reference full view; optionally the same VLP embedding."""

    view = View.FULL

    def __init__(self, anchor_weight: float, semantic_weight: float = 0.0, vlp=None) -> None:
        self.anchor_weight, self.semantic_weight, self.vlp = anchor_weight, semantic_weight, vlp

    def __call__(self, b: ViewBatch) -> ViewTerms:
        d_full = (b.d_img + self.anchor_weight * b.d_ref).mean()
        out = ViewTerms(None, [d_full], {"d_full": float(d_full.detach())})
        if self.semantic_weight > 0:
            with torch.no_grad():
                u_full = self.vlp.encode_image(b.x)
            sem = (1 - (self.vlp.encode_image(b.x_hat) * u_full).sum(-1)).mean()
            out.terms.append(self.semantic_weight * sem)
            out.rec["sem"] = float(sem.detach())
        return out


class CaptionPrivacy:
    """The privacy loss on the target's caption decision: UAEO, plus ``margin_weight`` times the margin term
    (``margin_weight=None``: UAEO alone).

    Args:
        vlp: the target (``encode_image``, ``logit_scale``).
        text: caption embeddings UAEO reads [C, D] (the data's classes, or all ImageNet classes).
        to_caption: ImageNet class index -> row of ``text`` (-1: none).
        text10: embeddings of the data's classes, for the logged ``top1_10way`` (None: not logged as a number).
        present: the data's ImageNet classes, in the order of ``text10``.
        native: run the target's tower at the size of a square input (see :meth:`encode`) instead of
            resizing it to the tower's own size.
    """

    def __init__(self, vlp, text: torch.Tensor, to_caption: torch.Tensor, text10: torch.Tensor | None,
                 present: list[int], margin_weight: float | None = None, margin_kappa: float = 5.0,
                 native: bool = False) -> None:
        self.vlp, self.text, self.to_caption, self.native = vlp, text, to_caption, native
        self.text10, self.present = text10, present
        self.margin_weight, self.margin_kappa = margin_weight, margin_kappa

    def acc10(self, z: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 of the target among the data's classes (nan without labelled classes)."""
        if not self.present or len(z) == 0:
            return float("nan")
        truth = torch.tensor([self.present.index(int(y)) if int(y) in self.present else -1 for y in labels],
                             device=z.device)
        return float(((z.detach() @ self.text10.t()).argmax(-1) == truth).float().mean())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The target's embedding of ``x``; with ``native``, a square input of another size than the tower's is
        seen at its own size (:func:`~psic_lab.vlp.preprocess.embed_native`: a 336- or 448-pixel tower), as
        the geometry benchmark reads it."""
        size = getattr(self.vlp, "image_size", None)
        if self.native and size is not None and x.shape[-1] == x.shape[-2] and x.shape[-1] != size:
            return embed_native(self.vlp, x)
        return self.vlp.encode_image(x)

    def __call__(self, seen: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The loss of the target seeing ``seen`` for originals ``x`` (preprocessed as ``seen`` was), and its
        statistics."""
        with torch.no_grad():
            u = self.encode(x)
        z = self.encode(seen)
        self.last = (z, u)
        cap = torch.where(labels >= 0, self.to_caption[labels.clamp_min(0)], -1)
        priv, stats = uaeo_loss(z, u, self.text, cap, self.vlp.logit_scale)
        if self.margin_weight is not None:
            mar = margin_loss(z, u, self.text, cap, self.vlp.logit_scale, self.margin_kappa)
            priv = priv + self.margin_weight * mar
            stats["margin"] = float(mar.detach())
        return priv, {"top1_10way": self.acc10(z, labels), **stats}


class ShieldViewLoss:
    """A keyless view (shielded, strong): its distortion (weighted by the adaptive weighting) and the privacy
    loss of the target reading it through ``indexer`` (the original through the same draw); the strong shield
    weights distortion by texture and adds the ensemble's loss.  ``embed_weight > 0`` adds that times the
    mean cosine between the target's embeddings of the view and of the original (similarity search)."""

    def __init__(self, view: View, privacy: CaptionPrivacy, indexer: Indexer = identity, texture: bool = False,
                 ensemble: list[EnsembleMember] | None = None, ensemble_weight: float = 1.0,
                 ensemble_kappa: float = 0.0, embed_weight: float = 0.0) -> None:
        self.view, self.privacy, self.indexer, self.texture = view, privacy, indexer, texture
        self.ensemble, self.ensemble_weight, self.ensemble_kappa = ensemble or [], ensemble_weight, ensemble_kappa
        self.embed_weight = embed_weight

    def __call__(self, b: ViewBatch) -> ViewTerms:
        v = self.view
        if self.texture:
            w = texture_weights(b.x)
            d = (b.lam * (w * (b.x_hat - b.x) ** 2).mean(dim=(1, 2, 3))).mean()
        else:
            d = b.d_img.mean()
        seen, orig = index_pair(self.indexer, b.x_hat, b.x, b.gen)
        labels = b.labels.repeat_interleave(len(seen) // len(b.x))  # tiles: each tile keeps its image's label
        priv, stats = self.privacy(seen, orig, labels)
        out = ViewTerms(d, [priv])
        if self.embed_weight > 0:
            z, u = self.privacy.last
            cos = (z * u).sum(-1).mean()
            out.terms.append(self.embed_weight * cos)
            out.rec[f"cos_{v}"] = float(cos.detach())
        if self.ensemble:
            ens = ensemble_loss(self.ensemble, seen, labels, self.ensemble_kappa)
            out.terms.append(self.ensemble_weight * ens)
            out.rec[f"ens_{v}"] = float(ens.detach())
        top1_10way = stats.pop("top1_10way")
        out.rec.update({f"d_{v}": float(d.detach()), f"priv_{v}": float(priv.detach()),
                        f"top1_10way_{v}": top1_10way, **{f"{k}_{v}": val for k, val in stats.items()}})
        return out


class PreserveLoss:
    """A view held to the starting decoder's output in that view (a later stage keeps an earlier one)."""

    def __init__(self, view: View, weight: float) -> None:
        self.view, self.weight = view, weight

    def __call__(self, b: ViewBatch) -> ViewTerms:
        d = self.weight * b.d_ref.mean()
        return ViewTerms(None, [d], {f"d_{self.view}_preserve": float(d.detach())})


class MachineViewLoss:
    """Machine view: the target's features of the decode match the original's at global, local and instance
    scale (:func:`~psic_lab.training.machine.machine_losses`), plus ``dist_weight`` times the distortion."""

    view = View.MACHINE

    def __init__(self, vlp, rng: np.random.Generator, weight: float, dist_weight: float) -> None:
        self.vlp, self.rng, self.weight, self.dist_weight = vlp, rng, weight, dist_weight

    def __call__(self, b: ViewBatch) -> ViewTerms:
        ml = machine_losses(self.vlp, b.x_hat, b.x, self.rng)
        dm = b.d_img.mean()
        rec = {f"machine_{k}": float(val.detach()) for k, val in ml.items()}
        rec["d_machine"] = float(dm.detach())
        return ViewTerms(None, [self.weight * (ml["global"] + ml["local"] + ml["instance"]),
                                self.dist_weight * dm], rec)


ViewLoss = FullViewLoss | ShieldViewLoss | PreserveLoss | MachineViewLoss
