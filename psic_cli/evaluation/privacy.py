"""Privacy evaluation: what vision-language models read in the shielded and full views.

    python -m psic_cli.evaluation.privacy --folder ../shared/data/imagenette/val --limit 500 \\
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

from psic_cli.evaluation.metrics import ms_ssim, psnr


def _zero_shot(vlp, images: list[np.ndarray], class_emb: torch.Tensor, batch: int = 32) -> np.ndarray:
    preds = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack(images[i : i + batch])).permute(0, 3, 1, 2).float() / 255
            preds.append((vlp.encode_image(x) @ class_emb.t()).argmax(1).numpy())
    return np.concatenate(preds)


def evaluate(folder: Path, classes_file: Path, model_id: str, key_path: Path, vlp_specs: list[str],
             limit: int | None, random_keys: int, qualities: list[int] | None) -> dict:
    from PIL import Image

    from psic_cli import codec
    from psic_cli.keys import read_key
    from psic_cli.vlp import load_vlp
    from psic_cli.vlp.data_utils import list_labelled_folder
    from psic_cli.vlp.text import read_class_file
    from psic_cli.zoo import load_model

    key = read_key(key_path)
    lm = load_model(model_id)
    files, labels = list_labelled_folder(folder, limit)
    mapping = read_class_file(classes_file)
    label_set = list(mapping)
    y = np.array([label_set.index(lab) for lab in labels])
    names = [mapping[w] for w in label_set]
    originals = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    vlps = {s: load_vlp(s) for s in vlp_specs}
    class_emb = {s: v.class_embeddings(names) for s, v in vlps.items()}
    res: dict = {"folder": str(folder), "images": len(files), "model": model_id,
                 "model_metadata": {k: lm.info.metadata.get(k) for k in ("steps", "shield", "stage")},
                 "original": {s: float((_zero_shot(v, originals, class_emb[s]) == y).mean()) for s, v in vlps.items()},
                 "qualities": {}}
    target = vlp_specs[0]
    qs = qualities or list(range(1, lm.model.cfg.qualities + 1))
    last_data = []
    for q in qs:
        t0 = time.time()
        views = {"full": [], "shielded": []}
        bpp, metrics = [], {"full": [], "shielded": []}
        datas = []
        for img in originals:
            data = codec.encode_pixels(np.ascontiguousarray(img), model_id, q)
            datas.append(data)
            bpp.append(len(data) * 8 / (img.shape[0] * img.shape[1]))
            for v in views:
                px = codec.decode(data, key if v == "full" else None, v).pixels
                views[v].append(px)
                metrics[v].append((psnr(img, px), ms_ssim(img, px)))
        entry = {"bpp": float(np.mean(bpp))}
        for v in views:
            m = np.array(metrics[v])
            entry[f"{v}_psnr"], entry[f"{v}_ms_ssim"] = float(m[:, 0].mean()), float(m[:, 1].mean())
        for s, vlp in vlps.items():
            pf = _zero_shot(vlp, views["full"], class_emb[s])
            ps = _zero_shot(vlp, views["shielded"], class_emb[s])
            ok_full = pf == y
            entry[s] = {"full_top1": float(ok_full.mean()), "shielded_top1": float((ps == y).mean()),
                        "attack_success_rate": float((ok_full & (ps != y)).sum() / max(1, ok_full.sum()))}
        entry["seconds"] = time.time() - t0
        res["qualities"][str(q)] = entry
        last_data = datas
        print(f"q{q}: {json.dumps(entry)}", file=sys.stderr, flush=True)
    if random_keys:
        res["random_keys"] = _random_keys(lm.model, last_data[:8], y[:8], vlps[target], class_emb[target],
                                          key, random_keys, qs[-1])
    return res


def _random_keys(model, datas: list[bytes], y: np.ndarray, vlp, class_emb, key: bytes, n: int, q: int) -> dict:
    """Decode the same bitstreams with ``n`` random keys; count those the target reads like the full view."""
    import secrets

    from psic_cli import container
    from psic_cli.keys import condition_bits

    latents, sizes = [], []
    for d in datas:
        f = container.unpack(d)
        t = f.tiles[0]
        y_hat, _ = model.decode_latent([[t.strings[0]], [t.strings[1]]], t.z_shape)
        latents.append(y_hat.float())
        sizes.append((f.header.height, f.header.width))
    if len({tuple(latent.shape) for latent in latents}) != 1:
        raise ValueError("random-key test needs images of one size")
    y_hat = torch.cat(latents)
    qt = torch.full((len(datas),), q - 1)
    h, w = sizes[0]

    def top1(bits) -> float:
        cond = torch.tensor(bits, dtype=torch.float32)[None].expand(len(datas), -1)
        with torch.no_grad():
            x = model.synthesize(y_hat, cond, qt).clamp(0, 1)[..., :h, :w]
            pred = (vlp.encode_image(x) @ class_emb.t()).argmax(1).numpy()
        return float((pred == y).mean())

    full = top1(condition_bits(key, model.cfg.cond_dim, "full"))
    shielded = top1([0.0] * model.cfg.cond_dim)
    accs = [top1(condition_bits(secrets.token_bytes(32), model.cfg.cond_dim, "full")) for _ in range(n)]
    unlocked = sum(a >= full for a in accs) if full > shielded else None
    return {"keys": n, "images": len(datas), "full_top1": full, "shielded_top1": shielded,
            "random_key_top1_mean": float(np.mean(accs)), "random_key_top1_max": float(np.max(accs)),
            "unlocked": unlocked,
            "note": "unlocked = random keys whose top-1 reaches the full view's (None while the views do not "
                    "differ, i.e. the shield is untrained)"}


def write_report(res: dict, name: str, command: str) -> None:
    Path("results").mkdir(exist_ok=True)
    Path(f"results/{name}.json").write_text(json.dumps(res, indent=2))
    vl = list(res["original"])
    lines = [f"# Privacy on {res['folder']} ({res['images']} images)", "",
             f"Generated by `{command}`; raw numbers in `results/{name}.json`.", "",
             f"Model `{res['model']}`: {res['model_metadata']}", "",
             "| quality | bpp | PSNR full | PSNR shielded | MS-SSIM full | MS-SSIM shielded | "
             + " | ".join(f"{v} orig / full / shielded (ASR)" for v in vl) + " |",
             "|---" * (6 + len(vl)) + "|"]
    for q, e in res["qualities"].items():
        cells = [f"{res['original'][v]:.1%} / {e[v]['full_top1']:.1%} / {e[v]['shielded_top1']:.1%} "
                 f"({e[v]['attack_success_rate']:.1%})" for v in vl]
        lines.append(f"| {q} | {e['bpp']:.3f} | {e['full_psnr']:.2f} | {e['shielded_psnr']:.2f} | "
                     f"{e['full_ms_ssim']:.4f} | {e['shielded_ms_ssim']:.4f} | " + " | ".join(cells) + " |")
    if "random_keys" in res:
        rk = res["random_keys"]
        lines += ["", f"Random keys: {rk['keys']} keys on {rk['images']} images: unlocked {rk['unlocked']}; "
                  f"target top-1 full {rk['full_top1']:.1%}, shielded {rk['shielded_top1']:.1%}, random keys mean "
                  f"{rk['random_key_top1_mean']:.1%} (max {rk['random_key_top1_max']:.1%})."]
    Path(f"docs/{name}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--classes", type=Path, default=Path("psic_cli/vlp/data/imagenette_classes.tsv"))
    ap.add_argument("--model", default="psic-sh")
    ap.add_argument("--key", type=Path, default=Path("weights/shipped.key"))
    ap.add_argument("--vlps", nargs="+", default=["psic-vlp-mini", "judge-scratch", "effnet-lite2"],
                    help="the first is the target")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--qualities", type=int, nargs="*", default=None)
    ap.add_argument("--random-keys", type=int, default=1000)
    ap.add_argument("--name", default="privacy")
    args = ap.parse_args(argv)
    res = evaluate(args.folder, args.classes, args.model, args.key, args.vlps, args.limit, args.random_keys,
                   args.qualities)
    write_report(res, args.name, "python -m psic_cli.evaluation.privacy " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
