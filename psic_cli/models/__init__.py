"""Conditional learned codecs (runtime side).

Tensor names follow CompressAI and the papers:

- ``x``: image in [0, 1], shape [B, 3, H, W] (H, W multiples of 64)
- ``y`` / ``y_hat``: analysis latent / its quantised value; ``z`` / ``z_hat``: hyper-latent
- ``scales_hat`` / ``means_hat``: Gaussian parameters of ``y`` predicted by ``h_s``
- ``cond``: condition vector [B, cond_dim] (zeros = shielded, key vector = full view)
- ``tau``: trigger produced by the CLTG module from ``cond``
- ``q``: quality index (0-based) selecting the variable-rate gain vector
"""

from psic_cli.models.config import ModelConfig, list_configs, load_config

__all__ = ["ModelConfig", "list_configs", "load_config", "build_model"]


def build_model(cfg: ModelConfig):
    """Build an untrained model for ``cfg`` (imports torch and CompressAI's core lazily)."""
    from psic_cli.models.backbones import build_model as _build

    return _build(cfg)
