"""The codec API: encode pixels to .psic bytes, decode .psic bytes to a view, read a file's header.

Views: ``shielded`` (the default, no key), ``full`` (the model's key), ``machine`` (the key; for
machine analytics, once a model ships that condition).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from psic_cli import container
from psic_cli.errors import (
    ChecksumError,
    DecodeTimeout,
    FormatError,
    InputError,
    KeyMismatch,
    ModelError,
    UsageError,
)
from psic_cli.imageio import DEFAULT_MAX_PIXELS, load_image
from psic_cli.keys import SHIELD_LEVELS, condition_bits, fingerprint, shield_condition
from psic_cli.zoo import DEFAULT_MODEL, load_model, trained_views

VIEWS = ("shielded", "full", "machine")


@dataclass
class EncodeResult:
    data: bytes
    header: container.Header
    notices: list[str]

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.header.width * self.header.height)


@dataclass
class DecodeResult:
    pixels: np.ndarray  # uint8 HxWx3
    header: container.Header
    view: str


def pad_to_multiple(x, multiple: int):
    """Replicate-pad ``[B, C, H, W]`` at the right and bottom to a multiple of ``multiple`` (the encoder's
    input; the decoder crops back).  Shield training pads the same way (``--codec-pad``).  Format 2
    pads to ``container.PAD_MULTIPLE[2]`` = 16, format 1 padded to 64."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def check_encode_options(model_id: str | None, quality: int | None) -> None:
    """Validate ``--model``/``--quality`` against the installed models without loading one."""
    from psic_cli.zoo import model_info

    info = model_info(model_id or DEFAULT_MODEL)
    if quality is not None and not 1 <= quality <= info.qualities:
        raise UsageError(f"quality {quality} is out of range for {info.model_id} (1..{info.qualities})")


def check_view(view: str | None, have_key: bool) -> str:
    """The view to decode: ``shielded`` without a key, ``full`` (default) or ``machine`` with one."""
    view = view or ("full" if have_key else "shielded")
    if view not in VIEWS:
        raise UsageError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    if view != "shielded" and not have_key:
        raise UsageError(f"the {view} view needs a key (--key)")
    return view


def encode_pixels(pixels: np.ndarray, model_id: str = DEFAULT_MODEL, quality: int | None = None,
                  source_mode: str = "RGB") -> bytes:
    """Encode uint8 HxWx3 RGB pixels; ``quality`` is 1..Q (default: the middle level)."""
    import torch

    lm = load_model(model_id)
    model = lm.model
    nq = model.cfg.qualities
    quality = (nq + 1) // 2 if quality is None else quality
    if not 1 <= quality <= nq:
        raise UsageError(f"quality {quality} is out of range for {model_id} (1..{nq})")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise InputError("pixels must be a uint8 HxWx3 array")
    h, w = pixels.shape[:2]
    header = container.Header(model_id, model.cfg.arch, lm.bitstream_id, quality, w, h, source_mode)
    header.validate()
    with torch.no_grad():
        arr = np.ascontiguousarray(pixels)
        arr = arr if arr.flags.writeable else arr.copy()  # torch.from_numpy needs a writable buffer
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float().div_(255.0)
        out = model.compress(pad_to_multiple(x, container.PAD_MULTIPLE[header.version]), quality - 1)
    if tuple(out["y_shape"]) != container.latent_shape(header):
        raise RuntimeError(f"latent shape {out['y_shape']} does not match the format's geometry")
    y_strings, z_strings = out["strings"]
    tile = container.Tile(tuple(out["shape"]), out["checksum"], (y_strings[0], z_strings[0]))
    return container.pack(container.PsicFile(header, (tile,)))


