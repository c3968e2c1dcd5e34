"""Evaluate any VLP on a labelled image folder: zero-shot top-1 and retrieval R@1.

    python -m psic_lab.vlp.eval --vlp psic-vlp-mini --folder /work/shared/data/imagenette/val \
        --classes psic_lab/vlp/data/imagenette_classes.tsv --open-vocab --json results/vlp/mini.json
    python -m psic_lab.vlp.eval --timing --vlp psic-vlp-mini --json results/vlp/timing-mini.json
    python -m psic_lab.vlp.eval --summarize results/vlp/*.json --md results/vlp/summary.md

The folder holds ``<label>/`` subfolders (e.g. ImageNet wnids); ``--classes`` maps labels to class
names (``wnid<TAB>name`` TSV or ``{wnid: name}`` JSON; unmapped labels are used as names).  Zero-shot
uses the prompt-template ensemble in :data:`psic_lab.vlp.base.ZERO_SHOT_TEMPLATES`; retrieval uses one
caption per image, :data:`psic_lab.vlp.base.CAPTION_TEMPLATE` filled with its class name, and counts
identical captions as interchangeable (see :func:`psic_lab.vlp.base.retrieval_recall_at_1`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .base import CAPTION_TEMPLATE, VLP, ZERO_SHOT_TEMPLATES, retrieval_recall_at_1
from .data_utils import list_labelled_folder, load_image
from .text import imagenet_classes, read_class_file


@torch.no_grad()
def embed_files(model: VLP, files: Sequence[Path], batch_size: int = 32, log_every: int = 0) -> torch.Tensor:
    """Image embeddings ``[N, D]`` of image files (batches of equal-size images; mixed sizes go one by one)."""
    out: list[torch.Tensor] = []
    t0 = time.time()
    for i in range(0, len(files), batch_size):
        imgs = [load_image(f) for f in files[i : i + batch_size]]
        if len({im.shape for im in imgs}) == 1:
            out.append(model.encode_image(torch.stack(imgs)))
        else:
            out.extend(model.encode_image(im.unsqueeze(0)) for im in imgs)
        if log_every and (i // batch_size) % log_every == 0:
            print(f"  {i + len(imgs)}/{len(files)} images, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return torch.cat(out)


def evaluate_folder(
    spec: str | VLP,
    folder: str | Path,
    classes_file: str | Path | None = None,
    limit: int | None = None,
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
    open_vocab: bool = False,
    batch_size: int = 32,
    threads: int | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Zero-shot top-1 (and optionally 1000-way ImageNet top-1) plus retrieval R@1 of a VLP on ``folder``.

    Args:
        spec: a VLP spec for :func:`psic_lab.vlp.factory.load_vlp`, or a loaded model.
        folder: directory of ``<label>/`` subfolders of images.
        classes_file: label -> class-name mapping; default: labels are the names.
        limit: evaluate an evenly spaced subset of this many images.
        templates: prompt templates for the zero-shot ensemble.
        open_vocab: also classify over all 1000 ImageNet class names (labels must be ImageNet wnids).
        batch_size: images per forward pass.
        threads: ``torch.set_num_threads`` for the run (default: leave as is).
        verbose: print progress to stderr.

    Returns:
        A JSON-serialisable dict of metrics and the settings that produced them.
    """
    if threads:
        torch.set_num_threads(threads)
    if isinstance(spec, str):
        from .factory import load_vlp

        model, spec_name = load_vlp(spec), spec
    else:
        model, spec_name = spec, spec.name
    files, labels = list_labelled_folder(folder, limit)
    mapping = read_class_file(classes_file) if classes_file else {}
    if classes_file and hasattr(model, "register_class_file"):
        model.register_class_file(classes_file)
    label_set = [w for w in mapping if w in set(labels)] + sorted(set(labels) - set(mapping))
    names = [mapping.get(w, w) for w in label_set]
    y = torch.tensor([label_set.index(lab) for lab in labels])

    t0 = time.time()
    img_emb = embed_files(model, files, batch_size, log_every=20 if verbose else 0)
    embed_s = time.time() - t0
    class_emb = model.class_embeddings(names, templates)
    pred = (img_emb @ class_emb.t()).argmax(1)
    per_class = {names[k]: (pred[y == k] == k).float().mean().item() for k in range(len(names))}
    captions = [CAPTION_TEMPLATE.format(names[k]) for k in y.tolist()]
    result: dict[str, Any] = {
        "vlp": spec_name,
        "folder": str(folder),
        "classes_file": str(classes_file) if classes_file else None,
        "n_images": len(files),
        "n_classes": len(names),
        "limit": limit,
        "zero_shot_top1": (pred == y).float().mean().item(),
        "per_class_top1": per_class,
        **retrieval_recall_at_1(img_emb, model.encode_text(captions), captions),
        "templates": list(templates),
        "caption_template": CAPTION_TEMPLATE,
    }
    if open_vocab:
        wnids, in_names = imagenet_classes()
        idx = {w: i for i, w in enumerate(wnids)}
        if all(lab in idx for lab in labels):
            y_in = torch.tensor([idx[lab] for lab in labels])
            in_emb = model.class_embeddings(list(in_names), templates)
            result["imagenet1k_top1"] = ((img_emb @ in_emb.t()).argmax(1) == y_in).float().mean().item()
        else:
            result["imagenet1k_top1"] = None
    result.update(
        embed_seconds=round(embed_s, 1),
        embed_ms_per_image=round(1000 * embed_s / len(files), 2),
        batch_size=batch_size,
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        machine=platform.processor() or platform.machine(),
    )
    return result


