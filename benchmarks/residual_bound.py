"""What a residual at the indexer's scale can do at best (not a test): a white-box, per-image optimum.

    python benchmarks/residual_bound.py --rms 4.5 9 --thumbs 0 224 --size 640 --images 8 --steps 100 --eot all

For each labelled image (Imagenette val, one per class in turn, resized to ``--size`` on the long side as a
3:2 photo), each RMS budget (8-bit levels) and each thumbnail side, a residual of ``thumb x thumb`` pixels,
stretched bicubically to the image and scaled to exactly that RMS, is optimised *for that image* by Adam
against the target (``psic-vlp-mini``), with a margin loss on the true caption among the 10 classes, through
the indexer's preprocessing: ``--eot sample`` draws one per step (``IndexerSampler``: short224/336/448,
squash224, tiles), ``--eot all`` sums the loss over the four single-image preprocessings of the table every
step. Thumbnail side 0 means a full-resolution residual (no stretch): the bound over every residual. The table
is the target's 10-way top-1 on the result under short224, short336, short448 (the towers at 336 and 448) and
squash224, with the original's for reference, and the cosine of the target's embeddings of the result and of
the original (short224; similarity search ranks by it). A decoder-side residual made by a network (``IndexerResidual``)
sees no labels and one forward pass per image, so these numbers are what it could reach at most, not what it
reaches. Writes ``--out`` (JSON) and the table in ``docs/shield-design.md``. The base image is the original,
not a decoded view: the bound is about the shield.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from psic_lab.evaluation.per_photo import PREPROC  # the tables' single-image preprocessings

DOC = Path("docs/shield-design.md")


def markers(name: str) -> tuple[str, str]:
    """The page's markers of the table made from ``results/<name>.json``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


START, END = markers("residual-bound")  # the bound's own table


def render_md(res: dict, name: str = "residual-bound") -> str:
    """The table of ``res`` (this script's JSON, ``results/<name>.json``) as Markdown, between its markers."""
    start, end = markers(name)
    w, h = res["size"]
    s = res["summary"]
    cols = [p for p in (*PREPROC, *res.get("judges", [])) if p in s["original"]]
    cos = any("cos" in row for row in s.values())  # measured since the embedding column was added

    def cells(row: dict) -> str:
        extra = [f"{row['cos']:.2f}" if "cos" in row else "1.00"] if cos else []
        return " | ".join([f"{row[p]:.0%}" for p in cols] + extra) + " |"

    lines = [start, "", "| residual | PSNR to the image (dB) | " + " | ".join(cols)
             + (" | embedding cos to the original (short224)" if cos else "") + " |",
             "|---|---|" + "---|" * (len(cols) + cos),
             "| none (the image) | n/a | " + cells(s["original"])]
    for key, row in s.items():
        if key == "original":
            continue
        if key.startswith("net_"):  # the network's own residual (--weights): one forward pass, no label
            view = key.removeprefix("net_")
            lines.append(f"| network `{res['network']['name']}`, {view} view (RMS {res['network']['rms'][view]:g} "
                         f"levels at 224) | {row['psnr']:.1f} | " + cells(row))
            continue
        thumb, rms = key.removeprefix("thumb").split("_rms")
        rms, _, coarse = rms.partition("_coarse")
        res_name = "full resolution" if thumb == "0" else f"{thumb}x{thumb}"
        res_name += f" + {coarse}x{coarse}" if coarse else ""
        lines.append(f"| {res_name}, RMS {rms} levels | {row['psnr']:.1f} | " + cells(row))
    n = len(res["rows"])
    through = "all four preprocessings each step" if res.get("eot") == "all" else "random indexer preprocessings"
    against = "" if not res.get("against") else (
        " against " + " and ".join(f"`{m}`" for m in res["against"]) + " only, without labels (each model's own "
        "top class for the original), as an encoder could,")
    if res.get("against") and (res.get("embed_weight") or res.get("diversity")):
        against += (" with the caption models' embedding cosine to the original at weight "
                    f"{res.get('embed_weight', 0):g} and input diversity at probability {res.get('diversity', 0):g},")
    how = (f"each optimised residual made for its image ({res['steps']} Adam steps{against} through {through})"
           if any(k.startswith("thumb") for k in s) else "")
    if "network" in res:
        net = f"the network's residual made in one forward pass from `{res['network']['weights']}`"
        how = f"{how}; {net}" if how else net
    judged = (", then the unseen judges' (" + ", ".join(res["judges"]) + ")") if res.get("judges") else ""
    lines += ["", f"Target 10-way top-1{judged} on {n} labelled Imagenette val images at {w}x{h}, {how}; "
              f"`results/{name}.json`, made by `{res['command']}`.", "", end]
    return "\n".join(lines)


def pasted(page: Path, name: str = "residual-bound") -> str:
    """What lies between the markers of ``name`` in ``page`` (markers included)."""
    start, end = markers(name)
    text = page.read_text()
    return text[text.index(start): text.index(end) + len(end)]


