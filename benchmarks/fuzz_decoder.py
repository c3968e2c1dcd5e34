"""Structure-aware fuzzer of the whole decode path (not a test: a benchmark that writes JSON).

    python benchmarks/fuzz_decoder.py --cases 10000 [--model psic-sh] [--cli-cases 50] [--seed 0]

Where ``benchmarks/fuzz_reader.py`` flips bytes, this fuzzer parses valid files into their fields and
mutates *fields*, then re-serialises them with valid lengths and a valid trailer CRC, so that the cases get
past the container's checks and reach the model, the rANS decoder and the synthesis:

* ``header-field``: one header field set to an interesting value (0, 1, maxima, other models, versions);
* ``geometry``: a new image size with the hyper-latent shape rewritten to match (the case that used to
  crash the rANS decoder), keeping the original strings;
* ``tile-field``: hyper-latent shape, symbol CRC or string count changed;
* ``strings``: an entropy-coded string truncated, extended, emptied, swapped with the other, bit-flipped;
* ``random-payload``: random strings (valid rANS lengths) behind a valid header and CRC;
* ``splice``: the header of one file with the payload of another, or two files cut and joined;
* ``truncate``: the file cut at every field boundary (and one byte either side), with and without a
  recomputed CRC (the first cases sweep every boundary of the first seed file);
* ``length-field``: a length or count field in the serialised bytes changed, CRC recomputed;
* ``bitflip``: bits flipped anywhere, CRC recomputed.

Each case is decoded in a child process with a wall-clock limit and an address-space limit
(``RLIMIT_AS``): by default a child forked from this process after the model is loaded (fast; it calls
``jobs.decode_file`` as the CLI does), and for ``--cli-cases`` of them a fresh ``psic decode`` process.
Outcomes counted: clean rejections by exit code, decodes, our own ``--timeout`` firing, and the failures
this fuzzer exists to find: crashes (killed by a signal), hangs (past the wall-clock limit), memory
blow-ups (``MemoryError`` or the address-space limit), internal errors (exit 1), multi-line messages,
and files written by a failed decode.  ``--json`` (default ``results/fuzz-decoder.json``) gets the counts.
Exit status 1 when any failure was found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from psic_cli import container  # noqa: E402

FAILURES = ("crash", "hang", "memory", "bug", "multi-line", "wrote-on-failure")
EXIT_TIMEOUT, EXIT_MEMORY = 90, 86  # the forked child's codes for DecodeTimeout and MemoryError


@dataclasses.dataclass
class RawTile:
    zh: int
    zw: int
    crc: int
    strings: list[bytes]


@dataclasses.dataclass
class RawFile:
    """Every field of a .psic file, unvalidated (so that a fuzzer can set any value)."""

    version: int
    flags: int
    model_id: bytes
    arch: bytes
    weights_id: bytes
    quality: int
    width: int
    height: int
    source_mode: bytes
    tile_size: int
    tiles: list[RawTile]

    @classmethod
    def parse(cls, data: bytes) -> RawFile:
        f = container.unpack(data)
        h = f.header
        tiles = [RawTile(t.z_shape[0], t.z_shape[1], t.checksum, list(t.strings)) for t in f.tiles]
        return cls(h.version, 0, h.model_id.encode(), h.arch.encode(), h.weights_id, h.quality, h.width,
                   h.height, h.source_mode.encode(), h.tile_size, tiles)

    def serialize(self, crc: bool = True) -> tuple[bytes, list[int]]:
        """The bytes (trailer CRC recomputed when ``crc``) and the offset where each field ends."""
        parts: list[bytes] = []
        bounds: list[int] = []

        def put(b: bytes) -> None:
            parts.append(b)
            bounds.append(sum(map(len, parts)))

        def short(b: bytes) -> None:
            put(struct.pack("<B", len(b) & 0xFF))
            put(b[:255])

        body: list[bytes] = []
        for b in (self.model_id, self.arch):
            body.append(struct.pack("<B", len(b[:255])) + b[:255])
        body.append(self.weights_id)
        body.append(struct.pack("<BII", self.quality & 0xFF, self.width & 0xFFFFFFFF, self.height & 0xFFFFFFFF))
        body.append(struct.pack("<B", len(self.source_mode[:255])) + self.source_mode[:255])
        body.append(struct.pack("<H", self.tile_size & 0xFFFF))
        hlen = sum(map(len, body))
        put(struct.pack("<4sBBH", container.MAGIC, self.version & 0xFF, self.flags & 0xFF, hlen & 0xFFFF))
        short(self.model_id)
        short(self.arch)
        put(self.weights_id)
        put(struct.pack("<B", self.quality & 0xFF))
        put(struct.pack("<I", self.width & 0xFFFFFFFF))
        put(struct.pack("<I", self.height & 0xFFFFFFFF))
        short(self.source_mode)
        put(struct.pack("<H", self.tile_size & 0xFFFF))
        put(struct.pack("<I", len(self.tiles)))
        for t in self.tiles:
            put(struct.pack("<HH", t.zh & 0xFFFF, t.zw & 0xFFFF))
            put(struct.pack("<I", t.crc & 0xFFFFFFFF))
            put(struct.pack("<B", len(t.strings) & 0xFF))
            for s in t.strings:
                put(struct.pack("<I", len(s)))
                put(s)
        data = b"".join(parts)
        if crc:
            data += struct.pack("<I", zlib.crc32(data))
        return data, bounds


def resign(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _interesting(rng: random.Random, bits: int) -> int:
    top = (1 << bits) - 1
    return rng.choice([0, 1, 2, 3, 15, 16, 17, 63, 64, 65, 255, 256, 1023, 1024, 4096, 16384, 65535, 65536,
                       top, top - 1, rng.randrange(top + 1)]) & top


def _size(rng: random.Random) -> int:
    """An image side: mostly small, sometimes large (a decode of the claimed size must stay bounded)."""
    return rng.choice([1, 2, 15, 16, 17, 63, 64, 65, 100, 255, 256, 512, 1000, 1024, 2048, 4096, 16384,
                       rng.randint(1, 300), rng.randint(1, 3000)])


def _string_variant(s: bytes, rng: random.Random) -> bytes:
    op = rng.choice(["truncate", "extend", "empty", "random", "bitflip", "words", "zeros"])
    if op == "truncate":
        return s[: rng.randrange(len(s) + 1)]
    if op == "extend":
        return s + rng.randbytes(rng.choice([1, 4, 8, 64, 1000]))
    if op == "empty":
        return b""
    if op == "random":
        return rng.randbytes(rng.choice([4, 8, 12, 16, 100, 1000]))
    if op == "bitflip" and s:
        b = bytearray(s)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op == "words":  # whole 32-bit words, as the coder writes: past the length check
        return s[: max(8, (rng.randrange(len(s) + 1) // 4) * 4)] if len(s) >= 8 else s
    return bytes(len(s))


def mutate(seeds: list[bytes], rng: random.Random, models: list[str]) -> tuple[str, bytes]:
    """One fuzz case from the valid ``seeds``: (mutation kind, file bytes)."""
    kind = rng.choice(["header-field", "geometry", "geometry", "tile-field", "strings", "strings",
                       "random-payload", "splice", "truncate", "length-field", "bitflip"])
    base = rng.choice(seeds)
    f = RawFile.parse(base)
    if kind == "header-field":
        field = rng.choice(["version", "flags", "model_id", "arch", "weights_id", "quality", "width", "height",
                            "source_mode", "tile_size"])
        if field in ("version", "flags", "quality"):
            setattr(f, field, _interesting(rng, 8))
        elif field in ("width", "height"):
            setattr(f, field, _interesting(rng, 32))
        elif field == "tile_size":
            f.tile_size = _interesting(rng, 16)
        elif field == "weights_id":
            f.weights_id = rng.randbytes(rng.choice([0, 7, 8, 8, 9]))
        elif field == "model_id":
            f.model_id = rng.choice([b"", b"x", b"../../etc/passwd", b"\xff\xfe", b"m" * 255,
                                     *(m.encode() for m in models)])
        elif field == "arch":
            f.arch = rng.choice([b"", b"scale-hyperprior", b"mean-scale-hyperprior", b"bogus", b"\x00"])
        else:
            f.source_mode = rng.choice([b"", b"L", b"RGBA", b"CMYK", b"I;16", b"\x7f", b"Z" * 80])
        return kind, f.serialize()[0]
    if kind == "geometry":
        f.width, f.height = _size(rng), _size(rng)
        if rng.random() < 0.3:
            f.version = rng.choice([1, 2])
        try:
            h = container.Header("m", "a", bytes(8), 1, f.width, f.height, version=f.version)
            f.tiles[0].zh, f.tiles[0].zw = container.expected_z_shape(h)
        except (ValueError, KeyError, container.FormatError):
            pass
        return kind, f.serialize()[0]
    t = f.tiles[0]
    if kind == "tile-field":
        op = rng.choice(["zh", "zw", "crc", "add-string", "drop-string", "add-tile"])
        if op in ("zh", "zw"):
            setattr(t, op, _interesting(rng, 16))
        elif op == "crc":
            t.crc = rng.randrange(1 << 32)
        elif op == "add-string":
            t.strings.append(rng.randbytes(rng.choice([0, 8, 64])))
        elif op == "drop-string":
            t.strings.pop(rng.randrange(len(t.strings)))
        else:
            f.tiles.append(RawTile(t.zh, t.zw, t.crc, list(t.strings)))
        return kind, f.serialize()[0]
    if kind == "strings":
        if rng.random() < 0.2 and len(t.strings) == 2:
            t.strings.reverse()
        else:
            i = rng.randrange(len(t.strings))
            t.strings[i] = _string_variant(t.strings[i], rng)
        return kind, f.serialize()[0]
    if kind == "random-payload":
        t.strings = [rng.randbytes(4 * rng.choice([2, 3, 4, 16, 64, 256, rng.randint(2, 2000)]))
                     for _ in t.strings]
        if rng.random() < 0.5:  # and claim a larger image, with a matching hyper-latent shape
            f.width, f.height = _size(rng), _size(rng)
            h = container.Header("m", "a", bytes(8), 1, max(1, f.width), max(1, f.height), version=f.version)
            t.zh, t.zw = container.expected_z_shape(h)
        return kind, f.serialize()[0]
    if kind == "splice":
        other = RawFile.parse(rng.choice(seeds))
        if rng.random() < 0.5:
            f.tiles = other.tiles
            return kind, f.serialize()[0]
        a, b = base, rng.choice(seeds)
        return kind, resign(a[: rng.randrange(len(a))] + b[rng.randrange(len(b)):][:-4])
    if kind == "truncate":
        data, bounds = f.serialize(crc=False)
        cut = min(len(data), max(0, rng.choice(bounds) + rng.choice([-1, 0, 0, 1])))
        return kind, (resign(data[:cut]) if rng.random() < 0.5 else data[:cut])
    if kind == "length-field":
        data, bounds = f.serialize(crc=False)
        b = bytearray(data)
        # the header length (bytes 6-7), the tile count and string lengths sit at known boundaries
        pos = rng.choice([6] + [p for p in bounds if p + 4 <= len(b)])
        width = 2 if pos == 6 else 4
        val = _interesting(rng, 8 * width)
        b[pos : pos + width] = val.to_bytes(width, "little")
        return kind, resign(bytes(b))
    b = bytearray(base[:-4])
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return "bitflip", resign(bytes(b))


def boundary_sweep(seed: bytes) -> list[tuple[str, bytes]]:
    """Every field boundary of ``seed`` (and one byte either side), with and without a recomputed CRC."""
    data, bounds = RawFile.parse(seed).serialize(crc=False)
    cuts = sorted({c for p in bounds for c in (p - 1, p, p + 1) if 0 <= c < len(data)})
    return [("truncate", d) for c in cuts for d in (data[:c], resign(data[:c]))]


def _vm_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_forked(case: Path, out: Path, mem_bytes: int, wall: float, decode_timeout: float) -> tuple[str, str, int]:
    """Decode ``case`` in a child forked from this process: (outcome, message, max RSS in KiB)."""
    from psic_cli import errors, jobs
    from psic_cli.errors import PsicError

    timeout_error = getattr(errors, "DecodeTimeout", ())  # () matches nothing: a psic without --timeout

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code, msg = 1, ""
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
            try:
                kw = {"timeout": decode_timeout} if decode_timeout > 0 else {}  # 0: none (older psic)
                jobs.decode_file(str(case), str(out), **kw)
                code = 0
            except timeout_error as e:
                code, msg = EXIT_TIMEOUT, str(e)
            except PsicError as e:
                code, msg = int(e.exit_code), str(e)
            except MemoryError:
                code, msg = EXIT_MEMORY, "MemoryError"
            except BaseException as e:  # noqa: BLE001 - anything else is what we look for
                code, msg = 1, f"{type(e).__name__}: {e}"
            os.write(w, msg.encode("utf-8", "replace")[:4000])
        finally:
            os._exit(code)
    os.close(w)
    end = time.monotonic() + wall
    hung = False
    while True:
        done, status, ru = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            _, status, ru = os.wait4(pid, 0)
            hung = True
            break
        time.sleep(0.002)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode("utf-8", "replace")
    if hung:
        return "hang", msg, ru.ru_maxrss
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return "crash", f"signal {sig}", ru.ru_maxrss
    code = os.WEXITSTATUS(status)
    outcome = {0: "decoded", 1: "bug", EXIT_TIMEOUT: "timeout", EXIT_MEMORY: "memory"}.get(code, f"exit-{code}")
    return outcome, msg, ru.ru_maxrss


def run_cli(case: Path, out: Path, mem_bytes: int, wall: float, decode_timeout: float) -> tuple[str, str, int]:
    """Decode ``case`` with a fresh ``psic decode`` process (address space limited, wall clock bounded)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))

    cmd = [sys.executable, "-m", "psic_cli", "decode", str(case), "-o", str(out)]
    if decode_timeout > 0:
        cmd += ["--timeout", str(decode_timeout)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=wall, preexec_fn=limit, cwd=REPO)
    except subprocess.TimeoutExpired:
        return "hang", "", 0
    msg = p.stderr.strip()
    if p.returncode < 0 or p.returncode >= 128:
        return "crash", f"exit {p.returncode}", 0
    if p.returncode == 1:
        return ("memory" if "MemoryError" in msg else "bug"), msg, 0
    if p.returncode == 3 and "--timeout" in msg:
        return "timeout", msg, 0
    return ("decoded" if p.returncode == 0 else f"exit-{p.returncode}"), msg, 0