def encode(data: bytes, name: str = "image", model_id: str = DEFAULT_MODEL, quality: int | None = None,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> EncodeResult:
    """Encode image file bytes (any format Pillow reads) to .psic bytes."""
    img = load_image(data, name, max_pixels=max_pixels)
    out = encode_pixels(img.pixels, model_id, quality, img.source_mode)
    return EncodeResult(out, container.unpack_header(out)[0], img.notices)


def read_info(data: bytes) -> dict:
    """Header fields of a .psic file (verifies structure and checksum; needs no model)."""
    f = container.unpack(data)
    container.check_geometry(f)
    h = f.header
    info = {
        "format_version": h.version,
        "model": h.model_id,
        "arch": h.arch,
        "bitstream_id": h.weights_id.hex(),
        "quality": h.quality,
        "width": h.width,
        "height": h.height,
        "source_mode": h.source_mode,
        "tiles": len(f.tiles),
        "bytes": len(data),
        "bpp": round(len(data) * 8 / (h.width * h.height), 4),
    }
    return info


def check_model_options(model_id: str, key: bytes | None, view: str, shield: str) -> None:
    """Check the key's fingerprint and the requested view against the installed model's metadata (no
    torch, no weights loaded): :class:`KeyMismatch` for a key that does not open it, :class:`ModelError`
    for a view or shield level it has not trained."""
    from psic_cli.zoo import model_info

    info = model_info(model_id)
    if key is not None and fingerprint(key) != info.key_fingerprint:
        raise KeyMismatch(f"this key (fingerprint {fingerprint(key)}) does not open model {model_id} "
                          f"(expects {info.key_fingerprint})")
    trained = trained_views(info.metadata)
    if view == "machine" and "machine" not in trained:
        raise ModelError(f"model {model_id} has no trained machine view")
    if shield != "subtle" and shield not in trained:
        raise ModelError(f"model {model_id} has no trained {shield} shield")


def _condition(model, key: bytes | None, view: str, shield: str):
    import torch

    cfg = model.cfg
    if view == "shielded":
        return torch.tensor([shield_condition(cfg.cond_dim, shield)])
    return torch.tensor([condition_bits(key, cfg.cond_dim, view)])


def check_shield(shield: str | None, view: str) -> str:
    """The shield level: ``subtle`` (default) or ``strong``; only the shielded view has one."""
    if shield is None:
        return "subtle"
    if shield not in SHIELD_LEVELS:
        raise UsageError(f"unknown shield level {shield!r}; choose one of {', '.join(SHIELD_LEVELS)}")
    if view != "shielded":
        raise UsageError(f"--shield applies to the shielded view only (this decode gives the {view} view)")
    return shield


_deadlines = threading.local()  # per thread: monotonic deadlines of the decodes in progress (innermost last)


def _stack() -> list[float]:
    if not hasattr(_deadlines, "stack"):
        _deadlines.stack = []
    return _deadlines.stack


def check_deadline() -> None:
    """Raise :class:`DecodeTimeout` when this thread's innermost decode has run past its ``timeout``."""
    stack = _stack()
    if stack and time.monotonic() > stack[-1]:
        raise DecodeTimeout("decode took longer than --timeout; nothing was written")


@contextlib.contextmanager
def deadline(timeout: float | None) -> Iterator[None]:
    """Bound the enclosed work to ``timeout`` seconds (None: no bound).

    In the main thread a SIGALRM interval timer raises :class:`DecodeTimeout` as soon as the running
    torch operation returns (a forked entropy decoder is killed); elsewhere the bound is checked
    between the decode's stages (:func:`check_deadline`)."""
    if timeout is None:
        yield
        return
    if not timeout > 0:
        raise UsageError(f"--timeout must be positive (got {timeout})")
    stack = _stack()
    stack.append(time.monotonic() + timeout)
    use_alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    installed, old = False, None
    try:
        if use_alarm:
            def _alarm(signum, frame) -> None:
                raise DecodeTimeout("decode took longer than --timeout; nothing was written")

            old = signal.signal(signal.SIGALRM, _alarm)
            installed = True
            signal.setitimer(signal.ITIMER_REAL, timeout)
        yield
    finally:
        if installed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old if old is not None else signal.SIG_DFL)
        stack.pop()


def decode(data: bytes, key: bytes | None = None, view: str | None = None,
           shield: str | None = None, timeout: float | None = None) -> DecodeResult:
    """Decode .psic bytes.  Without a key: the shielded view, at shield level ``subtle`` (default) or
    ``strong``.  With the model's key: ``full`` (default) or ``machine``.  A key that does not open the
    model raises :class:`KeyMismatch` before decoding.  ``timeout`` (seconds) bounds the entropy
    decoding and synthesis: past it, :class:`DecodeTimeout` is raised."""
    import torch

    view = check_view(view, key is not None)
    shield = check_shield(shield, view)
    f = container.unpack(data)
    h = f.header
    container.check_geometry(f)
    check_model_options(h.model_id, key, view, shield)  # from the weights' metadata, before torch loads
    lm = load_model(h.model_id)
    model = lm.model
    if h.weights_id != lm.bitstream_id:
        raise ModelError(
            f"file was written by other weights of {h.model_id} (bitstream id {h.weights_id.hex()}, "
            f"installed {lm.bitstream_id.hex()})"
        )
    if h.arch != model.cfg.arch or not 1 <= h.quality <= model.cfg.qualities:
        raise FormatError(f"header does not match model {h.model_id} (arch {h.arch}, quality {h.quality})")
    tile = f.tiles[0]
    cond = _condition(model, key, view, shield)
    with deadline(timeout), torch.no_grad():
        y_hat, checksum = model.decode_latent([[tile.strings[0]], [tile.strings[1]]], tile.z_shape,
                                              container.latent_shape(h))
        if checksum != tile.checksum:  # before the synthesis: a crafted file costs no pixels
            raise ChecksumError("decoded symbols do not match the encoder's (entropy decoder desync)")
        check_deadline()
        x_hat = model.synthesize(y_hat, cond, torch.tensor([h.quality - 1]), runtime=True).clamp_(0, 1)
        check_deadline()
    x = x_hat[0, :, : h.height, : h.width]
    pixels = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return DecodeResult(pixels, h, view)


__all__ = ["encode", "encode_pixels", "decode", "read_info", "EncodeResult", "DecodeResult", "VIEWS"]
