"""The one interface every vision-language model (VLP) in :mod:`psic_lab.vlp` implements.

A VLP maps images and texts into a shared, L2-normalised embedding space:

* :meth:`VLP.encode_image` takes a ``[B, 3, H, W]`` float tensor with values in ``[0, 1]`` (any ``H, W``)
  and applies the model's own resize and normalisation inside, so the result is differentiable
  with respect to the input pixels (the privacy shield backpropagates through it).
* :meth:`VLP.encode_text` takes a list of strings.
* :meth:`VLP.class_embeddings` / :meth:`VLP.zero_shot_logits` do prompt-ensembled zero-shot classification.
* :func:`retrieval_recall_at_1` scores image->text and text->image retrieval from two embedding sets.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Prompt-template ensemble used for zero-shot classification (``{}`` is the class name).
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of the {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of the {}.",
    "a good photo of the {}.",
)

#: Template used to build the single caption per image for retrieval.
CAPTION_TEMPLATE = "a photo of a {}."


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bilinear, antialiased) and centre-crop to ``size x size``.

    Differentiable with respect to ``images``; a no-op for inputs that are already ``size x size``.
    """
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            images = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        images = images[..., top : top + size, left : left + size]
    return images


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Channel-wise ``(x - mean) / std`` for a ``[B, 3, H, W]`` tensor."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def read_weights(path, what: str, train_hint: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The ``architecture`` metadata (JSON) and the tensors of a bundled VLP weights file."""
    import json
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights missing: {path} (train: {train_hint})")
    with safe_open(str(path), framework="pt") as f:
        arch = json.loads(f.metadata()["architecture"])
    return arch, load_file(str(path))


class VLP(nn.Module, abc.ABC):
    """Abstract vision-language model: image and text embeddings in one normalised space.

    Subclasses set :attr:`name`, :attr:`embed_dim`, :attr:`logit_scale` and implement
    :meth:`encode_image` and :meth:`encode_text`.  All parameters are frozen after loading;
    gradients still flow from the image embedding back to the input pixels.
    """

    name: str = "vlp"
    embed_dim: int = 0
    #: multiplier that turns cosine similarities into logits
    logit_scale: float = 100.0

    @abc.abstractmethod
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Embed ``[B, 3, H, W]`` images in ``[0, 1]``; returns ``[B, embed_dim]``, L2-normalised."""

    @abc.abstractmethod
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed a list of strings; returns ``[N, embed_dim]``, L2-normalised (no gradient)."""

    def freeze(self) -> VLP:
        """Put the model in eval mode and stop gradients into its parameters; returns ``self``."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    @torch.no_grad()
    def class_embeddings(
        self, class_names: Sequence[str], templates: Sequence[str] = ZERO_SHOT_TEMPLATES
    ) -> torch.Tensor:
        """Prompt-ensembled class embeddings ``[C, embed_dim]``: mean of normalised template embeddings."""
        texts = [t.format(c) for c in class_names for t in templates]
        emb = self.encode_text(texts).view(len(class_names), len(templates), -1).mean(1)
        return F.normalize(emb, dim=-1)

    def zero_shot_logits(
        self,
        images: torch.Tensor,
        class_names: Sequence[str],
        templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
        class_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Zero-shot logits ``[B, C]`` of ``images`` over ``class_names`` (differentiable w.r.t. images)."""
        if class_emb is None:
            class_emb = self.class_embeddings(class_names, templates)
        return self.logit_scale * self.encode_image(images) @ class_emb.t()

    def zero_shot_predict(
        self, images: torch.Tensor, class_names: Sequence[str], templates: Sequence[str] = ZERO_SHOT_TEMPLATES
    ) -> torch.Tensor:
        """Predicted class indices ``[B]`` (no gradient)."""
        with torch.no_grad():
            return self.zero_shot_logits(images, class_names, templates).argmax(-1)


def retrieval_recall_at_1(
    image_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str]
) -> dict[str, float]:
    """Recall@1 for paired embeddings (image ``i`` goes with caption ``i``).

    Identical caption strings are interchangeable: image->text counts a hit when the top-ranked
    caption has the same text as the image's own caption, and text->image counts a hit when the
    top-ranked image's own caption has the same text as the query.
    """
    sim = image_emb @ text_emb.t()
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    cap_id = torch.tensor([ids[c] for c in captions], device=sim.device)
    i2t = (cap_id[sim.argmax(1)] == cap_id).float().mean().item()
    t2i = (cap_id[sim.argmax(0)] == cap_id).float().mean().item()
    return {"i2t_r1": i2t, "t2i_r1": t2i}
