"""Independent judges: models never used to train the privacy shield.

* :class:`ScratchJudge` (``judge-scratch``): a small CNN image tower trained from random init at 64 px
  against the same frozen MiniLM text tower; it shares no trained image weights with ``psic-vlp-mini``.
* ``surrogate-scratch``: the same kind of model (another architecture, :class:`PlainCNN`, another seed)
  that the strong shield *may* train against, so that it learns what fools from-scratch low-resolution
  models without ever seeing ``judge-scratch``'s weights.
* :class:`EffNetLabelJudge` (``effnet-lite2``): the ImageNet-trained EfficientNet-Lite2 classifier, used
  as a VLP whose "text embedding" of a prompt is the one-hot vector of the ImageNet class named in it,
  so zero-shot over a label set is the classifier restricted to those classes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import VLP, normalise, read_weights, resize_center_crop
from .mini import LITE_MEAN, LITE_SIZES, LITE_STD, load_efficientnet_lite
from .text import DATA_DIR, TEXT_DIM, imagenet_classes, read_class_file, shared_minilm

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_JUDGE_WEIGHTS = WEIGHTS_DIR / "judge-scratch.safetensors"
DEFAULT_SURROGATE_WEIGHTS = WEIGHTS_DIR / "surrogate-scratch.safetensors"
#: models that measure transfer and must never be trained against
UNSEEN_JUDGES = ("judge-scratch", "effnet-lite2")
SCRATCH_MEAN = (0.485, 0.456, 0.406)
SCRATCH_STD = (0.229, 0.224, 0.225)


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = _cbr(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x)))


class _Tower(nn.Module):
    """An image tower: ``features`` (ending in a pooled vector of ``widths[-1]``) then a linear ``head``."""

    def __init__(self, widths: Sequence[int], features: nn.Sequential, out_dim: int) -> None:
        super().__init__()
        self.widths = list(widths)
        self.features = features
        self.head = nn.Linear(self.widths[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised embedding ``[B, out_dim]`` of normalised images."""
        return self.head(self.features(x))


