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
* where ``os.fork`` exists, runs the decoder in a forked child (:class:`ChildDecoder`) that only
  entropy-decodes: requests and symbols go through pipes, and a read past even the padding kills the
  child, never this process, and is reported as a :class:`~psic_cli.errors.FormatError`.  One child
  serves every decode of a process (forking a process that holds torch costs tens of milliseconds, a
  third of a 768x512 decode); a crash, an interrupt or a timeout ends it and the next decode forks anew.

Valid streams decode to exactly the same symbols as before: the decoder never reads the padding.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import os
import pickle
import signal
import struct
import threading
from array import array

import numpy as np

from psic_cli.errors import FormatError

MAX_PAD_BYTES = 1 << 22  # zero bytes appended behind a string (one 32-bit word per symbol, at most 4 MiB)


def padded(string: bytes, n_symbols: int) -> bytes:
    """``string`` followed by one zero word per symbol (capped at :data:`MAX_PAD_BYTES`) and two more."""
    return bytes(string) + bytes(min(4 * n_symbols, MAX_PAD_BYTES) + 8)


_LEN = struct.Struct("<Q")  # little-endian 64-bit length before every message on the pipes


def _read_exact(fd: int, n: int) -> bytearray | None:
    """Exactly ``n`` bytes from ``fd``, or None at end of file (the other side closed or died)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return buf


def _write_all(fd: int, *parts) -> None:
    for part in parts:
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(fd, view):]


def _serve(decoder, requests: int, replies: int) -> None:
    """The child's loop: decode each request and send back its symbols (int32) until end of file.

    A request is a pickled header (string length, symbol count, the CDF tables), then the string, then the
    indexes as raw int32: a 24-megapixel latent's 12 million indexes travel as 48 MB, never as a Python list
    (the rANS binding reads any sequence of ints, here a memoryview of the received buffer)."""
    while (head := _read_exact(requests, _LEN.size)) is not None:
        header = _read_exact(requests, _LEN.unpack(head)[0])
        if header is None:
            return
        size, n, cdfs, cdf_sizes, offsets = pickle.loads(header)
        data, raw = _read_exact(requests, size), _read_exact(requests, 4 * n)
        if data is None or raw is None:
            return
        symbols = array("i", decoder.decode_with_indexes(bytes(data), memoryview(raw).cast("i"), cdfs, cdf_sizes,
                                                         offsets))
        _write_all(replies, _LEN.pack(4 * len(symbols)), symbols)


class ChildDecoder:
    """``decoder.decode_with_indexes`` run in a forked child that serves one request after another."""

    def __init__(self, decoder):
        requests_r, self._requests = os.pipe()
        self._replies, replies_w = os.pipe()
        self.owner = os.getpid()
        self.kind = type(decoder)
        self.pid = os.fork()
        if self.pid == 0:  # child: serve, then exit without running any of the parent's cleanup
            code = 1
            try:
                os.close(self._requests)
                os.close(self._replies)
                # Ctrl-C is the parent's to handle: it kills this child (a batch worker that ignores SIGINT
                # must not see its file fail because the decoder child died of the terminal's signal)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                faulthandler.disable()  # a crash here is expected of crafted data: no dump on stderr
                _serve(decoder, requests_r, replies_w)
                code = 0
            finally:
                os._exit(code)
        os.close(requests_r)
        os.close(replies_w)

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def decode(self, data: bytes, indexes, cdfs, cdf_sizes, offsets) -> np.ndarray:
        """The symbols (int32) of one string; ``indexes`` a list or an int32 array.  A child that dies on the
        string raises :class:`FormatError` (and is gone)."""
        if not self.alive:
            raise RuntimeError("this child decoder has ended")
        idx = np.ascontiguousarray(indexes, dtype=np.int32)  # no copy of an int32 array (the y latent's)
        n = idx.size
        header = pickle.dumps((len(data), n, cdfs, cdf_sizes, offsets), protocol=5)
        try:
            try:
                _write_all(self._requests, _LEN.pack(len(header)), header, data, idx)
            except BrokenPipeError:
                pass  # the child is gone: its status says why
            head = _read_exact(self._replies, _LEN.size)
            raw = None if head is None else _read_exact(self._replies, _LEN.unpack(head)[0])
        except BaseException:  # interrupted (Ctrl-C, --timeout): the child is mid-string, so it is finished
            self.close()
            raise
        if raw is not None and len(raw) == 4 * n:
            return np.frombuffer(raw, dtype=np.int32)
        status = self.close()  # crashed or failed on this string
        if status is not None and os.WIFSIGNALED(status):
            raise FormatError(f"entropy-coded data is corrupt (the rANS decoder was stopped by signal "
                              f"{os.WTERMSIG(status)})")
        raise FormatError("entropy-coded data is corrupt (the rANS decoder failed)")

    def close(self) -> int | None:
        """End the child (if this process started it) and return its wait status."""
        if not self.alive:
            return None
        pid, self.pid = self.pid, None
        for fd in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)
        if os.getpid() != self.owner:  # a forked copy of the owner: the child is not ours to reap
            return None
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # a no-op on a child that already died of its input
        with contextlib.suppress(ChildProcessError):
            return os.waitpid(pid, 0)[1]
        return None


_shared: ChildDecoder | None = None
_shared_lock = threading.Lock()


def decode_in_child(decoder, data: bytes, indexes, cdfs, cdf_sizes, offsets) -> np.ndarray:
    """Decode through this process's :class:`ChildDecoder`, forked (from ``decoder``) when there is none
    of ``decoder``'s type (decoders of one type hold no state between strings: CompressAI's ``RansDecoder``)."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive or _shared.owner != os.getpid() or _shared.kind is not type(decoder):
            if _shared is not None:
                _shared.close()
            _shared = ChildDecoder(decoder)
        return _shared.decode(data, indexes, cdfs, cdf_sizes, offsets)


def shared_child() -> ChildDecoder | None:
    """This process's decoder child (None before the first decode here, or in a freshly forked process)."""
    return _shared


def _forget_after_fork() -> None:
    """In a forked copy of this process: drop the copies of the pipes to the parent's child."""
    global _shared, _shared_lock
    _shared_lock = threading.Lock()
    if _shared is not None:
        _shared.close()
        _shared = None


def _close_at_exit() -> None:
    if _shared is not None:
        _shared.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_close_at_exit)


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
        if isinstance(indexes, np.ndarray):
            indexes = indexes.tolist()
        return np.asarray(decoder.decode_with_indexes(data, indexes, cdfs, cdf_sizes, offsets), dtype=np.int32)


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
