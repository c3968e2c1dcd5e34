"""Vision-language models (VLP) the privacy shield is trained and judged against.

Importing this package is cheap: nothing heavy (torch, transformers, open_clip) is imported until
one of the names below is used.  The codec runtime never imports it.

* :func:`load_vlp` - build a model from a spec (``psic-vlp-mini``, ``judge-scratch``, ``effnet-lite2``,
  ``openclip:ARCH:PATH``)
* :class:`VLP` - the common interface (``encode_image``, ``encode_text``, ``zero_shot_logits`` ...)
* :func:`evaluate_folder` - zero-shot top-1 and retrieval R@1 on a labelled image folder
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import VLP
    from .eval import evaluate_folder
    from .factory import load_vlp

__all__ = ["VLP", "evaluate_folder", "load_vlp"]

_LAZY = {"VLP": ".base", "evaluate_folder": ".eval", "load_vlp": ".factory"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
