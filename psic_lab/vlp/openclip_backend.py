"""open_clip backend: any open_clip architecture with weights from a local checkpoint, never from a hub.

Spec: ``openclip:ARCH:PATH`` where ``PATH`` is a local ``.bin``/``.pt``/``.safetensors`` state dict.
``ARCH`` is a built-in open_clip config name, or a custom one registered from a JSON config that
sits next to the checkpoint as ``ARCH.json`` (or ``open_clip_config.json`` with a ``model_cfg`` key).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import VLP, normalise, resize_center_crop
from .text import set_offline

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def import_open_clip():  # noqa: ANN201 - returns the module
    """Import open_clip offline, with the torchvision shim in place."""
    set_offline()
    from psic_cli._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    return open_clip


def register_config_near(arch: str, checkpoint: Path) -> None:
    """Register ``ARCH.json`` / ``open_clip_config.json`` found next to ``checkpoint`` with open_clip."""
    open_clip = import_open_clip()
    direct = checkpoint.parent / f"{arch}.json"
    if direct.is_file():
        open_clip.add_model_config(direct)
        return
    hf = checkpoint.parent / "open_clip_config.json"
    if hf.is_file():
        cfg = json.loads(hf.read_text())
        cfg = cfg.get("model_cfg", cfg)
        tmp = checkpoint.parent / f".{arch}.psic.json"
        try:
            tmp.write_text(json.dumps(cfg))
            open_clip.add_model_config(tmp)
        finally:
            tmp.unlink(missing_ok=True)


class OpenClipVLP(VLP):
    """An open_clip model behind the :class:`VLP` interface (resize + normalisation inside)."""

    def __init__(self, arch: str, checkpoint: str | Path) -> None:
        super().__init__()
        open_clip = import_open_clip()
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"open_clip checkpoint not found: {checkpoint} (only local files are accepted)")
        register_config_near(arch, checkpoint)
        if arch not in open_clip.list_models():
            raise KeyError(f"unknown open_clip architecture {arch!r}; put {arch}.json next to the checkpoint")
        self.model = open_clip.create_model(arch, pretrained=str(checkpoint), device="cpu")
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.name = f"openclip:{arch}"
        visual = self.model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", getattr(visual, "image_mean", None) or OPENAI_MEAN))
        self.std = tuple(cfg.get("std", getattr(visual, "image_std", None) or OPENAI_STD))
        with torch.no_grad():
            self.logit_scale = float(self.model.logit_scale.exp().clamp(max=100.0))
            self.embed_dim = int(self.model.encode_text(self.tokenizer(["a"])).shape[-1])
        self.freeze()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embedding of ``[0, 1]`` images (differentiable w.r.t. pixels)."""
        x = normalise(resize_center_crop(images, self.image_size), self.mean, self.std)
        return F.normalize(self.model.encode_image(x), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embedding ``[N, D]``."""
        out = [self.model.encode_text(self.tokenizer(list(texts[i : i + 256]))) for i in range(0, len(texts), 256)]
        return F.normalize(torch.cat(out), dim=-1)
