"""Where output goes: data on stdout, everything for people (notices, progress, errors) on stderr."""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator

from psic_cli.errors import ExitCode, PsicError


class Messages:
    """stderr messages with a verbosity switch (``--quiet`` silences notices, ``-v`` adds tracebacks)."""

    def __init__(self, quiet: bool = False, verbose: bool = False):
        self.quiet, self.verbose = quiet, verbose

    def notice(self, msg: str) -> None:
        if not self.quiet:
            print(f"psic: {msg}", file=sys.stderr)

    def warn(self, msg: str) -> None:
        print(f"psic: warning: {msg}", file=sys.stderr)

    def error(self, msg: str) -> None:
        print(f"psic: error: {msg}", file=sys.stderr)


@contextlib.contextmanager
def exit_on_error(msgs: Messages) -> Iterator[None]:
    """Map exceptions to one stderr line and an :class:`ExitCode` (SystemExit)."""
    try:
        yield
    except PsicError as e:
        msgs.error(str(e))
        if msgs.verbose:
            traceback.print_exc()
        raise SystemExit(int(e.exit_code)) from None
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