@torch.no_grad()
def time_embedding(
    spec: str | VLP, threads: Sequence[int] = (1, 2), batch_sizes: Sequence[int] = (1, 32), size: int = 224,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """Milliseconds per image for ``encode_image`` on random ``size x size`` images (best of ``repeats``)."""
    from .factory import load_vlp

    model = load_vlp(spec) if isinstance(spec, str) else spec
    rows = []
    for th in threads:
        torch.set_num_threads(th)
        for bs in batch_sizes:
            x = torch.rand(bs, 3, size, size)
            model.encode_image(x)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.encode_image(x)
                best = min(best, time.perf_counter() - t0)
            rows.append({"vlp": getattr(model, "name", str(spec)), "threads": th, "batch": bs, "input": size,
                         "ms_per_image": round(1000 * best / bs, 2)})
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if isinstance(v, float) else str(v)


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of evaluation results (and timing rows, if any)."""
    evals = [r for r in results if "zero_shot_top1" in r]
    timing = [row for r in results for row in r.get("timing", [])]
    lines = []
    if evals:
        lines += ["| VLP | folder | images | classes | zero-shot top-1 | ImageNet-1k top-1 | i->t R@1 | t->i R@1 |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in evals:
            lines.append(
                f"| {r['vlp']} | {Path(r['folder']).name} | {r['n_images']} | {r['n_classes']} | "
                f"{_fmt(r['zero_shot_top1'])} | {_fmt(r.get('imagenet1k_top1'))} | {_fmt(r['i2t_r1'])} | "
                f"{_fmt(r['t2i_r1'])} |"
            )
    if timing:
        lines += ["", "| VLP | threads | batch | input | ms / image |", "|---|---|---|---|---|"]
        lines += [
            f"| {t['vlp']} | {t['threads']} | {t['batch']} | {t['input']} | {t['ms_per_image']} |" for t in timing
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vlp", help="psic-vlp-mini | judge-scratch | effnet-lite2 | openclip:ARCH:PATH")
    ap.add_argument("--folder", type=Path, help="directory of <label>/ subfolders")
    ap.add_argument("--classes", type=Path, help="label -> name mapping (TSV wnid<TAB>name, or JSON)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--open-vocab", action="store_true", help="also 1000-way ImageNet top-1")
    ap.add_argument("--timing", action="store_true", help="ms/image of encode_image (1, 2 threads; batch 1, 32)")
    ap.add_argument("--summarize", type=Path, nargs="*", help="result JSON files to tabulate")
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--md", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)

    if args.summarize:
        results = [json.loads(p.read_text()) for p in args.summarize]
    elif args.timing:
        results = [{"vlp": args.vlp, "timing": time_embedding(args.vlp)}]
    else:
        if not (args.vlp and args.folder):
            ap.error("--vlp and --folder are required")
        res = evaluate_folder(args.vlp, args.folder, args.classes, args.limit, open_vocab=args.open_vocab,
                              batch_size=args.batch, threads=args.threads, verbose=True)
        results = [res]
    for r in results:
        if "summarize" not in r and not args.summarize:
            r["command"] = "python -m psic_lab.vlp.eval " + " ".join(sys.argv[1:] if argv is None else argv)
    table = results_table(results)
    print(table)
    if args.json and not args.summarize:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results[0], indent=2) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        cmds = [f"- `{r['command']}`" for r in results if r.get("command")]
        args.md.write_text(table + "\n\nGenerated by `psic_lab.vlp.eval`; commands:\n\n" + "\n".join(cmds) + "\n")


if __name__ == "__main__":
    main()
