"""Profile a backbone's width before training it (not a test): seconds per training step and per decode.

    python benchmarks/profile_backbone.py --base psic-msh2 --widths 64 96 128 --threads 2

For each width N (the base config with ``N`` and ``last_width`` replaced) it times, in one run and on
the same inputs, a training step (forward + backward, ``--batch`` crops of ``--patch`` px, channels_last
on and off) and the synthesis ``g_s`` of a 768x512 image in float32 (what a decode spends most of its time
on), beside CompressAI's ``bmshj2018_hyperprior`` quality 3 (random weights) synthesis as the reference.
Compare the *ratios*: absolute seconds move with whatever else runs on the machine.
Writes ``results/profile-backbone.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def profile_width(cfg, x: torch.Tensor, repeats: int) -> dict:
    """Training-step seconds (plain and channels_last) and runtime ``g_s`` seconds on a 768x512 image."""
    from psic_cli.models import build_model

    model = build_model(cfg)
    n = len(x)
    qual, cond = torch.zeros(n, dtype=torch.long), torch.zeros(n, cfg.cond_dim)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    row = {"N": cfg.N, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    for cl in (False, True):
        m = model.to(memory_format=torch.channels_last) if cl else model
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x

        def step(m=m, xi=xi) -> None:
            opt.zero_grad(set_to_none=True)
            out = m(xi, cond, qual)
            loss = sum(v.float().mean() for v in out["likelihoods"].values()) + out["x_hat"].mean()
            loss.backward()
            opt.step()

        row["train_step_s" + ("_channels_last" if cl else "")] = round(_best(step, repeats), 3)
    model = model.to(memory_format=torch.contiguous_format).eval()
    y_hat = torch.randn(1, cfg.M, 32, 48).double()
    c1, q1 = torch.zeros(1, cfg.cond_dim), torch.zeros(1, dtype=torch.long)
    with torch.no_grad():  # the runtime path: float32 channels_last copy of g_s, as `psic decode` runs it
        row["g_s_768x512_s"] = round(_best(lambda: model.synthesize(y_hat, c1, q1, runtime=True), repeats), 3)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="psic-msh2", help="model id whose config is widened")
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 96, 128], help="values of N (and last_width)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--batch", type=int, default=4, help="training crops per step")
    ap.add_argument("--patch", type=int, default=256, help="training crop size in pixels")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (best is kept)")
    ap.add_argument("--out", type=Path, default=Path("results/profile-backbone.json"), help="JSON to write")
    args = ap.parse_args()

    from psic_cli._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from compressai.zoo import bmshj2018_hyperprior

    from psic_cli.models.config import load_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = load_config(args.base)
    x = torch.rand(args.batch, 3, args.patch, args.patch)
    rows = []
    ref = bmshj2018_hyperprior(quality=3, pretrained=False).eval()
    y_ref = torch.randn(1, ref.g_s[0].in_channels, 32, 48)
    with torch.no_grad():
        ref_s = _best(lambda: ref.g_s(y_ref), args.repeats)
    for n in args.widths:
        row = profile_width(dataclasses.replace(base, N=n, last_width=n), x, args.repeats)
        row["g_s_vs_compressai"] = round(row["g_s_768x512_s"] / ref_s, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"base": args.base, "threads": args.threads, "batch": args.batch, "patch": args.patch,
           "compressai_bmshj2018_q3_g_s_768x512_s": round(ref_s, 3), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