def render(out: Path, page: Path) -> None:
    """Replace the table between the markers of ``out``'s name in ``page`` with the one rendered from ``out``."""
    start, end = markers(out.stem)
    text = page.read_text()
    if start not in text:
        raise SystemExit(f"{page} has no {start} ... {end} markers for {out}")
    block = render_md(json.loads(out.read_text()), out.stem)
    page.write_text(text[: text.index(start)] + block + text[text.index(end) + len(end):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val", type=Path, default=Path("../shared/data/imagenette/val"), help="<wnid>/ folders")
    ap.add_argument("--rms", type=float, nargs="*", default=[4.5, 9.0],
                    help="residual RMS budgets, 8-bit levels (none: only the --weights network)")
    ap.add_argument("--thumbs", type=int, nargs="+", default=[0],
                    help="residual resolutions (pixels a side; 0: the image's own, no stretch)")
    ap.add_argument("--size", type=int, default=640, help="long side of the 3:2 test images")
    ap.add_argument("--images", type=int, default=10, help="labelled images (one per class in turn)")
    ap.add_argument("--steps", type=int, default=150, help="Adam steps per image")
    ap.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of the (unit-RMS) residual")
    ap.add_argument("--eot", choices=("sample", "all"), default="all",
                    help="sample: one random indexer preprocessing per step; all: the table's four every step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="random seed (start, preprocessing draws)")
    ap.add_argument("--out", type=Path, default=Path("results/residual-bound.json"), help="JSON to write")
    ap.add_argument("--weights", type=Path, default=None,
                    help="also a model's own indexer residual (one forward pass per image, per shield view)")
    ap.add_argument("--against", nargs="+", default=None,
                    help="optimise against these models without labels, as a codec could: a margin on each "
                         "model's own top class for the original under each preprocessing (e.g. psic-vlp-mini "
                         "effnet-lite1 surrogate-scratch; never the unseen judges)")
    ap.add_argument("--coarse", type=int, nargs="+", default=[0],
                    help="also a coarse residual of this many pixels a side in the same budget (0: none; several: one "
                         "row each)")
    ap.add_argument("--embed-weight", type=float, default=0.0,
                    help="with --against: weight of the caption models' embedding cosine to the original")
    ap.add_argument("--diversity", type=float, default=0.0,
                    help="with --against: probability of a random shrink-and-pad of each model input per step")
    ap.add_argument("--judges", nargs="+", default=[],
                    help="also read the results with these models (10-way top-1 under short224), e.g. "
                         "effnet-lite2 judge-scratch")
    ap.add_argument("--render-only", action="store_true", help=f"only re-render the table in {DOC} from --out")
    args = ap.parse_args()
    if args.render_only:
        render(args.out, DOC)
        return 0
    from psic_lab.evaluation.per_photo import UNSEEN

    forbidden = UNSEEN & set(args.against or [])
    if forbidden:
        raise SystemExit(f"--against {' '.join(sorted(forbidden))}: the unseen judges only measure transfer")

    from PIL import Image

    from psic_lab.evaluation.per_photo import (
        Scorer,
        Transfer,
        add_residual,
        init_residual,
        own_classes,
        reference_embeddings,
        residual_loss,
    )
    from psic_lab.training.shield import imagenet_classes
    from psic_lab.vlp import load_vlp
    from psic_lab.vlp.preprocess import ALL_VARIANTS, IndexerSampler, embed_native

    torch.set_num_threads(args.threads)
    t0 = time.time()
    vlp = load_vlp("psic-vlp-mini")
    for p in vlp.parameters():
        p.requires_grad_(False)
    names, wnid_index = imagenet_classes()
    wnids = sorted(d.name for d in args.val.iterdir() if d.is_dir())
    captions = [names[wnid_index[w]] for w in wnids]
    text = vlp.class_embeddings(captions)
    against = [Scorer(spec, captions) for spec in args.against or []]
    judges = [Scorer(spec, captions) for spec in args.judges]
    sampler = IndexerSampler()
    transfer = Transfer(embed_weight=args.embed_weight, diversity=args.diversity)
    variants = [(t, r, c) for t in args.thumbs for r in args.rms for c in args.coarse]

    def vkey(thumb: int, rms: float, coarse: int) -> str:
        return f"thumb{thumb}_rms{rms:g}" + (f"_coarse{coarse}" if coarse else "")

    files = []
    for i in range(args.images):
        k = i % len(wnids)
        files.append((k, sorted((args.val / wnids[k]).iterdir())[i // len(wnids)]))

    def encode(t: torch.Tensor) -> torch.Tensor:
        """The target's embedding, a 336 or 448 crop seen by the tower at its own size."""
        return embed_native(vlp, t) if t.shape[-1] != vlp.image_size else vlp.encode_image(t)

    def read(z: torch.Tensor) -> torch.Tensor:
        return (z @ text.t()).argmax(1)

    def top1(x: torch.Tensor, k: int) -> dict[str, int]:
        out = {}
        for name in PREPROC:
            t = ALL_VARIANTS[name](x)
            out[name] = int(read(encode(t)).item() == k)
        return out

    def read_judges(x: torch.Tensor, k: int) -> dict[str, int]:
        t = ALL_VARIANTS["short224"](x)
        return {f"{m.spec} short224": int(m.read10(t) == k) for m in judges}

    def cos(v: torch.Tensor, x: torch.Tensor) -> float:
        """Cosine of the target's image embeddings of ``v`` and of the original ``x`` (short224): what
        similarity search compares."""
        a, b = (F.normalize(encode(ALL_VARIANTS["short224"](t)), dim=-1) for t in (v, x))
        return float((a * b).sum())

    net = None
    if args.weights is not None:
        import tempfile

        from psic_cli.views import SHIELD_VIEWS, condition
        from psic_cli.zoo import load_model
        from psic_lab.evaluation.weights import install_weights

        with tempfile.TemporaryDirectory() as tmp:
            net = load_model(install_weights(args.weights, Path(tmp))).model
        if net.indexer_residual is None:
            raise SystemExit(f"{args.weights}: the model has no indexer residual")
        conds = {str(v): torch.tensor([condition(v, None, net.cfg.cond_dim)]) for v in SHIELD_VIEWS}
    w, h = args.size, round(args.size * 2 / 3)
    rows = []
    for k, f in files:
        img = Image.open(f).convert("RGB").resize((w, h), Image.BICUBIC)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            row = {"file": f.name, "class": wnids[k], "original": {**top1(x, k), **read_judges(x, k)}}
            own = own_classes(against, x)
            refs = reference_embeddings(against, x, transfer)
            if net is not None:
                for view, cond in conds.items():
                    v = net.finish(x, cond)
                    row[f"net_{view}"] = {**top1(v, k), "psnr": float(-10 * torch.log10(((v - x) ** 2).mean())),
                                          "cos": cos(v, x)}
        for thumb, rms, coarse in variants:
            gen = torch.Generator().manual_seed(args.seed)
            side = (thumb, thumb) if thumb else (h, w)
            d = init_residual(side, replace(transfer, coarse=coarse), gen)
            opt = torch.optim.Adam(d, lr=args.lr)

            def view(d: tuple[torch.Tensor, ...], rms: float = rms, x: torch.Tensor = x) -> torch.Tensor:
                return add_residual(x, d, rms)

            def margin(t: torch.Tensor, k: int = k) -> torch.Tensor:
                logits = vlp.logit_scale * encode(t) @ text.t()
                other = logits.masked_fill(F.one_hot(torch.tensor(k), len(wnids)).bool(), -1e9)
                return (logits[:, k] - other.max(1).values).clamp_min(-5).mean()

            for _ in range(args.steps):
                v = view(d)
                if against:  # label-free, against the surrogates only: what an encoder can do
                    loss = residual_loss(v, against, own, refs, transfer, gen)
                elif args.eot == "all":
                    loss = sum(margin(ALL_VARIANTS[p](v)) for p in PREPROC)
                else:
                    loss = margin(sampler(v, gen))
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                v = view(d)
                row[vkey(thumb, rms, coarse)] = {**top1(v, k), **read_judges(v, k), "cos": cos(v, x),
                                                  "psnr": float(-10 * torch.log10(((v - x) ** 2).mean()))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    jcols = tuple(f"{m.spec} short224" for m in judges)
    summary = {"original": {p: float(np.mean([r["original"][p] for r in rows])) for p in (*PREPROC, *jcols)}}
    if net is not None:
        for view in conds:
            summary[f"net_{view}"] = {p: float(np.mean([r[f"net_{view}"][p] for r in rows]))
                                      for p in (*PREPROC, "psnr", "cos")}
    for thumb, rms, coarse in variants:
        key = vkey(thumb, rms, coarse)
        summary[key] = {p: float(np.mean([r[key][p] for r in rows])) for p in (*PREPROC, *jcols, "psnr", "cos")}
    res = {"command": "python benchmarks/residual_bound.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "render_only") and v is not None),
        "size": [w, h], "steps": args.steps, "embed_weight": args.embed_weight, "diversity": args.diversity,
        "coarse": args.coarse,
        "eot": args.eot, "against": args.against, "judges": list(jcols),
        "seconds": round(time.time() - t0, 1),
        "summary": summary, "rows": rows}
    if net is not None:
        res["network"] = {"name": args.weights.stem, "weights": str(args.weights),
                          "rms": {v: float(r) * 255 for v, r in zip(conds, net.indexer_residual.rms.tolist(),
                                                                      strict=False)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    render(args.out, DOC)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