def seed_files(model: str) -> list[bytes]:
    """Valid files to mutate: crops of an example photo (or a synthetic image) at the lowest and highest
    quality, and a size that is not a multiple of 16."""
    import numpy as np

    from psic_cli import codec
    from psic_cli.zoo import model_info

    ex = REPO / "examples" / "kodim23.png"
    if ex.exists():
        from PIL import Image

        img = np.asarray(Image.open(ex).convert("RGB"))
    else:
        yy, xx = np.mgrid[0:128, 0:160]
        img = np.stack([xx * 1.5, yy * 2.0, (xx + yy)], -1).clip(0, 255).astype(np.uint8)
    nq = model_info(model).qualities
    return [codec.encode_pixels(np.ascontiguousarray(img[:64, :64]), model, 1),
            codec.encode_pixels(np.ascontiguousarray(img[:64, :64]), model, nq),
            codec.encode_pixels(np.ascontiguousarray(img[16:86, 8:108]), model, (nq + 1) // 2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10000, help="cases decoded in forked children")
    ap.add_argument("--cli-cases", type=int, default=20, help="further cases through a fresh 'psic decode'")
    ap.add_argument("--model", default="psic-sh")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wall", type=float, default=60.0, help="seconds before a case counts as a hang")
    ap.add_argument("--decode-timeout", type=float, default=30.0, help="the decode's own --timeout (0: none)")
    ap.add_argument("--mem-gb", type=float, default=4.0,
                    help="address space a forked case may add (a CLI case gets this plus 4 GB for torch)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the every-boundary truncation sweep")
    ap.add_argument("--json", type=Path, default=REPO / "results" / "fuzz-decoder.json")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # forked children run torch: no OpenMP team may exist before the fork
    from psic_cli.zoo import list_models, load_model

    load_model(args.model)  # once, before forking
    models = [m.model_id for m in list_models()]
    rng = random.Random(args.seed)
    seeds = seed_files(args.model)
    sweep = [] if args.no_sweep else boundary_sweep(seeds[0])
    work = Path(tempfile.mkdtemp(prefix="psic-fuzz-"))
    budget = int(args.mem_gb * (1 << 30))
    fork_mem = _vm_bytes() + budget
    stats: dict[str, Counter] = defaultdict(Counter)
    failures: list[dict] = []
    slowest, max_rss = 0.0, 0
    t0 = time.time()
    total = args.cases + args.cli_cases
    for i in range(total):
        kind, data = sweep[i] if i < len(sweep) and i < args.cases else mutate(seeds, rng, models)
        cli = i >= args.cases
        case_dir = work / f"c{i}"
        case_dir.mkdir()
        case, out = case_dir / "case.psic", case_dir / "out.png"
        case.write_bytes(data)
        t = time.time()
        if cli:
            outcome, msg, rss = run_cli(case, out, budget + (4 << 30), args.wall, args.decode_timeout)
        else:
            outcome, msg, rss = run_forked(case, out, fork_mem, args.wall, args.decode_timeout)
        dt = time.time() - t
        slowest, max_rss = max(slowest, dt), max(max_rss, rss)
        left = sorted(p.name for p in case_dir.iterdir() if p.name != "case.psic")
        found = []
        if outcome in FAILURES:
            found.append(outcome)
        if outcome != "decoded" and left:
            found.append("wrote-on-failure")
        if outcome not in ("decoded", "crash", "hang") and ("\n" in msg.strip() or "Traceback" in msg):
            found.append("multi-line")
        stats[("cli " if cli else "") + kind][outcome] += 1
        for what in found:
            failures.append({"case": i, "kind": kind, "via": "cli" if cli else "fork", "failure": what,
                             "message": msg[:300], "left": left, "seconds": round(dt, 3),
                             "head_hex": data[:96].hex()})
        for p in case_dir.iterdir():
            p.unlink()
        case_dir.rmdir()
    elapsed = time.time() - t0
    work.rmdir()

    counts = Counter(f["failure"] for f in failures)
    outcomes: Counter = Counter()
    for c in stats.values():
        outcomes.update(c)
    report = {
        "model": args.model, "seed": args.seed, "cases": args.cases, "cli_cases": args.cli_cases,
        "boundary_sweep_cases": min(len(sweep), args.cases), "seconds": round(elapsed, 1),
        "cases_per_second": round(total / max(elapsed, 1e-9), 2), "slowest_case_seconds": round(slowest, 3),
        "max_child_rss_kib": max_rss, "wall_limit_seconds": args.wall, "decode_timeout_seconds": args.decode_timeout,
        "memory_budget_gib": args.mem_gb,
        "failures": {k: counts.get(k, 0) for k in FAILURES},
        "outcomes": dict(sorted(outcomes.items())),
        "by_mutation": {k: dict(sorted(v.items())) for k, v in sorted(stats.items())},
        "failure_cases": failures[:200],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{total} cases ({args.cases} forked, {args.cli_cases} via the CLI) in {elapsed:.1f} s; "
          f"slowest {slowest:.2f} s")
    print(f"outcomes: {dict(sorted(outcomes.items()))}")
    print(f"failures: {report['failures']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
