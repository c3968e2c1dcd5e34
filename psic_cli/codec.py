"""The codec API: encode pixels to .psic bytes, decode .psic bytes to a view, read a file's header.

Views (:class:`psic_cli.views.View`): shielded (the default, no key), strong (no key, the strong shield),
full (the model's key), machine (the key; for machine analytics, once a model ships that condition).
The key is a switch between views, not a lock: anyone with the weights can decode any file
(``docs/threat-model.md``).  :func:`seal` is the lock: it encrypts and authenticates a whole file under a
key (:mod:`psic_cli.seal`); :func:`decode` opens sealed input with ``seal_key`` (default: ``key``).
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
from psic_cli import seal as _seal
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
from psic_cli.keys import fingerprint
from psic_cli.views import View, condition, trained_views
from psic_cli.zoo import DEFAULT_MODEL, load_model

VIEWS = tuple(v.value for v in View)


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
    view: View


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


def check_view(view: str | None, have_key: bool) -> View:
    """The view to decode: shielded (default) or strong without a key, full (default) or machine with one."""
    if view is None:
        return View.FULL if have_key else View.SHIELDED
    if view not in VIEWS:
        raise UsageError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    v = View(view)
    if v.needs_key and not have_key:
        raise UsageError(f"the {v} view needs a key (--key)")
    return v


#: ``effort`` searches the latents of images up to this many pixels (memory grows with the image)
EFFORT_MAX_PIXELS = 2_000_000
MAX_EFFORT = 200


def check_effort(effort: int) -> None:
    if not 0 <= effort <= MAX_EFFORT:
        raise UsageError(f"effort {effort} is out of range (0..{MAX_EFFORT})")


def effort_condition(lm, key: bytes | None) -> list[float]:
    """The condition of the view the encoder's search keeps close to the photo: the full view (``key``), or,
    for a model whose shield is untrained (every view decodes alike), the keyless one."""
    info = lm.info
    if key is not None:
        if fingerprint(key) != info.key_fingerprint:
            raise KeyMismatch(f"this key (fingerprint {fingerprint(key)}) does not open model {info.model_id} "
                              f"(expects {info.key_fingerprint})")
        return condition(View.FULL, key, lm.model.cfg.cond_dim)
    if info.metadata.get("shield") == "untrained":
        return condition(View.SHIELDED, None, lm.model.cfg.cond_dim)
    raise UsageError(f"--effort with model {info.model_id} needs its key (--key): the search keeps the full "
                     "view close to the photo")


def encode_pixels(pixels: np.ndarray, model_id: str = DEFAULT_MODEL, quality: int | None = None,
                  source_mode: str = "RGB", effort: int = 0, key: bytes | None = None) -> bytes:
    """Encode uint8 HxWx3 RGB pixels; ``quality`` is 1..Q (default: the middle level).

    ``effort`` > 0 spends that many search steps on the latents (:meth:`ConditionalHyperprior.refine`):
    a better size-quality trade at the same level, for about a second per step per 0.4 megapixels on one core; images
    over :data:`EFFORT_MAX_PIXELS` are coded in one pass (:func:`encode` says so).  A model with a trained
    shield needs its ``key`` for that search."""
    import torch

    check_effort(effort)
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
    steps = effort if h * w <= EFFORT_MAX_PIXELS else 0
    cond = torch.tensor([effort_condition(lm, key)]) if steps else None
    with torch.no_grad():
        arr = np.ascontiguousarray(pixels)
        arr = arr if arr.flags.writeable else arr.copy()  # torch.from_numpy needs a writable buffer
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float().div_(255.0)
        out = model.compress(pad_to_multiple(x, container.PAD_MULTIPLE[header.version]), quality - 1,
                             refine_steps=steps, cond=cond)
    if tuple(out["y_shape"]) != container.latent_shape(header):
        raise RuntimeError(f"latent shape {out['y_shape']} does not match the format's geometry")
    tile = container.Tile(tuple(out["shape"]), out["checksum"], tuple(s[0] for s in out["strings"]))
    return container.pack(container.PsicFile(header, (tile,)))


def encode(data: bytes, name: str = "image", model_id: str = DEFAULT_MODEL, quality: int | None = None,
           max_pixels: int = DEFAULT_MAX_PIXELS, effort: int = 0, key: bytes | None = None) -> EncodeResult:
    """Encode image file bytes (any format Pillow reads) to .psic bytes (``effort``, ``key``: see
    :func:`encode_pixels`)."""
    check_effort(effort)
    img = load_image(data, name, max_pixels=max_pixels)
    notices = list(img.notices)
    h, w = img.pixels.shape[:2]
    if effort and h * w > EFFORT_MAX_PIXELS:
        notices.append(f"{name}: {w}x{h} is over {EFFORT_MAX_PIXELS / 1e6:g} megapixels; coded without the "
                       "--effort search")
    out = encode_pixels(img.pixels, model_id, quality, img.source_mode, effort=effort, key=key)
    return EncodeResult(out, container.unpack_header(out)[0], notices)


def seal(data: bytes, key: bytes) -> bytes:
    """Seal a .psic file under a 32-byte psic key (checks the file first; adds ``seal.OVERHEAD`` bytes)."""
    if _seal.is_sealed(data):
        raise FormatError("file is already sealed")
    container.unpack(data)
    return _seal.seal(data, key)


def unseal(data: bytes, key: bytes) -> bytes:
    """The plain .psic bytes of a sealed file.  A wrong key or a changed byte raises
    :class:`psic_cli.seal.SealOpenError` (exit code 4); a damaged sealed header a :class:`FormatError`."""
    plain = _seal.unseal(data, key)
    container.unpack(plain)
    return plain


def read_info(data: bytes, key: bytes | None = None) -> dict:
    """Header fields of a .psic file (verifies structure and checksum; needs no model).

    A sealed file shows only that it is sealed and its size, unless ``key`` opens it."""
    if _seal.is_sealed(data):
        fields = _seal.parse_header(data)
        if key is None:
            return {"sealed": True, "seal_version": fields["seal_version"], "bytes": len(data)}
        info = read_info(unseal(data, key))
        info.update(sealed=True, sealed_bytes=len(data))
        return info
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
        "sealed": False,
    }
    return info


def check_model_options(model_id: str, key: bytes | None, view: View) -> None:
    """Check the key's fingerprint and the requested view against the installed model's metadata (no
    torch, no weights loaded): :class:`KeyMismatch` for a key that does not open it, :class:`ModelError`
    for a view (or shield level) it has not trained."""
    from psic_cli.zoo import model_info

    info = model_info(model_id)
    if key is not None and fingerprint(key) != info.key_fingerprint:
        raise KeyMismatch(f"this key (fingerprint {fingerprint(key)}) does not open model {model_id} "
                          f"(expects {info.key_fingerprint})")
    if view not in trained_views(info.metadata):
        what = f"{view.shield_level} shield" if view.shield_level else f"{view} view"
        raise ModelError(f"model {model_id} has no trained {what}")


def check_shield(shield: str | None, view: View) -> View:
    """Apply ``--shield subtle|strong`` (the older spelling of ``--view shielded|strong``) to ``view``;
    only a keyless view has a shield level."""
    if shield is None:
        return view
    try:
        wanted = View.from_shield(shield)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if view.shield_level is None:
        raise UsageError(f"--shield applies to the shielded view only (this decode gives the {view} view)")
    if view is not View.SHIELDED and view is not wanted:
        raise UsageError(f"--shield {shield} contradicts --view {view}")
    return wanted


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
           shield: str | None = None, seal_key: bytes | None = None, timeout: float | None = None) -> DecodeResult:
    """Decode .psic bytes to a :class:`View`.  Without a key: shielded (default) or strong (``view="strong"``,
    or ``shield="strong"``).  With the model's key: full (default) or machine.  A key that does not open the
    model raises :class:`KeyMismatch` before decoding.  Sealed input is opened first with ``seal_key``
    (default: ``key``); without either it raises :class:`psic_cli.seal.SealedFileNeedsKey`.  ``timeout``
    (seconds) bounds the entropy decoding and synthesis: past it, :class:`DecodeTimeout` is raised."""
    import torch

    view = check_shield(shield, check_view(view, key is not None))
    if _seal.is_sealed(data):
        data = unseal(data, seal_key if seal_key is not None else key)
    f = container.unpack(data)
    h = f.header
    container.check_geometry(f)
    check_model_options(h.model_id, key, view)  # from the weights' metadata, before torch loads
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
    cond = torch.tensor([condition(view, key, model.cfg.cond_dim)])
    with deadline(timeout), torch.no_grad():
        y_hat, checksum = model.decode_latent([[s] for s in tile.strings], tile.z_shape,
                                              container.latent_shape(h))
        if checksum != tile.checksum:  # before the synthesis: a crafted file costs no pixels
            raise ChecksumError("decoded symbols do not match the encoder's (entropy decoder desync)")
        check_deadline()
        x_hat = model.synthesize(y_hat, cond, torch.tensor([h.quality - 1]), runtime=True)
        x_hat = model.finish(x_hat[..., : h.height, : h.width], cond, inplace=True)
        check_deadline()
        # 8-bit pixels in one pass into their own buffer: x_hat is ours to overwrite (no copies of a 24 MP image)
        pixels = torch.empty((h.height, h.width, x_hat.shape[1]), dtype=torch.uint8)
        pixels.copy_(x_hat[0].mul_(255.0).round_().clamp_(0, 255).permute(1, 2, 0))
    pixels = pixels.numpy()
    return DecodeResult(pixels, h, view)


__all__ = ["encode", "encode_pixels", "decode", "read_info", "seal", "unseal", "EncodeResult", "DecodeResult", "VIEWS"]
