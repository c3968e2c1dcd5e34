"""Where output goes: data on stdout, everything for people (notices, progress, errors) on stderr."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
import unicodedata
from collections.abc import Iterator

from psic_cli.errors import ExitCode, PsicError, Terminated

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(msg: str) -> str:
    """``msg`` with control characters escaped (a newline in a file name must not split a message)."""
    if msg.isprintable():
        return msg
    return "".join(_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in msg)


class Messages:
    """stderr messages with a verbosity switch (``--quiet`` silences notices, ``-v`` adds tracebacks)."""

    def __init__(self, quiet: bool = False, verbose: bool = False):
        self.quiet, self.verbose = quiet, verbose

    def notice(self, msg: str) -> None:
        if not self.quiet:
            print(f"psic: {one_line(msg)}", file=sys.stderr)

    def warn(self, msg: str) -> None:
        print(f"psic: warning: {one_line(msg)}", file=sys.stderr)

    def error(self, msg: str) -> None:
        print(f"psic: error: {one_line(msg)}", file=sys.stderr)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt): temporary files are
    removed as on Ctrl-C.  Only the main thread can set signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def exit_on_error(msgs: Messages) -> Iterator[None]:
    """Map exceptions to one stderr line and an :class:`ExitCode` (SystemExit).

    Ctrl-C exits 130 and SIGTERM 143, both after removing partial outputs."""
    try:
        with sigterm_as_interrupt():
            yield
    except PsicError as e:
        msgs.error(str(e))
        if msgs.verbose:
            traceback.print_exc()
        raise SystemExit(int(e.exit_code)) from None
    except Terminated:
        msgs.error("terminated; partial outputs removed")
        raise SystemExit(int(ExitCode.TERMINATED)) from None
    except KeyboardInterrupt:
        msgs.error("interrupted; partial outputs removed")
        raise SystemExit(int(ExitCode.INTERRUPTED)) from None
    except BrokenPipeError:
        raise SystemExit(int(ExitCode.OUTPUT)) from None
    except (SystemExit, GeneratorExit):
        raise
    except Exception as e:  # a bug
        msgs.error(f"internal error: {type(e).__name__}: {e} (rerun with -v for the traceback)")
        if msgs.verbose:
            traceback.print_exc()
        raise SystemExit(int(ExitCode.INTERNAL)) from None


def progress(enabled: bool):
    """A rich progress bar on stderr (transient), or None when disabled / stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )
