"""Fuzz the .psic reader through the real decode path (not a test: a benchmark that prints a table).

    python benchmarks/fuzz_reader.py --cases 10000 [--model psic-sh] [--subprocess 50]

Cases: random bytes, truncation at every kind of offset, bit flips, wrong magic, future versions,
absurd header sizes, empty input, and corrupt entropy-coded strings behind a *valid* CRC (so the
rANS decoder itself sees garbage).  Every case must end in a PsicError with exit code 3 (or 4/5),
write nothing, and take bounded time.  ``--subprocess N`` also runs N cases through a fresh ``psic
decode`` process and checks for a single stderr line and no traceback.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np


def resign(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def mutate(valid: bytes, rng: random.Random) -> tuple[str, bytes]:
    from psic_cli import container

    kind = rng.choice(["random", "truncate", "bitflip", "magic", "version", "size", "empty", "strings",
                       "resigned-bitflip"])
    if kind == "random":
        return kind, rng.randbytes(rng.randint(0, 400))
    if kind == "truncate":
        return kind, valid[: rng.randrange(len(valid))]
    if kind == "bitflip":
        b = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind == "magic":
        return kind, rng.randbytes(4) + valid[4:]
    if kind == "version":
        return kind, resign(valid[:4] + bytes([rng.randint(2, 255)]) + valid[5:-4])
    if kind == "size":
        f = container.unpack(valid)
        h = f.header
        body = bytearray(valid[:-4])
        off = 8 + 1 + len(h.model_id) + 1 + len(h.arch) + 8 + 1
        struct.pack_into("<II", body, off, rng.choice([0, 2**32 - 1, 70000, h.width + 64]),
                         rng.choice([0, 2**32 - 1, h.height, 1]))
        return kind, resign(bytes(body))
    if kind == "empty":
        return kind, b""
    f = container.unpack(valid)
    t = f.tiles[0]
    if kind == "strings":
        strings = [bytearray(s) for s in t.strings]
        s = strings[rng.randrange(len(strings))]
        if s:
            for _ in range(rng.randint(1, 6)):
                s[rng.randrange(len(s))] = rng.randrange(256)
        new = container.Tile(t.z_shape, t.checksum, tuple(bytes(x) for x in strings))
        return kind, container.pack(container.PsicFile(f.header, (new,)))
    b = bytearray(valid[:-4])
    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return kind, resign(bytes(b))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--model", default="psic-sh")
    ap.add_argument("--subprocess", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from psic_cli import codec, jobs
    from psic_cli.errors import PsicError

    rng = random.Random(args.seed)
    img = np.asarray(np.random.default_rng(0).integers(0, 255, (96, 160, 3)), dtype=np.uint8)
    valid = codec.encode_pixels(img, args.model, 1)
    out_dir = Path(tempfile.mkdtemp())
    stats: Counter = Counter()
    codes: Counter = Counter()
    slowest = 0.0
    bad = []
    t0 = time.time()
    for i in range(args.cases):
        kind, data = mutate(valid, rng)
        src = out_dir / "case.psic"
        src.write_bytes(data)
        dst = out_dir / "out.png"
        t = time.time()
        try:
            jobs.decode_file(str(src), str(dst), force=True)
            outcome = "decoded"  # a mutation that left the coded symbols intact
        except PsicError as e:
            outcome = type(e).__name__
            codes[int(e.exit_code)] += 1
            if "\n" in str(e) or dst.exists():
                bad.append((i, kind, "multi-line message or output written"))
        except Exception as e:  # anything else is a bug
            outcome = "BUG"
            bad.append((i, kind, f"{type(e).__name__}: {e}"))
        slowest = max(slowest, time.time() - t)
        if dst.exists():
            dst.unlink()
        stats[(kind, outcome)] += 1
    elapsed = time.time() - t0

    sub_bad = 0
    for _ in range(args.subprocess):
        _, data = mutate(valid, rng)
        r = subprocess.run([sys.executable, "-m", "psic_cli", "decode", "-", "-o", str(out_dir / "s.png")],
                           input=data, capture_output=True, timeout=60)
        lines = r.stderr.decode().strip().splitlines()
        ok = (r.returncode == 0 and (out_dir / "s.png").exists()) or (
            r.returncode in (3, 4, 5) and len(lines) == 1 and "Traceback" not in r.stderr.decode()
            and not (out_dir / "s.png").exists())
        sub_bad += not ok
        (out_dir / "s.png").unlink(missing_ok=True)

    print(f"{args.cases} cases in {elapsed:.1f} s ({args.cases / elapsed:.0f}/s); slowest case {slowest:.3f} s")
    print(f"{'mutation':<18} {'outcome':<20} count")
    for (kind, outcome), n in sorted(stats.items()):
        print(f"{kind:<18} {outcome:<20} {n}")
    print(f"exit codes: {dict(sorted(codes.items()))}")
    print(f"bugs (tracebacks, multi-line errors, outputs written): {len(bad)}")
    print(f"subprocess cases: {args.subprocess}, failing the one-line/no-output rule: {sub_bad}")
    if args.json:
        args.json.write_text(json.dumps({"cases": args.cases, "seconds": elapsed, "slowest": slowest,
                                         "bugs": bad, "subprocess_bad": sub_bad,
                                         "outcomes": {f"{k}/{o}": n for (k, o), n in stats.items()}}, indent=2))
    return 1 if bad or sub_bad else 0


if __name__ == "__main__":
    sys.exit(main())
