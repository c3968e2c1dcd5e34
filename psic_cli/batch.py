"""Folder conversion: ``psic encode DIR -o OUTDIR`` and ``psic decode DIR -o OUTDIR``.

Recursive; the output mirrors the input tree; files whose output exists are skipped (``--force`` redoes
them), so a rerun after Ctrl-C continues where it stopped.  One bad file never stops the batch: it is
reported, the others finish, and the exit code is the worst one seen.  ``jobs > 1`` runs worker
processes, each loading the model once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from psic_cli.errors import ExitCode, InputError, PsicError
from psic_cli.imageio import DEFAULT_MAX_PIXELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


@dataclass
class Task:
    src: Path
    dst: Path


@dataclass
class BatchReport:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (file, message, exit code)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """The worst code seen: an internal error outranks the others, which rank by their number."""
        codes = {code for _, _, code in self.failed}
        if int(ExitCode.INTERNAL) in codes:
            return int(ExitCode.INTERNAL)
        return max(codes, default=int(ExitCode.OK))


def plan(kind: str, src_dir: Path, out_dir: Path, suffix: str, force: bool) -> tuple[list[Task], BatchReport]:
    """List (src, dst) pairs; outputs that exist are skipped unless ``force``; name clashes fail."""
    report = BatchReport()
    if not src_dir.is_dir():
        raise InputError(f"{src_dir}: not a folder")
    wanted = IMAGE_SUFFIXES if kind == "encode" else {".psic"}
    out_resolved = out_dir.resolve()
    tasks: list[Task] = []
    seen: dict[Path, Path] = {}
    for root, dirs, files in os.walk(src_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != out_resolved)
        for name in sorted(files):
            src = Path(root, name)
            if name.startswith(".") or src.suffix.lower() not in wanted:
                continue
            dst = out_dir / src.relative_to(src_dir).with_suffix(suffix)
            if dst in seen:
                report.failed.append((str(src), f"output {dst} clashes with {seen[dst]}", int(ExitCode.OUTPUT)))
                continue
            seen[dst] = src
            if dst.exists() and not force:
                report.skipped += 1
                continue
            tasks.append(Task(src, dst))
    return tasks, report


def _run_one(kind: str, task: Task, options: dict) -> tuple[str, str, int]:
    """Worker body: returns (file, message, exit code); never raises for a bad file."""
    from psic_cli import jobs

    force = options.get("force", False)
    try:
        task.dst.parent.mkdir(parents=True, exist_ok=True)
        if kind == "encode":
            jobs.encode_file(str(task.src), str(task.dst), options.get("quality"), options.get("model"),
                             force, options.get("max_pixels", DEFAULT_MAX_PIXELS))
        else:
            jobs.decode_file(str(task.src), str(task.dst), options.get("key"), options.get("view"),
                             options.get("fmt"), force, max_pixels=options.get("max_pixels", DEFAULT_MAX_PIXELS),
                             shield=options.get("shield"), timeout=options.get("timeout"),
                             output_quality=options.get("output_quality"))
        return str(task.src), "", 0
    except PsicError as e:
        msg = str(e) if str(e).startswith(str(task.src)) else f"{task.src}: {e}"
        return str(task.src), msg, int(e.exit_code)
    except OSError as e:
        return str(task.src), f"{task.src}: {e.strerror or e}", int(ExitCode.OUTPUT)
    except Exception as e:  # a bug: report it, keep going
        return str(task.src), f"{task.src}: internal error: {type(e).__name__}: {e}", int(ExitCode.INTERNAL)


def _init_worker(threads: int) -> None:
    import signal

    # Ctrl-C goes to the parent, which cancels what has not started and waits for the images in flight
    # (each written atomically), so no worker dies half-way through a file
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_batch(kind: str, tasks: list[Task], report: BatchReport, options: dict, jobs: int = 1,
              on_result: Callable[[tuple[str, str, int]], None] | None = None) -> BatchReport:
    """Convert ``tasks``; ``on_result`` is called after each file (for progress and messages)."""
    t0 = time.time()

    def record(res):
        if res[2]:
            report.failed.append(res)
        else:
            report.done += 1
        if on_result:
            on_result(res)

    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            record(_run_one(kind, t, options))
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
                        record((str(t.src), f"{t.src}: worker process died while converting it",
                                int(ExitCode.INTERNAL)))

            try:
                for i, t in enumerate(tasks):  # keep at most 2 tasks per worker in flight
                    try:
                        pending[pool.submit(_run_one, kind, t, options)] = t
                    except BrokenProcessPool:
                        for rest in tasks[i:]:
                            record((str(rest.src), f"{rest.src}: not converted (a worker process died)",
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

