"""The error tree of psic and the exit codes the CLI maps them to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses that scripts can rely on (also listed in ``psic --help`` and the README)."""

    OK = 0
    INTERNAL = 1  # a bug: rerun with -v for the traceback
    USAGE = 2  # bad command line (Click's own code)
    BAD_INPUT = 3  # unreadable image, corrupt/truncated/unsupported .psic file
    KEY = 4  # wrong key for this model, malformed or missing key file; a sealed file that does not open
    OUTPUT = 5  # output exists without --force, or cannot be written
    INTERRUPTED = 130  # Ctrl-C (SIGINT); partial outputs were removed
    TERMINATED = 143  # SIGTERM (128 + 15, as a shell reports it); partial outputs were removed


class PsicError(Exception):
    """Base class: a one-line, user-facing message and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL


class InputError(PsicError):
    """The input image or file cannot be used."""

    exit_code = ExitCode.BAD_INPUT


class UsageError(InputError):
    """A bad option value or combination, found before any model loads (exit 2, like Click's own)."""

    exit_code = ExitCode.USAGE


class FormatError(InputError):
    """A .psic file is corrupt, truncated or of an unsupported version."""


class TruncatedFile(FormatError):
    pass


class ChecksumError(FormatError):
    pass


class UnsupportedVersion(FormatError):
    pass


class DecodeTimeout(InputError):
    """A decode ran past its ``--timeout`` (exit 3; nothing is written)."""


class KeyError_(PsicError):
    """A key file is malformed, missing, or does not open this model."""

    exit_code = ExitCode.KEY


class KeyMismatch(KeyError_):
    pass


class OutputError(PsicError):
    """The output exists (and --force was not given) or cannot be written."""

    exit_code = ExitCode.OUTPUT


class OutputExists(OutputError):
    """The output exists and --force was not given (in a folder run: counted as skipped)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (exit 143 instead of 130)."""


class ModelError(PsicError):
    """A model id or its weights are unknown, missing or inconsistent."""

    exit_code = ExitCode.BAD_INPUT