class SmallResNet(_Tower):
    """A ~2 M-parameter ResNet-style tower for 56-72 px inputs, ending in a linear map to ``out_dim``."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), out_dim: int = TEXT_DIM) -> None:
        w = list(widths)
        super().__init__(w, nn.Sequential(
            _cbr(3, w[0], 2),
            _cbr(w[0], w[1]),
            nn.MaxPool2d(2),
            _Residual(w[1]),
            _cbr(w[1], w[2], 2),
            _Residual(w[2]),
            _cbr(w[2], w[3], 2),
            _Residual(w[3]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ), out_dim)


class PlainCNN(_Tower):
    """A VGG-style tower (no shortcuts) for 56-72 px inputs, ending in a linear map to ``out_dim``."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), out_dim: int = TEXT_DIM) -> None:
        w = list(widths)
        super().__init__(w, nn.Sequential(
            _cbr(3, w[0], 2),
            _cbr(w[0], w[1]),
            _cbr(w[1], w[1]),
            nn.MaxPool2d(2),
            _cbr(w[1], w[2]),
            _cbr(w[2], w[2]),
            nn.MaxPool2d(2),
            _cbr(w[2], w[3]),
            _cbr(w[3], w[3]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ), out_dim)


TOWERS = {"SmallResNet": SmallResNet, "PlainCNN": PlainCNN}


class ScratchJudge(VLP):
    """``judge-scratch``: :class:`SmallResNet` image tower (trained from scratch) + frozen MiniLM text."""

    name = "judge-scratch"
    embed_dim = TEXT_DIM

    def __init__(self, tower: nn.Module | None = None, image_size: int = 64, logit_scale: float = 30.0,
                 name: str = "judge-scratch") -> None:
        super().__init__()
        self.name = name
        self.tower = tower if tower is not None else SmallResNet()
        self.image_size = image_size
        self.logit_scale = float(logit_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding of ``[0, 1]`` images (resized to ``image_size`` inside)."""
        x = normalise(resize_center_crop(images, self.image_size), SCRATCH_MEAN, SCRATCH_STD)
        return F.normalize(self.tower(x), dim=-1)

    @property
    def text(self) -> nn.Module:
        """The frozen MiniLM text tower, loaded on first use: a run that reads only images (a shield stage with
        its class embeddings cached) never needs it, nor ``transformers``.  It stays on the CPU."""
        return shared_minilm()

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised MiniLM embedding ``[N, 384]`` (on the CPU)."""
        return self.text(list(texts))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_JUDGE_WEIGHTS) -> ScratchJudge:
        """Build a from-scratch model (``judge-scratch`` by default) from its safetensors file.

        The model's name comes from the file's metadata, so a judge loaded from any path is still
        recognised as that judge.
        """
        arch, state = read_weights(path, "from-scratch model", "python -m psic_lab.vlp.train_judge")
        tower = TOWERS[arch.get("tower", "SmallResNet")](arch["widths"], arch.get("out_dim", TEXT_DIM))
        tower.load_state_dict(state)
        return cls(tower, image_size=arch["image_size"], logit_scale=arch["logit_scale"],
                   name=arch.get("model", "judge-scratch")).freeze()


def _norm_name(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


class EffNetLabelJudge(VLP):
    """ImageNet classifier (EfficientNet-Lite2 by default) exposed through the VLP interface.

    Image embedding: the 1000-class softmax.  Text embedding: one-hot over ImageNet classes for the
    class whose name (or a registered alias, e.g. from a ``wnid<TAB>name`` file) is the longest one
    found in the text; all-zero when none matches.  So the zero-shot score of a label set is the
    classifier's probability restricted to it, and prompt templates do not matter.
    """

    embed_dim = 1000
    logit_scale = 1.0

    def __init__(self, variant: str = "efficientnet-lite2") -> None:
        super().__init__()
        self.name = variant.replace("efficientnet-", "effnet-")
        self.backbone = load_efficientnet_lite(variant)
        self.image_size = LITE_SIZES[variant]
        wnids, names = imagenet_classes()
        self.wnid_index = {w: i for i, w in enumerate(wnids)}
        self.aliases: dict[str, int] = {}
        for i, n in enumerate(names):
            self.aliases.setdefault(_norm_name(n), i)
        for f in sorted(DATA_DIR.glob("*.tsv")):
            self.register_class_file(f)
        self.freeze()

    def register_class_file(self, path: str | Path) -> None:
        """Add the names of a ``wnid -> name`` file as aliases of their ImageNet classes."""
        for wnid, name in read_class_file(path).items():
            if wnid in self.wnid_index:
                self.aliases[_norm_name(name)] = self.wnid_index[wnid]
                self.aliases.setdefault(wnid.lower(), self.wnid_index[wnid])

    def class_index(self, text: str) -> int | None:
        """ImageNet index of the longest class name contained in ``text`` (word boundaries), or ``None``."""
        t = f" {_norm_name(text)} "
        best: tuple[int, int] | None = None
        for alias, idx in self.aliases.items():
            if f" {alias} " in t and (best is None or len(alias) > best[0]):
                best = (len(alias), idx)
        return None if best is None else best[1]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's 1000 ImageNet logits of ``[0, 1]`` images."""
        return self.backbone(normalise(resize_center_crop(images, self.image_size), LITE_MEAN, LITE_STD))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """1000-class softmax (not L2-normalised: dot products with one-hots are class probabilities)."""
        return self.logits(images).softmax(-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """One-hot ImageNet class vectors ``[N, 1000]`` (zero rows for unknown texts)."""
        out = torch.zeros(len(texts), self.embed_dim)
        for r, t in enumerate(texts):
            idx = self.class_index(t)
            if idx is not None:
                out[r, idx] = 1.0
        return out

    @torch.no_grad()
    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str] = ("{}",)) -> torch.Tensor:
        """One-hot rows for ``class_names`` (templates are irrelevant here)."""
        missing = [c for c in class_names if self.class_index(c) is None]
        if missing:
            raise KeyError(f"{self.name}: no ImageNet class for {missing}")
        return self.encode_text(list(class_names))
