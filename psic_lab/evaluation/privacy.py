"""Privacy evaluation: what vision-language models read in the shielded and full views.

    python -m psic_lab.evaluation.privacy --folder ../shared/data/imagenette/val --limit 500 \\
        --vlps psic-vlp-mini judge-scratch effnet-lite2 --random-keys 1000 --name privacy

For each quality: real bpp; PSNR and MS-SSIM of both views against the original; zero-shot top-1 of every
VLP on original / full / shielded; the attack success rate as PSIC defines it (correct on the full view,
wrong on the shielded view).  Then: how many of ``--random-keys`` random keys decode a view the target
reads as well as the full view (a wrong key must never unlock).  Writes ``results/<name>.json``,
``docs/<name>.md`` and ``docs/<name>.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from psic_cli.views import SHIELD_VIEWS, View, condition
from psic_lab.evaluation.metrics import ms_ssim, psnr
from psic_lab.evaluation.report import save


def _batches(images: list[np.ndarray], batch: int = 32):
    for i in range(0, len(images), batch):
        yield torch.from_numpy(np.stack(images[i : i + batch])).permute(0, 3, 1, 2).float() / 255


def _predict(vlp, images: list[np.ndarray], class_emb: torch.Tensor,
             emb1000: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-shot predictions over ``class_emb`` and, from the same forward pass, 1000-way ImageNet
    predictions: a classifier judge's own logits, or zero-shot over ``emb1000`` (all 1000 class prompts)."""
    zs, full = [], []
    with torch.no_grad():
        for x in _batches(images):
            if hasattr(vlp, "logits"):
                logits = vlp.logits(x)
                zs.append((logits.softmax(-1) @ class_emb.t()).argmax(1).numpy())
                full.append(logits.argmax(1).numpy())
            else:
                z = vlp.encode_image(x)
                zs.append((z @ class_emb.t()).argmax(1).numpy())
                if emb1000 is not None:
                    full.append((z @ emb1000.t()).argmax(1).numpy())
    return np.concatenate(zs), (np.concatenate(full) if full else None)


def decode_view(data: bytes, key: bytes, view: View | str) -> np.ndarray:
    """Decode ``data`` to ``view`` through the codec (the key only where the view needs it): uint8 HxWx3."""
    from psic_cli import codec

    view = View(view)
    return codec.decode(data, key if view.needs_key else None, view).pixels


def available_views(metadata: dict) -> list[View]:
    """The views a model's weights have trained, in report order (full first)."""
    from psic_cli.views import trained_views

    first = [View.FULL, View.SHIELDED]
    return first + [v for v in trained_views(metadata) if v not in first]


def evaluate(folder: Path, classes_file: Path, model_id: str, key_path: Path, vlp_specs: list[str],
             limit: int | None, random_keys: int, qualities: list[int] | None,
             views: list[str] | None = None, key_images: int = 8) -> dict:
    from PIL import Image

    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model
    from psic_lab.vlp import load_vlp
    from psic_lab.vlp.data_utils import list_labelled_folder
    from psic_lab.vlp.judges import EffNetLabelJudge
    from psic_lab.vlp.text import imagenet_classes, read_class_file

    key = read_key(key_path)
    lm = load_model(model_id)
    views = views or available_views(lm.info.metadata)
    files, labels = list_labelled_folder(folder, limit)
    mapping = read_class_file(classes_file)
    label_set = list(mapping)
    y = np.array([label_set.index(lab) for lab in labels])
    names = [mapping[w] for w in label_set]
    originals = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    vlps = {s: load_vlp(s) for s in vlp_specs}
    class_emb = {s: v.class_embeddings(names) for s, v in vlps.items()}
    wnids, names1000 = imagenet_classes()
    wnid_index = {w: i for i, w in enumerate(wnids)}
    emb1000 = {s: None if isinstance(v, EffNetLabelJudge) else v.class_embeddings(list(names1000))
               for s, v in vlps.items()} if all(lab in wnid_index for lab in label_set) else {}
    y1000 = {s: np.array([wnid_index[lab] for lab in labels]) for s in emb1000}
    res: dict = {"folder": str(folder), "images": len(files), "model": model_id, "views": views,
                 "model_metadata": {k: lm.info.metadata.get(k) for k in ("steps", "shield", "stage", "shield_levels",
                                                                          "machine_view")},
                 "original": {}, "original_1000way": {}, "qualities": {}}
    for s, v in vlps.items():
        p10, p1000 = _predict(v, originals, class_emb[s], emb1000.get(s))
        res["original"][s] = float((p10 == y).mean())
        if s in y1000:
            res["original_1000way"][s] = float((p1000 == y1000[s]).mean())
    target = vlp_specs[0]
    qs = qualities or list(range(1, lm.model.cfg.qualities + 1))
    last_data = []
    for q in qs:
        t0 = time.time()
        decoded: dict[str, list] = {v: [] for v in views}
        bpp, metrics = [], {v: [] for v in views}
        datas = []
        for img in originals:
            data = codec.encode_pixels(np.ascontiguousarray(img), model_id, q)
            datas.append(data)
            bpp.append(len(data) * 8 / (img.shape[0] * img.shape[1]))
            for v in views:
                px = decode_view(data, key, v)
                decoded[v].append(px)
                metrics[v].append((psnr(img, px), ms_ssim(img, px)))
        entry: dict = {"bpp": float(np.mean(bpp))}
        for v in views:
            m = np.array(metrics[v])
            entry[f"{v}_psnr"], entry[f"{v}_ms_ssim"] = float(m[:, 0].mean()), float(m[:, 1].mean())
        for s, vlp in vlps.items():
            both = {v: _predict(vlp, decoded[v], class_emb[s], emb1000.get(s)) for v in views}
            preds = {v: b[0] for v, b in both.items()}
            ok_full = preds[View.FULL] == y
            entry[s] = {f"{v}_top1": float((preds[v] == y).mean()) for v in views}
            for v in views:
                if v in SHIELD_VIEWS:
                    entry[s][f"{v}_attack_success_rate"] = float((ok_full & (preds[v] != y)).sum()
                                                                 / max(1, ok_full.sum()))
            if s in y1000:
                entry[s]["1000way"] = {v: float((both[v][1] == y1000[s]).mean()) for v in views}
        entry["seconds"] = time.time() - t0
        res["qualities"][str(q)] = entry
        last_data = datas
        print(f"q{q}: {json.dumps(entry)}", file=sys.stderr, flush=True)
    if random_keys:
        res["random_keys"] = _random_keys(lm.model, last_data[:key_images], y[:key_images], vlps[target],
                                          class_emb[target], key, random_keys, qs[-1])
    return res


