"""Profile backbone architectures before training them (not a test): decode cost, decode time, training step.

    python benchmarks/profile_backbone.py --models lab_weights/rd/psic-msh2c.safetensors psic-msh3c \\
        psic_lab/training/model_configs/psic-msh5c.json --threads 2
    python benchmarks/profile_backbone.py --render-only    # re-render the page from the JSON

Each entry of ``--models`` is a bundled model id or a model config JSON (built with random weights, seed 0), or
a ``.safetensors`` weights file (its trained tensors; the config is in its metadata).  For each, in one run:

- **synthesis GMAC**: multiply-accumulates of the synthesis ``g_s`` for a 768x512 image, counted on the
  convolutions (machine-independent: the cost a decoder width commits every CPU to);
- **decode**: the in-process decode of a 768x512 Kodak image at ``--quality`` (entropy decoding, hyperprior,
  context and the runtime float32 synthesis, as ``psic decode`` runs them), interleaved with CompressAI's
  ``bmshj2018_hyperprior`` (quality 3, random weights, the same image) decompress, and their ratio: the issue's
  speed criterion is a ratio of at most 1;
- **train step**: one forward and backward pass of ``--batch`` crops of ``--patch`` pixels with Adam, in the
  trainer's layout, on this CPU (what a CPU session can afford).

Random weights code other symbols than trained ones, so the entropy-decoding part of a random model's time is
only indicative; the synthesis, most of a decode, does not depend on the weights.  Compare the *ratios*:
absolute seconds move with the CPU and with whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from psic_lab.evaluation.report import add_page_options, provenance, run_page  # noqa: E402

OUT = Path("results/profile-backbone.json")
DOCS = Path("docs/profile-backbone.md")


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def conv_gmac(module, x) -> float:
    """Multiply-accumulates (10^9) of the (transposed) convolutions and linear layers in ``module(x)``."""
    import torch
    from torch import nn

    total = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            total[0] += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):
            total[0] += inp[0].numel() * m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total[0] += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.no_grad():
            x()
    finally:
        for h in handles:
            h.remove()
    return total[0] / 1e9


def build(entry: str):
    """The model of ``entry`` (weights file, bundled id or config JSON), its config and a description."""
    import torch

    from psic_cli.models import build_model
    from psic_cli.models.config import load_config

    if entry.endswith(".safetensors"):  # loaded as the runtime loads any weights file
        import tempfile

        from psic_cli.zoo import load_model
        from psic_lab.evaluation.weights import install_weights

        load_model.cache_clear()  # the runtime caches by model id, and two weights files may share one
        with tempfile.TemporaryDirectory() as tmp:
            lm = load_model(install_weights(Path(entry), Path(tmp)))
        model, cfg = lm.model, lm.model.cfg
        what = f"trained ({lm.info.metadata.get('steps', '?')} steps)"
    else:
        cfg = load_config(entry)
        torch.manual_seed(0)
        model = build_model(cfg)
        model.update(force=True)
        what = "random weights"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg, what


def profile(entry: str, x_img, ref, args) -> dict:
    import torch

    model, cfg, what = build(entry)
    row = {"entry": entry, "model_id": cfg.model_id, "weights": what, "N": cfg.N, "M": cfg.M,
           "analysis_width": cfg.analysis_width or cfg.N, "synthesis_width": cfg.synthesis_width or cfg.N,
           "last_width": cfg.last_width, "arch": cfg.arch, "qualities": cfg.qualities,
           "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
           "decoder_params_M": round(sum(p.numel() for p in model.g_s.parameters()) / 1e6, 3)}
    y = torch.zeros(1, cfg.M, x_img.shape[-2] // 16, x_img.shape[-1] // 16)
    tau = model.trigger(model.cltg, torch.zeros(1, cfg.cond_dim))
    row["g_s_gmac"] = round(conv_gmac(model.g_s, lambda: model.g_s(y, tau)), 2)
    q = min(args.quality, cfg.qualities) - 1
    cond = torch.zeros(1, cfg.cond_dim)
    with torch.no_grad():
        c = model.compress(x_img, q)
        rc = ref.compress(x_img)

        def ours():
            model.decompress(c["strings"], c["shape"], cond, q, c["y_shape"])

        def theirs():
            ref.decompress(rc["strings"], rc["shape"])

        ours(), theirs()  # warm-up: runtime copies, CDF tables
        t_ours, t_ref = [], []
        for _ in range(args.repeats):  # interleaved, so that both see the same machine
            for fn, ts in ((ours, t_ours), (theirs, t_ref)):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
    row["decode_s"] = round(min(t_ours), 3)
    row["compressai_decompress_s"] = round(min(t_ref), 3)
    row["decode_ratio"] = round(min(t_ours) / min(t_ref), 2)
    row["bytes_random"] = sum(len(s[0]) for s in c["strings"])

    train = model.train()  # the decode is measured: the same model now takes training steps
    for p in train.parameters():
        p.requires_grad_(True)
    n = args.batch
    xb = torch.rand(n, 3, args.patch, args.patch, generator=torch.Generator().manual_seed(0))
    qual, cb = torch.zeros(n, dtype=torch.long), torch.zeros(n, cfg.cond_dim)
    opt = torch.optim.Adam(train.parameters(), lr=1e-6)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = train(xb, cb, qual)
        loss = sum(-v.clamp_min(1e-9).log().mean() for v in out["likelihoods"].values()) + out["x_hat"].square().mean()
        loss.backward()
        opt.step()

    row["train_step_s"] = round(_best(step, args.train_repeats), 2)
    return row


def measure(args: argparse.Namespace) -> dict:
    import torch
    from PIL import Image

    from psic_cli._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from compressai.zoo import bmshj2018_hyperprior

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref = bmshj2018_hyperprior(quality=3, pretrained=False).eval()
    ref.update(force=True)
    img = np.asarray(Image.open(args.image).convert("RGB"))
    if img.shape[0] > img.shape[1]:
        img = img.transpose(1, 0, 2)
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    y_ref = torch.zeros(1, ref.g_s[0].in_channels, x.shape[-2] // 16, x.shape[-1] // 16)
    res = {**provenance("benchmarks/profile_backbone.py", args.argv, ROOT),
           "threads": torch.get_num_threads(), "image": args.image.name, "size": [x.shape[-1], x.shape[-2]],
           "quality": args.quality, "batch": args.batch, "patch": args.patch, "repeats": args.repeats,
           "compressai_g_s_gmac": round(conv_gmac(ref.g_s, lambda: ref.g_s(y_ref)), 2), "rows": []}
    for entry in args.models:
        row = profile(entry, x, ref, args)
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    return res


def render(res: dict, out: Path = OUT) -> str:
    w, h = res["size"]
    lines = ["# Backbone architectures: what a decode costs", "",
             f"Generated from `{out}` (measured by `{res['command']}` at revision `{res['git_revision'][:10]}`); "
             "do not edit by hand.", "",
             f"Decode of `{res['image']}` ({w}x{h}) at quality {res['quality']}, in process on {res['threads']} "
             "threads, interleaved with CompressAI's `bmshj2018_hyperprior` (quality 3, random weights) decompress "
             f"of the same image; best of {res['repeats']}. *Synthesis GMAC*: multiply-accumulates of `g_s` for "
             f"this image (CompressAI's: {res['compressai_g_s_gmac']:.2f}), the same on every CPU. *Ratio*: "
             "psic's decode over CompressAI's in the same run (the speed goal is at most 1; it moves with the "
             "CPU). *Train step*: forward and backward of "
             f"{res['batch']} crops of {res['patch']}² pixels on this CPU. Random weights code other symbols "
             "than trained ones, so their entropy-decoding share is only indicative.", "",
             "| model | weights | N | M | analysis | synthesis | last stage | params (M) | synthesis GMAC "
             "| decode (s) | CompressAI (s) | ratio | train step (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| `{r['model_id']}` | {r['weights']} | {r['N']} | {r['M']} | {r['analysis_width']} | "
                     f"{r['synthesis_width']} | {r['last_width']} | {r['params_M']:.2f} | {r['g_s_gmac']:.1f} | "
                     f"{r['decode_s']:.3f} | {r['compressai_decompress_s']:.3f} | {r['decode_ratio']:.2f} | "
                     f"{r['train_step_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+",
                    default=["lab_weights/rd/psic-msh2c.safetensors", "psic-msh3c", "psic-msh4"],
                    help="bundled model ids, model config JSONs (random weights) or .safetensors weights files")
    ap.add_argument("--image", type=Path, default=Path("../shared/data/kodak/kodim05.png"),
                    help="the decoded image (768x512 Kodak; a portrait one is turned to landscape)")
    ap.add_argument("--quality", type=int, default=3, help="quality level decoded (capped at a model's top)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    ap.add_argument("--batch", type=int, default=4, help="training crops per step")
    ap.add_argument("--patch", type=int, default=256, help="training crop size in pixels")
    ap.add_argument("--repeats", type=int, default=5, help="timed decodes per model (best is kept)")
    ap.add_argument("--train-repeats", type=int, default=2, help="timed training steps per model (best is kept)")
    add_page_options(ap, OUT, DOCS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run_page(args, ROOT, measure, render)


if __name__ == "__main__":
    sys.exit(main())
