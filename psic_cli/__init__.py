"""psic: a privacy-shielded learned image codec.

The codec API (``encode``, ``decode``, ``read_info``, ``seal``, ``unseal``) lives in :mod:`psic_cli.codec`;
importing this package imports nothing heavy.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("psic")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"


def __getattr__(name: str):
    if name in ("encode", "decode", "read_info", "encode_pixels", "seal", "unseal"):
        from psic_cli import codec

        return getattr(codec, name)
    raise AttributeError(name)


__all__ = ["encode", "decode", "read_info", "encode_pixels", "seal", "unseal", "__version__"]