def bitstream_latent(model, data: bytes) -> tuple[torch.Tensor, tuple[int, int]]:
    """The entropy-decoded latent ``y_hat`` (float32) of a one-tile .psic file, and the image's (h, w)."""
    from psic_cli import container

    f = container.unpack(data)
    t = f.tiles[0]
    y_hat, _ = model.decode_latent([[t.strings[0]], [t.strings[1]]], t.z_shape, container.latent_shape(f.header))
    return y_hat.float(), (f.header.height, f.header.width)


def _random_keys(model, datas: list[bytes], y: np.ndarray, vlp, class_emb, key: bytes, n: int, q: int) -> dict:
    """Decode the same bitstreams with ``n`` random keys; count those the target reads like the full view."""
    import secrets


    latents, sizes = zip(*(bitstream_latent(model, d) for d in datas), strict=True)
    if len({tuple(latent.shape) for latent in latents}) != 1:
        raise ValueError("random-key test needs images of one size")
    y_hat = torch.cat(latents)
    qt = torch.full((len(datas),), q - 1)
    h, w = sizes[0]

    def view(bits) -> torch.Tensor:
        cond = torch.tensor(bits, dtype=torch.float32)[None].expand(len(datas), -1)
        with torch.no_grad():
            return model.finish(model.synthesize(y_hat, cond, qt)[..., :h, :w], cond)

    def top1(x: torch.Tensor) -> float:
        with torch.no_grad():
            pred = (vlp.encode_image(x) @ class_emb.t()).argmax(1).numpy()
        return float((pred == y).mean())

    def psnr_t(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(-10 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-12)))

    x_full = view(condition(View.FULL, key, model.cfg.cond_dim))
    x_shield = view(condition(View.SHIELDED, None, model.cfg.cond_dim))
    full, shielded = top1(x_full), top1(x_shield)
    accs, to_full = [], []
    for _ in range(n):
        xk = view(condition(View.FULL, secrets.token_bytes(32), model.cfg.cond_dim))
        accs.append(top1(xk))
        to_full.append(psnr_t(xk, x_full))
    unlocked = sum(a >= full for a in accs) if full > shielded else None
    return {"keys": n, "images": len(datas), "full_top1": full, "shielded_top1": shielded,
            "random_key_top1_mean": float(np.mean(accs)), "random_key_top1_max": float(np.max(accs)),
            "unlocked": unlocked, "shielded_vs_full_psnr_db": psnr_t(x_shield, x_full),
            "random_key_vs_full_psnr_db_max": float(np.max(to_full)),
            "note": "unlocked = random keys whose top-1 reaches the full view's (None while the views do not "
                    "differ, i.e. the shield is untrained); PSNR of a random key's view against the full view "
                    "(max over keys) shows how close the nearest one came"}


