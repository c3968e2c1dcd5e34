"""A memory-safe front for CompressAI's rANS decoder.

``compressai.ans.RansDecoder.decode_with_indexes`` reads its string forward without a length check: each
symbol's renormalisation may read a 32-bit word, and a symbol in the bypass (tail) mode reads further
words for its escape digits.  A valid stream is read exactly to its end, but a crafted one (few bytes,
many symbols) makes the decoder read past the end of its buffer until the process dies with SIGSEGV.

There is no sound per-symbol byte bound short of about a kilobyte per symbol (the bypass escape of
every symbol may read hundreds of words from the state the previous symbol left), so a length check
alone cannot make the decoder safe.  :class:`GuardedCoder` therefore

* refuses strings that no encoder writes (shorter than the 8-byte final state, or not whole 32-bit
  words: :func:`psic_cli.container.check_string`),
* appends zero words (one per symbol, capped), so that the usual over-read of a short stream stays
  inside a buffer we own and ends in a symbol-checksum mismatch, and
* where ``os.fork`` exists, runs the decoder in a forked child that only entropy-decodes and sends the
  symbols back through a pipe: a read past even the padding kills the child, never this process, and
  is reported as a :class:`~psic_cli.errors.FormatError`.

Valid streams decode to exactly the same symbols as before: the decoder never reads the padding.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
from array import array

import numpy as np

from psic_cli.errors import FormatError

MAX_PAD_BYTES = 1 << 22  # zero bytes appended behind a string (one 32-bit word per symbol, at most 4 MiB)


def padded(string: bytes, n_symbols: int) -> bytes:
    """``string`` followed by one zero word per symbol (capped at :data:`MAX_PAD_BYTES`) and two more."""
    return bytes(string) + bytes(min(4 * n_symbols, MAX_PAD_BYTES) + 8)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def decode_in_child(decoder, data: bytes, indexes, cdfs, cdf_sizes, offsets) -> np.ndarray:
    """Run ``decoder.decode_with_indexes`` in a forked child; the symbols come back as int32."""
    n = len(indexes)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: entropy-decode, write the symbols, exit without running any cleanup
        code = 1
        try:
            os.close(r)
            # Ctrl-C is the parent's to handle: it kills this child (a batch worker that ignores SIGINT
            # must not see its file fail because the decoder child died of the terminal's signal)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            faulthandler.disable()  # a crash here is expected of crafted data: no dump on stderr
            view = memoryview(array("i", decoder.decode_with_indexes(data, indexes, cdfs, cdf_sizes,
                                                                     offsets)).tobytes())
            while view:
                view = view[os.write(w, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    status = None
    try:
        with os.fdopen(r, "rb", buffering=0) as f:
            raw = _read_all(f.fileno())
        _, status = os.waitpid(pid, 0)
    finally:
        if status is None:  # interrupted (Ctrl-C, --timeout): stop the child before leaving
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise FormatError(f"entropy-coded data is corrupt (the rANS decoder was stopped by signal "
                          f"{os.WTERMSIG(status)})")
    if os.WEXITSTATUS(status) != 0 or len(raw) != 4 * n:
        raise FormatError("entropy-coded data is corrupt (the rANS decoder failed)")
    return np.frombuffer(raw, dtype=np.int32)


class GuardedCoder:
    """Stands in for CompressAI's ``_EntropyCoder`` on the decode path (``entropy_coder`` attribute)."""

    def __init__(self, inner, isolate: bool | None = None):
        self._inner = inner
        self.name = getattr(inner, "name", "ans")
        self.isolate = hasattr(os, "fork") if isolate is None else isolate

    def encode_with_indexes(self, *args, **kwargs):
        return self._inner.encode_with_indexes(*args, **kwargs)

    def decode_with_indexes(self, string: bytes, indexes, cdfs, cdf_sizes, offsets):
        from psic_cli.container import check_string

        check_string(string)
        data = padded(string, len(indexes))
        decoder = getattr(self._inner, "_decoder", self._inner)
        if self.isolate:
            return decode_in_child(decoder, data, indexes, cdfs, cdf_sizes, offsets)
        return decoder.decode_with_indexes(data, indexes, cdfs, cdf_sizes, offsets)


@contextlib.contextmanager
def guarded(*entropy_models):
    """Swap the entropy models' coders for :class:`GuardedCoder` for the duration of a decode."""
    saved = [m.entropy_coder for m in entropy_models]
    try:
        for m, c in zip(entropy_models, saved, strict=True):
            m.entropy_coder = GuardedCoder(c)
        yield
    finally:
        for m, c in zip(entropy_models, saved, strict=True):
            m.entropy_coder = c
