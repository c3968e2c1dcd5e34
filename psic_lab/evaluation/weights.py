"""Evaluate a weights file that is not installed: point the runtime's zoo at a folder holding only it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def install_weights(weights: Path, folder: Path) -> str:
    """Copy ``weights`` into ``folder``, set ``PSIC_WEIGHTS`` to that folder and return the file's model id.

    The runtime then loads these weights (and only these) under their own id, exactly as a user would.
    """
    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as f:
        meta = f.metadata() or {}
    if "model_id" not in meta:
        raise ValueError(f"{weights}: no model_id in the safetensors metadata")
    shutil.copy(weights, Path(folder) / Path(weights).name)
    os.environ["PSIC_WEIGHTS"] = str(folder)
    return meta["model_id"]
