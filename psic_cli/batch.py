"""Folder conversion: ``psic encode DIR -o OUTDIR`` and ``psic decode DIR -o OUTDIR``.

Recursive; the output mirrors the input tree; files whose output exists are skipped (``--force`` redoes
them), so a rerun after Ctrl-C continues where it stopped.  One bad file never stops the batch: it is
reported, the others finish, and the exit code is the worst one seen.  ``jobs > 1`` runs worker
processes, each loading the model once.

Symlinks: an input symlink is followed only when it points inside the input folder (or with
``follow_symlinks``); symlinked folders are not entered.  Outputs never leave the output folder: a file
whose output path would pass through a symlink inside it is refused.  Output folders are made as
needed, and those this run made but left empty (every file in them failed) are removed at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from psic_cli.errors import ExitCode, InputError, OutputError, OutputExists, PsicError
from psic_cli.imageio import DEFAULT_MAX_PIXELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


@dataclass
class Task:
    src: Path
    dst: Path


class Result(NamedTuple):
    """What became of one file: a ``code`` of 0 is success (or a skip), else the exit code of its error."""

    file: str
    message: str
    code: int
    skipped: bool = False  # its output appeared meanwhile (another run made it)


@dataclass
class BatchReport:
    done: int = 0
    skipped: int = 0
    failed: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """The worst code seen: an internal error outranks the others, which rank by their number."""
        codes = {r[2] for r in self.failed}
        if int(ExitCode.INTERNAL) in codes:
            return int(ExitCode.INTERNAL)
        return max(codes, default=int(ExitCode.OK))


def output_symlink(out_dir: Path, dst: Path) -> Path | None:
    """The first symlink on the way from ``out_dir`` (itself exempt: the user named it) down to ``dst``
    (included), or None: outputs are written only where no symlink can lead them out of the tree."""
    p = out_dir
    for part in dst.relative_to(out_dir).parts:
        p = p / part
        if p.is_symlink():
            return p
        if not p.exists():
            return None
    return None


def _check_output_path(out_dir: Path, task: Task) -> None:
    link = output_symlink(out_dir, task.dst)
    if link is not None:
        raise OutputError(f"{task.src}: not written: {link} is a symlink (outputs never leave {out_dir})")


def plan(kind: str, src_dir: Path, out_dir: Path, suffix: str, force: bool,
         follow_symlinks: bool = False) -> tuple[list[Task], BatchReport]:
    """List (src, dst) pairs; outputs that exist are skipped unless ``force``; name clashes, input
    symlinks leading out of ``src_dir`` (unless ``follow_symlinks``) and output paths through a symlink fail."""
    report = BatchReport()
    if not src_dir.is_dir():
        raise InputError(f"{src_dir}: not a folder")
    wanted = IMAGE_SUFFIXES if kind == "encode" else {".psic"}
    out_resolved = out_dir.resolve()
    src_resolved = src_dir.resolve()
    tasks: list[Task] = []
    seen: dict[Path, Path] = {}

    def unreadable(e: OSError) -> None:  # os.walk would skip an unreadable folder without a word
        report.failed.append(Result(str(e.filename), f"{e.filename}: cannot read folder ({e.strerror})",
                                    int(ExitCode.BAD_INPUT)))

    for root, dirs, files in os.walk(src_dir, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != out_resolved)
        for name in sorted(files):
            src = Path(root, name)
            if name.startswith(".") or src.suffix.lower() not in wanted:
                continue
            if src.is_symlink() and not follow_symlinks and not src.resolve().is_relative_to(src_resolved):
                report.failed.append(Result(str(src), f"{src}: symlink to outside the input folder, not followed "
                                            "(use --follow-symlinks)", int(ExitCode.BAD_INPUT)))
                continue
            dst = out_dir / src.relative_to(src_dir).with_suffix(suffix)
            if dst in seen:
                report.failed.append(Result(str(src), f"output {dst} clashes with {seen[dst]}",
                                            int(ExitCode.OUTPUT)))
                continue
            seen[dst] = src
            try:
                _check_output_path(out_dir, Task(src, dst))
            except OutputError as e:
                report.failed.append(Result(str(src), str(e), int(ExitCode.OUTPUT)))
                continue
            if os.path.lexists(dst) and not force:
                report.skipped += 1
                continue
            tasks.append(Task(src, dst))
    return tasks, report


def missing_dirs(out_dir: Path, tasks: list[Task]) -> list[Path]:
    """Output folders (``out_dir`` included) that do not exist yet, deepest first."""
    missing: set[Path] = set()
    for t in tasks:
        p = t.dst.parent
        while not os.path.lexists(p) and p not in missing:
            missing.add(p)
            if p == out_dir or p.parent == p:
                break
            p = p.parent
    return sorted(missing, key=lambda d: len(d.parts), reverse=True)


def _remove_if_empty(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first, so that a parent emptied by its children goes too
        try:
            d.rmdir()
        except OSError:  # not empty (or never made): keep it
            pass


def _run_one(kind: str, task: Task, options: dict, out_dir: Path | None = None) -> Result:
    """Worker body: what became of the file; never raises for a bad file."""
    from psic_cli import jobs

    force = options.get("force", False)
    try:
        if out_dir is not None:  # again: the tree may have changed since the plan
            _check_output_path(out_dir, task)
        task.dst.parent.mkdir(parents=True, exist_ok=True)
        if kind == "encode":
            jobs.encode_file(str(task.src), str(task.dst), options.get("quality"), options.get("model"),
                             force, options.get("max_pixels", DEFAULT_MAX_PIXELS), seal_key_file=options.get("seal"),
                             effort=options.get("effort", 0), key_file=options.get("key"))
        else:
            jobs.decode_file(str(task.src), str(task.dst), options.get("key"), options.get("view"),
                             options.get("fmt"), force, max_pixels=options.get("max_pixels", DEFAULT_MAX_PIXELS),
                             shield=options.get("shield"), seal_key_file=options.get("seal"),
                             timeout=options.get("timeout"), output_quality=options.get("output_quality"))
        return Result(str(task.src), "", 0)
    except OutputExists as e:
        if not force:  # another run wrote it meanwhile: done, by someone else
            return Result(str(task.src), f"{task.src}: skipped, {task.dst} appeared meanwhile", 0, skipped=True)
        return Result(str(task.src), f"{task.src}: {e}", int(e.exit_code))
    except PsicError as e:
        msg = str(e) if str(e).startswith(str(task.src)) else f"{task.src}: {e}"
        return Result(str(task.src), msg, int(e.exit_code))
    except OSError as e:
        return Result(str(task.src), f"{task.src}: {e.strerror or e}", int(ExitCode.OUTPUT))
    except Exception as e:  # a bug: report it, keep going
        return Result(str(task.src), f"{task.src}: internal error: {type(e).__name__}: {e}", int(ExitCode.INTERNAL))


def _init_worker(threads: int) -> None:
    import signal

    # Ctrl-C goes to the parent, which cancels what has not started and waits for the images in flight
    # (each written atomically), so no worker dies half-way through a file
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_batch(kind: str, tasks: list[Task], report: BatchReport, options: dict, jobs: int = 1,
              on_result: Callable[[Result], None] | None = None, out_dir: Path | None = None) -> BatchReport:
    """Convert ``tasks``; ``on_result`` is called after each file (for progress and messages).

    With ``out_dir`` (the output root), output paths are checked again for symlinks before each write,
    and the output folders this run made but left empty are removed at the end."""
    made = missing_dirs(out_dir, tasks) if out_dir is not None else []
    try:
        return _run_batch(kind, tasks, report, options, jobs, on_result, out_dir)
    finally:
        _remove_if_empty(made)


def _run_batch(kind: str, tasks: list[Task], report: BatchReport, options: dict, jobs: int,
               on_result: Callable[[Result], None] | None, out_dir: Path | None) -> BatchReport:
    t0 = time.time()

    def record(res: Result) -> None:
        res = Result(*res)
        if res.code:
            report.failed.append(res)
        elif res.skipped:
            report.skipped += 1
        else:
            report.done += 1
        if on_result:
            on_result(res)

    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            record(_run_one(kind, t, options, out_dir))
    else:
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            pending: dict = {}

            def collect(futures) -> None:
                for f in futures:
                    t = pending.pop(f)
                    try:
                        record(f.result())
                    except BrokenProcessPool:  # a worker died (e.g. out of memory) on this file
                        record(Result(str(t.src), f"{t.src}: worker process died while converting it",
                                      int(ExitCode.INTERNAL)))

            try:
                for i, t in enumerate(tasks):  # keep at most 2 tasks per worker in flight
                    try:
                        pending[pool.submit(_run_one, kind, t, options, out_dir)] = t
                    except BrokenProcessPool:
                        for rest in tasks[i:]:
                            record(Result(str(rest.src), f"{rest.src}: not converted (a worker process died)",
                                          int(ExitCode.INTERNAL)))
                        break
                    if len(pending) >= 2 * jobs:
                        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                        collect(done)
                collect(list(pending))
            except KeyboardInterrupt:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    report.seconds = time.time() - t0
    return report


def summary(kind: str, report: BatchReport) -> str:
    rate = report.done / report.seconds if report.seconds > 0 else 0.0
    return (f"{kind}: {report.done} done, {report.skipped} skipped (already done), {len(report.failed)} failed "
            f"in {report.seconds:.1f} s ({rate:.2f} images/s)")