def plot(res: dict, path: Path) -> None:
    """Zero-shot top-1 of every VLP against bpp, one line per view, the original as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vl = list(res["original"])
    fig, axes = plt.subplots(1, len(vl) + 1, figsize=(4.2 * (len(vl) + 1), 3.6))
    qs = list(res["qualities"].values())
    bpp = [e["bpp"] for e in qs]
    for ax, s in zip(axes, vl, strict=False):
        for v in res["views"]:
            ax.plot(bpp, [100 * e[s][f"{v}_top1"] for e in qs], "o-", label=v)
        ax.axhline(100 * res["original"][s], ls="--", c="k", lw=1, label="original")
        ax.axhline(10, ls=":", c="gray", lw=1, label="chance")
        ax.set(title=f"{s} (10-way)", xlabel="bpp", ylabel="top-1 %", ylim=(0, 102))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    for v in res["views"]:
        ax.plot(bpp, [e[f"{v}_psnr"] for e in qs], "o-", label=v)
    ax.set(title="PSNR vs original", xlabel="bpp", ylabel="dB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_md(res: dict, name: str, command: str) -> str:
    """``docs/<name>.md``, rendered from the results dict (``results/<name>.json``)."""
    vl, views = list(res["original"]), res["views"]
    lines = [f"# Privacy on {res['folder']} ({res['images']} images)", "",
             f"Generated by `{command}`; raw numbers in `results/{name}.json`, figure `docs/{name}.png`.", "",
             f"Model `{res['model']}`: {res['model_metadata']}", "",
             "Zero-shot top-1 over the 10 Imagenette classes (chance 10%); ASR = attack success rate as PSIC "
             "defines it: correct on the full view, wrong on the shielded view.", "",
             "| quality | bpp | " + " | ".join(f"PSNR {v}" for v in views) + " | "
             + " | ".join(f"MS-SSIM {v}" for v in views) + " |",
             "|---" * (2 + 2 * len(views)) + "|"]
    for q, e in res["qualities"].items():
        lines.append(f"| {q} | {e['bpp']:.3f} | " + " | ".join(f"{e[f'{v}_psnr']:.2f}" for v in views) + " | "
                     + " | ".join(f"{e[f'{v}_ms_ssim']:.4f}" for v in views) + " |")
    asr = View.SHIELDED in views
    lines += ["", "| quality | VLP | original | " + " | ".join(views) + (" | ASR shielded |" if asr else " |"),
              "|---" * (3 + len(views) + asr) + "|"]
    for q, e in res["qualities"].items():
        for s in vl:
            lines.append(f"| {q} | {s} | {res['original'][s]:.1%} | "
                         + " | ".join(f"{e[s][f'{v}_top1']:.1%}" for v in views)
                         + (f" | {e[s]['shielded_attack_success_rate']:.1%} |" if asr else " |"))
    if res.get("original_1000way"):
        lines += ["", "1000-way ImageNet top-1 (classifier judges: their own 1000 outputs; the others: zero-shot "
                  "over all 1000 ImageNet class prompts):", "",
                  "| quality | judge | original | " + " | ".join(views) + " |", "|---" * (3 + len(views)) + "|"]
        for q, e in res["qualities"].items():
            for s, o in res["original_1000way"].items():
                lines.append(f"| {q} | {s} | {o:.1%} | " + " | ".join(f"{e[s]['1000way'][v]:.1%}" for v in views)
                             + " |")
    if "random_keys" in res:
        rk = res["random_keys"]
        lines += ["", f"Random keys: {rk['keys']} keys on {rk['images']} images at the highest quality: "
                  f"**unlocked {rk['unlocked']}**; target top-1 full {rk['full_top1']:.1%}, shielded "
                  f"{rk['shielded_top1']:.1%}, random keys mean {rk['random_key_top1_mean']:.1%} (max "
                  f"{rk['random_key_top1_max']:.1%}); the closest random-key view is "
                  f"{rk['random_key_vs_full_psnr_db_max']:.2f} dB PSNR from the full view (the shielded view: "
                  f"{rk['shielded_vs_full_psnr_db']:.2f} dB)."]
    return "\n".join(lines) + "\n"


def write_report(res: dict, name: str, command: str) -> None:
    save(name, res, report_md(res, name, command).removesuffix("\n").split("\n"))
    plot(res, Path(f"docs/{name}.png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--classes", type=Path, default=Path("psic_lab/vlp/data/imagenette_classes.tsv"))
    ap.add_argument("--model", default="psic-sh")
    ap.add_argument("--key", type=Path, default=Path("weights/shipped.key"))
    ap.add_argument("--vlps", nargs="+", default=["psic-vlp-mini", "judge-scratch", "effnet-lite2"],
                    help="the first is the target")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--qualities", type=int, nargs="*", default=None)
    ap.add_argument("--random-keys", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--key-images", type=int, default=8, help="images decoded with each random key")
    ap.add_argument("--views", nargs="*", default=None, type=View, choices=list(View),
                    help="default: every view the model's weights have trained")
    ap.add_argument("--name", default="privacy")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = evaluate(args.folder, args.classes, args.model, args.key, args.vlps, args.limit, args.random_keys,
                   args.qualities, args.views, args.key_images)
    write_report(res, args.name, "python -m psic_lab.evaluation.privacy " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
