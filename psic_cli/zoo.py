"""Installed codec weights: ``weights/<model id>.safetensors`` -> a ready model (loaded once per process).

The weights folder is ``$PSIC_WEIGHTS`` if set, else ``weights/`` beside the package (the repository's).
Each file carries its config and provenance in safetensors metadata; the zoo rebuilds the model from
that config and checks that every tensor shape agrees before use.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from psic_cli.errors import ModelError

WEIGHTS_FORMAT = "psic-weights/1"
DEFAULT_MODEL = "psic-sh"
# tensors that define the bitstream (entropy decoding); a file decodes only with the same ones
_REQUIRED_METADATA = ("model_id", "arch", "config", "qualities", "key_fingerprint")
_BITSTREAM_PREFIXES = ("h_s.", "entropy_bottleneck.", "gaussian_conditional.", "log_gain", "context.")


def weights_dir() -> Path:
    env = os.environ.get("PSIC_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    path: Path
    metadata: dict

    @property
    def qualities(self) -> int:
        return int(self.metadata.get("qualities", "0"))

    @property
    def key_fingerprint(self) -> str:
        return self.metadata.get("key_fingerprint", "")


def _read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:  # no torch import for metadata
        return dict(f.metadata() or {})


def list_models() -> list[ModelInfo]:
    """Codec weights installed in :func:`weights_dir` (other safetensors files are ignored)."""
    out = []
    folder = weights_dir()
    if not folder.is_dir():
        return out
    seen: set[str] = set()
    for p in sorted(folder.glob("*.safetensors")):
        try:
            meta = _read_metadata(p)
        except Exception:  # unreadable file: not ours to list
            continue
        if meta.get("format") != WEIGHTS_FORMAT:
            continue
        if not all(k in meta for k in _REQUIRED_METADATA) or not meta["qualities"].isdigit():
            continue  # incomplete psic weights: load_model would refuse them anyway
        if meta["model_id"] in seen:  # first file (by name) wins; a duplicate never shadows it silently
            continue
        seen.add(meta["model_id"])
        out.append(ModelInfo(meta["model_id"], p, meta))
    return out


def model_info(model_id: str) -> ModelInfo:
    models = {m.model_id: m for m in list_models()}
    if model_id not in models:
        known = ", ".join(sorted(models)) or "none"
        hint = "" if os.environ.get("PSIC_WEIGHTS") else "; set PSIC_WEIGHTS to the folder that holds the weights"
        raise ModelError(f"model {model_id!r} is not installed (installed: {known}; folder {weights_dir()}{hint})")
    return models[model_id]


def bitstream_id(state_dict) -> bytes:
    """8-byte id of the tensors that entropy decoding depends on."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        if k.startswith(_BITSTREAM_PREFIXES):
            t = state_dict[k].detach().cpu().contiguous()
            h.update(k.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return h.digest()[:8]


@dataclass
class LoadedModel:
    info: ModelInfo
    model: object  # psic_cli.models.backbones.ConditionalHyperprior
    bitstream_id: bytes
    weights_sha256: str


@lru_cache(maxsize=4)
def load_model(model_id: str) -> LoadedModel:
    """Build the model of ``model_id`` from its weights (cached per process)."""
    import torch
    from safetensors.torch import load_file

    from psic_cli.models import ModelConfig, build_model

    info = model_info(model_id)
    try:
        cfg = ModelConfig.from_dict(json.loads(info.metadata["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise ModelError(f"{info.path}: bad config metadata ({e})") from None
    state = load_file(str(info.path))
    model = build_model(cfg)
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            raise ModelError(f"{info.path}: missing tensor {k}")
        if k.startswith(("entropy_bottleneck._", "gaussian_conditional._", "gaussian_conditional.scale")):
            continue  # CDF tables: sized by the file
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelError(f"{info.path}: tensor {k} has shape {tuple(state[k].shape)}, config says {tuple(v.shape)}")
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    sha = hashlib.sha256(info.path.read_bytes()).hexdigest()
    torch.set_grad_enabled(True)  # leave global state as found
    return LoadedModel(info, model, bitstream_id(state), sha)
