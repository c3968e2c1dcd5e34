"""Make ``import torchvision`` work next to the CPU-only torch wheel.

PyPI's torchvision 0.28.0 ships C++ ops linked against CUDA torch; on a CPU torch
they cannot load, and ``torchvision/__init__`` then fails on ``register_fake("torchvision::nms")``.
compressai and open_clip both import torchvision, so everything that imports them calls
:func:`ensure_torchvision_importable` first.  See ``../shared/docs/platform-notes.md`` section 1.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

_TV_LIB = None  # keeps the op-schema library alive for the life of the process


def ensure_torchvision_importable() -> None:
    """Load torchvision's real ops if they load, else define the two op schemas it expects."""
    global _TV_LIB
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or _TV_LIB is not None or not spec.submodule_search_locations:
        return
    folder = list(spec.submodule_search_locations)[0]
    libs = [f for f in os.listdir(folder) if f.startswith("_C") and f.endswith(".so")]
    try:
        if libs:
            torch.ops.load_library(os.path.join(folder, libs[0]))
            _TV_LIB = True
            return
    except (OSError, RuntimeError):
        pass
    try:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (e.g. by a previous import path)
        _TV_LIB = True
        return
    _TV_LIB = lib


def import_compressai_core() -> None:
    """Make ``compressai.layers`` / ``compressai.entropy_models`` / ``compressai.ans`` importable cheaply.

    ``import compressai`` runs a package ``__init__`` that pulls torchvision, torch-geometric and
    pandas (2-8 s here).  The codec's runtime path needs only the layers, the entropy models and the
    rANS coder, which depend on torch, numpy and scipy alone.  When compressai has not been imported
    yet, register a bare package object whose ``__path__`` is CompressAI's folder, so that its
    submodules import without the heavy ``__init__``.  Training code that needs the rest of
    CompressAI calls :func:`ensure_torchvision_importable` and imports submodules as usual.
    """
    import sys
    import types

    if "compressai" in sys.modules:
        return
    spec = importlib.util.find_spec("compressai")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("compressai is not installed")
    pkg = types.ModuleType("compressai")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__file__ = spec.origin
    # the two names CompressAI's entropy models look up on the package
    pkg.available_entropy_coders = lambda: ["ans"]
    pkg.get_entropy_coder = lambda: "ans"
    sys.modules["compressai"] = pkg
    defer_import("scipy.stats")


def defer_import(name: str) -> None:
    """Stand a placeholder in for module ``name`` that imports the real one at its first missing attribute.

    CompressAI's entropy models ``import scipy.stats`` (0.4 s, a fifth of a small decode's start-up) for one
    call, ``norm.ppf``, made only when CDF tables are rebuilt (``update``), never when a file is decoded
    with the tables its weights carry.  The placeholder carries ``__file__`` and ``__spec__``, so that code
    walking ``sys.modules`` (``inspect.getmodule``, which torch runs when it registers operators) does not
    load it; ``importlib.util.LazyLoader`` would.  A module already imported, or not installed, is left as
    it is."""
    import sys
    import types

    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    parent, _, child = name.rpartition(".")

    class Deferred(types.ModuleType):
        def __getattr__(self, attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = importlib.import_module(name)
            if parent:
                setattr(sys.modules[parent], child, real)
            return getattr(real, attr)

    stub = Deferred(name)
    stub.__file__, stub.__spec__ = spec.origin, spec
    sys.modules[name] = stub
    if parent:
        setattr(sys.modules[parent], child, stub)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt(3) parameters
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


def tune_malloc() -> bool:
    """Let glibc's malloc keep and reuse freed memory across a decode's tiles and layers.

    By default glibc hands blocks over a dynamic threshold straight back to the kernel, and every large
    tensor of the next tile or layer then page-faults its memory in again (system time: a quarter of a
    6000x4000 decode).  Serving every block from the heap (no per-block ``mmap``, so tensors over 32 MiB
    too) and never trimming it keeps that memory mapped between tiles and layers; glibc still falls back
    to ``mmap`` when the heap cannot grow.  Called by the CLI only (a process-wide setting is not a
    library's to make); returns False where glibc's ``mallopt`` is not available (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(M_MMAP_MAX, 0) == 1 and ok
    return mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
