"""Atomic output: write to a temporary file beside the target, then rename; never a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from psic_cli.errors import OutputError


def check_writable(path: Path, force: bool) -> None:
    """Fail early (before any work) when ``path`` cannot or must not be written."""
    try:
        if path.is_dir():
            raise OutputError(f"{path}: is a directory")
        if path.exists() and not force:
            raise OutputError(f"{path}: already exists (use --force to overwrite)")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"{path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"{path}: folder {parent} is not writable")
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it onto ``path``.

    On any exception (Ctrl-C included) the temporary file is removed and nothing is left behind.
    """
    path = Path(path)
    check_writable(path, force)
    tmp_path: Path | None = None
    try:  # the temporary file is created inside the try, so a Ctrl-C right after it is made removes it too
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or Path("."))
        tmp_path = Path(tmp)
        os.close(fd)
        if mode is None:  # a replaced file keeps its permissions (a private 0600 view stays private)
            mode = path.stat().st_mode & 0o777 if force and path.exists() else 0o666 & ~_umask()
        os.chmod(tmp_path, mode)
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # durable before it takes the final name
            os.fsync(f.fileno())
        if force:
            os.replace(tmp_path, path)
        else:
            try:  # link(2) refuses an existing target: no check-then-act race with another writer
                os.link(tmp_path, path)
            except FileExistsError:
                raise OutputError(f"{path}: already exists (use --force to overwrite)") from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise OutputError(f"{path}: already exists (use --force to overwrite)") from None
                os.replace(tmp_path, path)
            tmp_path.unlink(missing_ok=True)
    except BaseException:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
        raise


def atomic_write(path: Path, data: bytes, force: bool = False, mode: int | None = None) -> None:
    try:
        with atomic_output(path, force=force, mode=mode) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None
