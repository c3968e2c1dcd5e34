"""Model configurations: one JSON file per model id under ``configs/`` (no torch here)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources

ARCHS = ("scale-hyperprior", "mean-scale-hyperprior", "mean-scale-checkerboard")
#: entropy-coded strings per tile of each arch, in file order: y and z; the checkerboard's y anchors, z, and the
#: y positions coded after them (the file format's tile record holds any count; the reader checks this one)
ARCH_STRINGS = {"scale-hyperprior": ("y string", "z string"), "mean-scale-hyperprior": ("y string", "z string"),
                "mean-scale-checkerboard": ("y anchor string", "z string", "y string")}


@dataclass(frozen=True)
class ModelConfig:
    """Shape-defining settings of a conditional codec."""

    model_id: str  # name stored in .psic headers and weight files
    arch: str  # one of ARCHS: Balle 2018 scale hyperprior, Minnen 2018 mean-scale hyperprior, or the latter with
    # He 2021's checkerboard context (half the latent coded first, the other half predicted from it)
    N: int  # channels of the analysis/synthesis and hyper transforms
    M: int  # channels of the latent y
    cond_dim: int  # length of the condition vector (key-derived +-1 bits, zeros = shielded)
    trigger_width: int  # width of the CLTG trigger MLP output tau
    last_width: int  # channels of the decoder's last (half-resolution) stage
    lambdas: tuple[float, ...]  # rate-distortion weight of each quality level (quality = index + 1)
    downsampling: int = 64  # total spatial stride of z (format 1 padded inputs to a multiple of it)
    trigger_scale: bool = False  # the trigger also scales decoder features (FiLM), not only biases them
    trigger_head: bool = False  # one more conditional block at the decoder's last stage (identity at init)
    scale_grid: int = 0  # > 0: a condition branch on the latent pooled to this many cells a side, whose bias
    # maps follow the image's scale, not the pixel's (ScaleBranch; docs/shield-design.md); 0: none
    indexer_residual: int = 0  # > 0: the shields add a residual made on a thumbnail this many pixels a side of
    # the whole decoded image and resized to it (IndexerResidual; docs/shield-design.md); 0: none
    indexer_residual_rms: tuple[float, ...] = ()  # per shield view (shielded, strong), the residual's exact RMS in
    # 8-bit levels at thumbnail resolution (a fixed budget); empty: bounded by a tanh instead (0.25 at most)
    indexer_residual_mask: float = 0.0  # > 0: the residual is weighted by the thumbnail's local activity to this
    # power before its budget is applied (texture masking: less in flat sky, more in texture); 0: uniform
    analysis_width: int = 0  # > 0: channels of the analysis transform g_a's hidden layers, a wider encoder for the
    # same decoder (the bitstream's decoding side does not change); 0: N, as the synthesis
    synthesis_width: int = 0  # > 0: channels of the synthesis transform g_s's stages before the last one (which is
    # ``last_width``); 0: N.  The hyper transforms stay N wide
    scale_keyless_only: bool = False  # the scale branch acts only for the public keyless conditions (the shields):
    # for any other condition (a key's full or machine view, a wrong key) its maps are exactly zero

    @property
    def qualities(self) -> int:
        return len(self.lambdas)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        data = dict(data)
        data["lambdas"] = tuple(float(v) for v in data["lambdas"])
        data["indexer_residual_rms"] = tuple(float(v) for v in data.get("indexer_residual_rms", ()))
        cfg = cls(**data)
        if cfg.arch not in ARCHS:
            raise ValueError(f"unknown arch {cfg.arch!r}; expected one of {ARCHS}")
        return cfg


def _config_files() -> dict[str, str]:
    folder = resources.files("psic_cli.models") / "configs"
    return {p.name[: -len(".json")]: p.read_text() for p in folder.iterdir() if p.name.endswith(".json")}


def list_configs() -> list[str]:
    """Model ids that have a bundled JSON config."""
    return sorted(_config_files())


def load_config(model_id: str) -> ModelConfig:
    """Return the bundled config of ``model_id`` (or of a JSON file path); unknown ids list the valid ones."""
    if model_id.endswith(".json"):
        with open(model_id) as f:
            return ModelConfig.from_dict(json.load(f))
    files = _config_files()
    if model_id not in files:
        raise KeyError(f"unknown model {model_id!r}; known: {', '.join(sorted(files))}")
    return ModelConfig.from_dict(json.loads(files[model_id]))
