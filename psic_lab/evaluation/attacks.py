"""Attacks on the shield, measured as found (not tuned): what survives publication, and what an attacker
who holds the weights can recover.

    python -m psic_lab.evaluation.attacks --folder ../shared/data/imagenette/val --limit 200 --name attacks

For each quality and each shielded view (``shielded`` = subtle, and ``strong`` when trained), with the full
view and a per-image white-box attack on the full view as reference points:

- **publication**: zero-shot top-1 of every VLP on the view as decoded, after JPEG re-encoding at quality
  90/75/50 (Pillow), after 0.5x downscaling (Pillow, Lanczos) and after a light Gaussian blur (radius 1);
- **cost**: PSNR and MS-SSIM of the view against the full view of the same bitstream;
- **white-box trigger search**: an attacker with the weights optimises the decoder's condition directly,
  (a) label-free: the condition vector that maximises the target's confidence (its top softmax
  probability over the 1000 ImageNet prompts), and (b) with labels: the trigger ``tau`` (the CLTG output,
  one step closer to the decoder) that maximises the true class's probability.  Both are universal (one
  vector for all images), fitted on ``--search-images`` images that are not in the evaluation set;
- **per-image white-box attack** (reference): PGD on the full view against the target, L-inf 2/255, 10
  steps, the kind of perturbation that fools the training target but not other models.

Writes ``results/<name>.json``, ``docs/<name>.md`` and ``docs/<name>.png`` (privacy after JPEG q75 against
PSNR cost: the trade-off curve).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from psic_cli.views import View
from psic_lab.evaluation.metrics import ms_ssim, psnr
from psic_lab.evaluation.report import save

TRANSFORMS = ("as decoded", "jpeg90", "jpeg75", "jpeg50", "resize0.5", "blur1")


def publish(img: np.ndarray, how: str) -> np.ndarray:
    """What a platform does to an upload (Pillow): JPEG re-encoding, downscaling or a light blur."""
    from PIL import Image, ImageFilter

    if how == "as decoded":
        return img
    im = Image.fromarray(img)
    if how.startswith("jpeg"):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(how[4:]))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if how.startswith("resize"):
        s = float(how[6:])
        return np.asarray(im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS))
    if how.startswith("blur"):
        return np.asarray(im.filter(ImageFilter.GaussianBlur(radius=float(how[4:]))))
    raise ValueError(how)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def top1(vlp, emb: torch.Tensor, images: list[np.ndarray], y: np.ndarray, batch: int = 50) -> float:
    preds = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            preds.append((vlp.encode_image(_to_tensor(images[i : i + batch])) @ emb.t()).argmax(1).numpy())
    return float((np.concatenate(preds) == y).mean())


def pgd_full_view(vlp, emb: torch.Tensor, images: list[np.ndarray], y: np.ndarray, eps: float = 2 / 255,
                  steps: int = 10, batch: int = 25) -> list[np.ndarray]:
    """Per-image untargeted PGD (L-inf ``eps``) against the target's zero-shot classifier."""
    out = []
    for i in range(0, len(images), batch):
        x = _to_tensor(images[i : i + batch])
        t = torch.from_numpy(y[i : i + batch])
        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(steps):
            logits = vlp.logit_scale * vlp.encode_image((x + delta).clamp(0, 1)) @ emb.t()
            loss = torch.nn.functional.cross_entropy(logits, t)
            (g,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta += (eps / 4) * g.sign()
                delta.clamp_(-eps, eps)
        adv = ((x + delta.detach()).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out.extend(list(adv))
    return out


def _synth(model, y_hat: torch.Tensor, q: int, space: str, v: torch.Tensor) -> torch.Tensor:
    """Decode ``y_hat`` with one condition (``space="cond"``) or one trigger (``"tau"``) for every image."""
    n = y_hat.shape[0]
    qt = torch.full((n,), q - 1)
    if space == "cond":
        cond = v[None].expand(n, -1)
        return model.finish(model.synthesize(y_hat, cond, qt), cond)
    return model.g_s(y_hat / model.gain(qt), v[None].expand(n, -1))


def trigger_search(model, vlp, text_all: torch.Tensor, y_hat: torch.Tensor, q: int,
                   labels1000: torch.Tensor | None, space: str, steps: int, seed: int = 0) -> torch.Tensor:
    """Optimise one condition (``space="cond"``) or trigger (``space="tau"``) for all images in ``y_hat``.

    Label-free when ``labels1000`` is None (maximise the target's top probability over 1000 prompts);
    otherwise maximise the true class's probability.  Returns the found vector.
    """
    torch.manual_seed(seed)
    cfg = model.cfg
    if space == "cond":
        v = torch.zeros(cfg.cond_dim, requires_grad=True)
    else:
        with torch.no_grad():
            v = model.cltg(torch.zeros(1, cfg.cond_dim))[0].clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=0.05)
    for _ in range(steps):
        x = _synth(model, y_hat, q, space, v)
        logp = (vlp.logit_scale * vlp.encode_image(x.clamp(0, 1)) @ text_all.t()).log_softmax(-1)
        loss = -(logp.max(-1).values.mean() if labels1000 is None else logp.gather(1, labels1000[:, None]).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return v.detach()


def _decode_with(model, y_hat: torch.Tensor, q: int, space: str, v: torch.Tensor, hw: tuple[int, int]) -> list:
    with torch.no_grad():
        x = _synth(model, y_hat, q, space, v).clamp(0, 1)[..., : hw[0], : hw[1]]
    return list((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def attack_subset(folder: Path, limit: int, search_images: int) -> tuple[list[Path], list[str], np.ndarray, np.ndarray]:
    """The labelled files, and which of them are evaluated (``limit``) and which fit trigger searches."""
    from psic_lab.vlp.data_utils import list_labelled_folder

    files, labels = list_labelled_folder(folder, limit + search_images)
    order = np.random.default_rng(0).permutation(len(files))
    return files, labels, order[:limit], order[limit:]


def evaluate(args) -> dict:
    from PIL import Image

    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model
    from psic_lab.evaluation.privacy import available_views, bitstream_latent, decode_view
    from psic_lab.vlp import load_vlp
    from psic_lab.vlp.text import imagenet_classes, read_class_file

    torch.set_grad_enabled(True)
    key = read_key(args.key)
    lm = load_model(args.model)
    model = lm.model
    views = [v for v in available_views(lm.info.metadata) if v is not View.MACHINE]
    files, labels, ev, se = attack_subset(args.folder, args.limit, args.search_images)
    mapping = read_class_file(args.classes)
    label_set = list(mapping)
    names10 = [mapping[w] for w in label_set]
    wnids, all_names = imagenet_classes()
    wnid_index = {w: i for i, w in enumerate(wnids)}
    y_all = np.array([label_set.index(lab) for lab in labels])
    y1000_all = torch.tensor([wnid_index[lab] for lab in labels])
    originals = [np.asarray(Image.open(files[i]).convert("RGB")) for i in ev]
    search_imgs = [np.asarray(Image.open(files[i]).convert("RGB")) for i in se]
    y, y_search = y_all[ev], y_all[se]
    vlps = {s: load_vlp(s) for s in args.vlps}
    emb = {s: v.class_embeddings(names10) for s, v in vlps.items()}
    target = args.vlps[0]
    tv = vlps[target]
    res: dict = {"folder": str(args.folder), "images": len(originals), "model": args.model, "views": views,
                 "vlps": args.vlps, "target": target, "transforms": list(TRANSFORMS),
                 "original": {s: top1(v, emb[s], originals, y) for s, v in vlps.items()}, "qualities": {}}
    text_all = None
    for q in args.qualities:
        t0 = time.time()
        decoded: dict[str, list] = {v: [] for v in views}
        latents = []
        for img in originals + search_imgs:
            data = codec.encode_pixels(np.ascontiguousarray(img), args.model, q)
            latents.append(bitstream_latent(model, data)[0])
            if len(latents) <= len(originals):
                for v in views:
                    decoded[v].append(decode_view(data, key, v))
        decoded["pgd (reference)"] = pgd_full_view(tv, emb[target], decoded[View.FULL], y)
        entry: dict = {"views": {}}
        for v, imgs in decoded.items():
            pairs_full = list(zip(decoded[View.FULL], imgs, strict=True))
            ve: dict = {"psnr_vs_full": None if v == View.FULL else float(np.mean([psnr(a, b) for a, b in pairs_full])),
                        "ms_ssim_vs_full": None if v == View.FULL else float(np.mean([ms_ssim(a, b)
                                                                                  for a, b in pairs_full])),
                        "psnr_vs_original": float(np.mean([psnr(a, b) for a, b in zip(originals, imgs, strict=True)])),
                        "top1": {}}
            for how in TRANSFORMS:
                pub = [publish(im, how) for im in imgs]
                ve["top1"][how] = {s: top1(vl, emb[s], pub, y) for s, vl in vlps.items()}
            entry["views"][v] = ve
            print(f"q{q} {v}: {json.dumps(ve)}", file=sys.stderr, flush=True)
        if args.search_steps and search_imgs:
            if text_all is None:
                text_all = tv.class_embeddings(list(all_names))
            h, w = originals[0].shape[:2]
            lat_ev = torch.cat(latents[: len(originals)])
            lat_se = torch.cat(latents[len(originals) :])
            found = {}
            for name, space, lab in (("label-free condition search", "cond", None),
                                     ("labelled trigger (tau) search", "tau", y1000_all[se])):
                v = trigger_search(model, tv, text_all, lat_se, q, lab, space, args.search_steps)
                imgs = _decode_with(model, lat_ev, q, space, v, (h, w))
                found[name] = {"top1": {s: top1(vl, emb[s], imgs, y) for s, vl in vlps.items()},
                               "search_top1_target": top1(tv, emb[target],
                                                           _decode_with(model, lat_se, q, space, v, (h, w)), y_search),
                               "psnr_vs_full": float(np.mean([psnr(a, b) for a, b in zip(decoded[View.FULL], imgs,
                                                                                        strict=True)])),
                               "psnr_vs_original": float(np.mean([psnr(a, b) for a, b in zip(originals, imgs,
                                                                                            strict=True)]))}
                print(f"q{q} {name}: {json.dumps(found[name])}", file=sys.stderr, flush=True)
            entry["trigger_search"] = found
        entry["seconds"] = time.time() - t0
        res["qualities"][str(q)] = entry
    return res


def plot(res: dict, path: Path) -> None:
    """Target top-1 after JPEG q75 against PSNR cost vs the full view, one point per view and quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = res["target"]
    unseen = [s for s in res["vlps"] if s != target]
    fig, axes = plt.subplots(1, 1 + len(unseen), figsize=(5 * (1 + len(unseen)), 4))
    axes = np.atleast_1d(axes)
    panels = [(axes[0], target, "jpeg75", f"{target} after JPEG q75")] + [
        (ax, s, "as decoded", f"{s} (unseen) as decoded") for ax, s in zip(axes[1:], unseen, strict=True)]
    markers = {View.FULL: "s", View.SHIELDED: "o", View.STRONG: "^", "pgd (reference)": "x"}
    entries = list(res["qualities"].values())
    for ax, s, how, title in panels:
        for v in entries[0]["views"]:
            cost = [e["views"][View.FULL]["psnr_vs_original"] - e["views"][v]["psnr_vs_original"] for e in entries]
            acc = [100 * e["views"][v]["top1"][how][s] for e in entries]
            ax.plot(cost, acc, markers.get(v, "o"), label=v, ms=8)
        ax.axhline(10, ls=":", c="gray", lw=1)
        ax.set(title=title, xlabel="PSNR cost vs full view (dB)", ylabel="top-1 %", ylim=(0, 102))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_md(res: dict, name: str, command: str) -> str:
    """``docs/<name>.md``, rendered from the results dict (``results/<name>.json``)."""
    vl = res["vlps"]
    lines = [f"# Attacks on the shield ({res['images']} images of {res['folder']})", "",
             f"Generated by `{command}`; raw numbers in `results/{name}.json`, figure `docs/{name}.png`.", "",
             f"Zero-shot top-1 over the 10 Imagenette classes (chance 10%). Target: `{res['target']}`; the "
             f"others were never trained against. Originals: "
             + ", ".join(f"{s} {res['original'][s]:.1%}" for s in vl) + ".", ""]
    for q, e in res["qualities"].items():
        lines += [f"## Quality {q}", "", "| view | PSNR vs full | MS-SSIM vs full | VLP | "
                  + " | ".join(res["transforms"]) + " |", "|---" * (4 + len(res["transforms"])) + "|"]
        for v, ve in e["views"].items():
            for s in vl:
                cost = "-" if ve["psnr_vs_full"] is None else f"{ve['psnr_vs_full']:.2f}"
                ssim = "-" if ve["ms_ssim_vs_full"] is None else f"{ve['ms_ssim_vs_full']:.4f}"
                lines.append(f"| {v} | {cost} | {ssim} | {s} | "
                             + " | ".join(f"{ve['top1'][h][s]:.1%}" for h in res["transforms"]) + " |")
        if "trigger_search" in e:
            lines += ["", "White-box trigger search (one vector for all images, fitted on held-out images):", "",
                      "| search | PSNR vs full | PSNR vs original | target top-1 on its fitting images | "
                      + " | ".join(vl) + " |", "|---" * (4 + len(vl)) + "|"]
            for n, f in e["trigger_search"].items():
                lines.append(f"| {n} | {f['psnr_vs_full']:.2f} | {f['psnr_vs_original']:.2f} | "
                             f"{f['search_top1_target']:.1%} | " + " | ".join(f"{f['top1'][s]:.1%}" for s in vl) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(res: dict, name: str, command: str) -> None:
    save(name, res, report_md(res, name, command).removesuffix("\n").split("\n"))
    plot(res, Path(f"docs/{name}.png"))


def main(argv: list[str] | None = None) -> int:
    from psic_cli._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--classes", type=Path, default=Path("psic_lab/vlp/data/imagenette_classes.tsv"))
    ap.add_argument("--model", default="psic-sh")
    ap.add_argument("--key", type=Path, default=Path("weights/shipped.key"))
    ap.add_argument("--vlps", nargs="+", default=["psic-vlp-mini", "effnet-lite2", "judge-scratch"],
                    help="the first is the target")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--qualities", type=int, nargs="+", default=[1])
    ap.add_argument("--search-images", type=int, default=32)
    ap.add_argument("--search-steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--name", default="attacks")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = evaluate(args)
    write_report(res, args.name, "python -m psic_lab.evaluation.attacks " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
