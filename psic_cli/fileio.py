"""Atomic output: write to a temporary file beside the target, then rename; never a partial file.

The temporary file is named ``.<name>.psic-<pid>.part`` in the target's folder.  The name is chosen and
recorded before the file is created, so an interrupt (Ctrl-C, SIGTERM) at any moment finds it to remove;
and because the name carries the writer's process id, a later run removes the leftovers of a process that
was killed outright (SIGKILL, power loss), while the temporary files of a run still alive are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from psic_cli.errors import OutputError, OutputExists

_TEMP_RE = re.compile(r"^\..+\.psic-(?P<pid>\d+)\.part$")
_NAME_ROOM = 200  # of the target's name kept in the temporary name (file names stop at 255 bytes)
_swept: set[str] = set()  # folders this process has already cleared of stale temporary files


def temp_path(path: Path, pid: int | None = None) -> Path:
    """The temporary file that process ``pid`` (default: this one) writes ``path`` through."""
    return path.with_name(f".{path.name[:_NAME_ROOM]}.psic-{os.getpid() if pid is None else pid}.part")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to another user, or cannot tell: keep its files
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files in ``folder`` left by psic processes that no longer run; return them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if m is None or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if e.is_file(follow_symlinks=False):
                os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _swept:
        _swept.add(key)
        remove_stale_temps(folder)


def check_writable(path: Path, force: bool) -> None:
    """Fail early (before any work) when ``path`` cannot or must not be written."""
    try:
        if path.is_dir():
            raise OutputError(f"{path}: is a directory")
        if path.exists() and not force:
            raise OutputExists(f"{path}: already exists (use --force to overwrite)")
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise OutputError(f"{path}: not a regular file (a device or FIFO is never replaced)")
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


def _create(tmp_path: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp_path, flags, 0o600)
    except FileExistsError:  # our own name: left by an earlier process that had our pid
        os.unlink(tmp_path)
        fd = os.open(tmp_path, flags, 0o600)
    os.close(fd)


def _publish(tmp_path: Path, path: Path, force: bool) -> None:
    """Give the finished temporary file its final name."""
    if force:
        os.replace(tmp_path, path)
        return
    try:  # link(2) refuses an existing target: no check-then-act race with another writer
        os.link(tmp_path, path)
    except FileExistsError:
        raise OutputExists(f"{path}: already exists (use --force to overwrite)") from None
    except OSError:  # no hard links on this file system
        if path.exists():
            raise OutputExists(f"{path}: already exists (use --force to overwrite)") from None
        os.replace(tmp_path, path)
    tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it onto ``path``.

    On any exception (Ctrl-C and SIGTERM included) the temporary file is removed and nothing is left
    behind.  Raises :class:`OutputExists` when ``path`` exists (or appears meanwhile) without ``force``.
    """
    path = Path(path)
    check_writable(path, force)
    _sweep_once(path.parent)
    # the name is known (and seen by the except clause) before the file exists: an interrupt between
    # creating the file and recording its name cannot happen
    tmp_path = temp_path(path)
    try:
        _create(tmp_path)
        if mode is None:  # a replaced file keeps its permissions (a private 0600 view stays private)
            mode = path.stat().st_mode & 0o777 if force and path.exists() else 0o666 & ~_umask()
        os.chmod(tmp_path, mode)
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # durable before it takes the final name
            os.fsync(f.fileno())
        _publish(tmp_path, path, force)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write(path: Path, data: bytes, force: bool = False, mode: int | None = None) -> None:
    try:
        with atomic_output(path, force=force, mode=mode) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None
