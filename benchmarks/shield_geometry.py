"""The shield on photos of every size, read the way indexers read them.

Encodes and decodes through the runtime API (``psic_cli.codec.encode_pixels`` / ``decode``: the real
bitstream, large images through the decoder's tiled path) at long sides 64 .. 6000 pixels, decodes the
views full / shielded / strong, and gives every view (and the original) to the indexers through their
preprocessing (:mod:`psic_lab.vlp.preprocess`):

* labelled: Imagenette val images, centre-cropped from 224x224 to a 3:2 landscape (224x149: no aspect
  distortion, the middle two thirds of the rows kept) and resized (Pillow bicubic, upscaling above 224) to
  the long side ``L`` (``L x round(2L/3)``).  Target ``psic-vlp-mini``: 10-way zero-shot top-1 under each
  single-image preprocessing (short224, short336, short448, squash224; at 336 and 448 its EfficientNet-Lite0
  tower runs at that resolution, being fully convolutional with global pooling).  Unseen judges
  (EfficientNet-Lite2, ``judge-scratch``; never trained against) after short224, then their own input
  resize (260 and 64 pixels).  For strong only: the target after JPEG
  q75 and WebP q75 re-encoding, after a 0.5x downscale, and on each tile of a 2x2 grid.
* unlabelled: Kodak and BSDS500 ``test/`` (never trained on) rescaled to the long side ``L`` (aspect kept),
  and at their native sizes (row ``native``): how often each judge's 1000-way top-1 on a view agrees with
  its top-1 on the original (ImageNet class prompts for the target and the scratch judge, Lite2's own head).
* retrieval: every decoded view among a gallery of ``--gallery`` originals at the same size (its own
  original at its size, plus other Imagenette val images prepared the same way at
  ``min(L, --gallery-max-side)``: above 224 an upscaled Imagenette image's short224 crop changes only by
  resampling, and embedding 100 distractors per size would cost minutes), ranked by the target's image
  embedding and by Lite2's pooled features after short224; R@1 = own original ranked first.
* quality: PSNR and MS-SSIM against the original, the gap to the full view, and the grid score of
  (view - full) (:func:`psic_lab.evaluation.metrics.grid_score_parts`; 1 = no peak at the decoder's 16- and
  8-pixel lattice harmonics).

Writes ``--out`` (JSON: counts, timings, command, git revision, weights hash) and ``docs/<name>.md``;
``scripts/update_readme.py`` pastes the headline into the README.

    python benchmarks/shield_geometry.py --threads 1 --max-minutes 35
    python benchmarks/shield_geometry.py --quick          # a few images at three sizes (tests)
    python benchmarks/shield_geometry.py --render-only    # docs/shield-geometry.md from the results file
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from psic_cli.views import View  # noqa: E402 (after the path)
from psic_lab.evaluation.per_photo import PROMPT_1000  # noqa: E402

SIZES = (64, 224, 512, 768, 1024, 2048, 4096, 6000)
#: images per long side (labelled, unlabelled): sized so the whole run takes about half an hour on one
#: thread (decoding one view costs about 3.2 us per pixel on the project's CPU)
COUNTS = {64: (16, 8), 224: (16, 8), 512: (16, 8), 768: (8, 4), 1024: (6, 3), 2048: (2, 1), 4096: (1, 0),
          6000: (0, 1)}
NATIVE_COUNT = 4
QUICK_SIZES = (64, 224, 512)
QUICK_COUNTS = {64: (3, 2), 224: (3, 2), 512: (2, 1)}
VIEWS = (View.FULL, View.SHIELDED, View.STRONG)
TARGET_PREPS = ("short224", "short336", "short448", "squash224")
EXTRAS = ("jpeg75", "webp75", "half", "tiles2x2")
JUDGES = ("effnet-lite2", "judge-scratch")
OUT = Path("results/shield-geometry.json")  # the shipped weights' results and page
DOCS = Path("docs/shield-geometry.md")


def labelled_image(path: Path, long_side: int) -> np.ndarray:
    """An Imagenette image as a 3:2 landscape of ``long_side``: centre crop of its rows to 3:2, then
    Pillow bicubic to ``long_side x round(2 long_side / 3)``."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    ch = min(h, round(w * 2 / 3))
    top = (h - ch) // 2
    im = im.crop((0, top, w, top + ch))
    size = (long_side, max(1, round(long_side * 2 / 3)))
    return np.asarray(im if im.size == size else im.resize(size, Image.BICUBIC))


def unlabelled_image(path: Path, long_side: int | None) -> np.ndarray:
    """A photo with its long side resized to ``long_side`` (Pillow bicubic, aspect kept; None: native)."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    if long_side is not None:
        w, h = im.size
        s = long_side / max(w, h)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        if size != im.size:
            im = im.resize(size, Image.BICUBIC)
    return np.asarray(im)


def _tensor(px: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(px, dtype=np.uint8)).permute(2, 0, 1)[None].float().div_(255)


class Indexers:
    """The target and the judges, with their class embeddings (10 Imagenette classes, 1000 ImageNet)."""

    def __init__(self, judges: tuple[str, ...] = JUDGES) -> None:
        from psic_lab.vlp import load_vlp
        from psic_lab.vlp.text import imagenet_classes, read_class_file

        mapping = read_class_file(ROOT / "psic_lab/vlp/data/imagenette_classes.tsv")
        self.wnids = list(mapping)
        names10 = [mapping[w] for w in self.wnids]
        _, names1000 = imagenet_classes()
        self.target = load_vlp("psic-vlp-mini")
        self.emb10 = {"target": self.target.class_embeddings(names10)}
        # 1000-way: one prompt per class (8 x 1000 MiniLM passes would cost minutes on one thread)
        self.emb1000 = {"target": self.target.class_embeddings(list(names1000), PROMPT_1000)}
        self.judges = {j: load_vlp(j) for j in judges}
        for j, v in self.judges.items():
            self.emb10[j] = v.class_embeddings(names10)
            if hasattr(v, "logits"):
                continue
            same_text = getattr(v, "text", None) is not None and type(v.text) is type(self.target.text)
            self.emb1000[j] = (self.emb1000["target"] if same_text
                               else v.class_embeddings(list(names1000), PROMPT_1000))

    def prepare(self, px: np.ndarray, extras: bool) -> dict[str, torch.Tensor]:
        """What each indexer's tower gets from one image: ``{"<model>/<prep>": [k, 3, S, S]}`` (small tensors,
        so that the towers run batched later, :meth:`read`)."""
        from psic_lab.vlp import preprocess as pp

        x = _tensor(px)
        out = {f"target/{p}": pp.VARIANTS[p](x) for p in TARGET_PREPS}
        for j in self.judges:
            out[f"{j}/short224"] = out["target/short224"]
        if extras:
            for e in EXTRAS:
                out[f"target/{e}"] = pp.indexer(e if e == "tiles2x2" else f"{e}+short224")(x)
        return out

    @torch.no_grad()
    def read(self, prepared: list[dict[str, torch.Tensor]], batch: int = 16) -> list[dict]:
        """Run the towers on :meth:`prepare`'s outputs of several images: per image
        ``{"<model>/<prep>": (top1_10 list, top1_1000 list)}`` (a list entry per tile) and the retrieval
        embeddings ``emb/target`` and ``emb/<lite judge>`` (after short224)."""
        from psic_lab.vlp import preprocess as pp
        from psic_lab.vlp.base import normalise
        from psic_lab.vlp.mini import LITE_MEAN, LITE_STD

        results: list[dict] = [{} for _ in prepared]
        for name in dict.fromkeys(k for d in prepared for k in d):
            who = [i for i, d in enumerate(prepared) if name in d]
            xs = [prepared[i][name] for i in who]
            sizes = [len(x) for x in xs]
            xb = torch.cat(xs)
            model = name.split("/")[0]
            p10, p1000, embs = [], [], []
            for x in xb.split(batch):
                if model == "target":
                    z = pp.embed_native(self.target, x)
                    p10.append((z @ self.emb10["target"].t()).argmax(1))
                    p1000.append((z @ self.emb1000["target"].t()).argmax(1))
                    embs.append(z)
                    continue
                v = self.judges[model]
                if hasattr(v, "logits"):  # an ImageNet classifier: one forward gives logits and pooled features
                    xi = normalise(pp.resize(x, (v.image_size, v.image_size)), LITE_MEAN, LITE_STD)
                    feats = v.backbone.extract_features(xi).mean(dim=(-2, -1))
                    logits = v.backbone._fc(feats)
                    p10.append((logits.softmax(-1) @ self.emb10[model].t()).argmax(1))
                    p1000.append(logits.argmax(1))
                    embs.append(torch.nn.functional.normalize(feats, dim=-1))
                else:
                    z = v.encode_image(x)
                    p10.append((z @ self.emb10[model].t()).argmax(1))
                    p1000.append((z @ self.emb1000[model].t()).argmax(1))
                    embs.append(z)
            a10, a1000, e = torch.cat(p10).tolist(), torch.cat(p1000).tolist(), torch.cat(embs)
            o = 0
            for i, n in zip(who, sizes, strict=True):
                results[i][name] = (a10[o : o + n], a1000[o : o + n])
                if name == "target/short224":
                    results[i]["emb/target"] = e[o]
                elif name.endswith("/short224") and hasattr(self.judges[model], "logits"):
                    results[i][f"emb/{model}"] = e[o]
                o += n
        return results


def measure_image(px: np.ndarray, model_id: str, key: bytes, quality: int, idx: Indexers, extras: bool,
                  per_photo=None) -> dict:
    """Code one image, decode every view, prepare each for every indexer (:meth:`Indexers.prepare`) and
    score its quality; only the indexers' small inputs are kept (:func:`read_records` runs the towers).
    With ``per_photo`` (a :class:`psic_lab.evaluation.per_photo.PerPhoto`) the shield views are instead the full
    view plus a residual optimised for this photo without labels (:mod:`psic_lab.evaluation.per_photo`), the
    prototype of a per-photo shield; its optimisation time counts as the view's decode time."""
    from psic_cli import codec
    from psic_lab.evaluation.metrics import grid_score_parts, ms_ssim, psnr

    rec: dict = {"size": [int(px.shape[1]), int(px.shape[0])]}
    rec["original"] = idx.prepare(px, extras=False)
    t0 = time.perf_counter()
    data = codec.encode_pixels(np.ascontiguousarray(px), model_id, quality)
    rec["encode_s"] = time.perf_counter() - t0
    rec["bpp"] = len(data) * 8 / (px.shape[0] * px.shape[1])
    full = None
    for v in VIEWS:
        t0 = time.perf_counter()
        if per_photo and v != View.FULL:
            rms = per_photo.rms_for(str(v), px, full)
            out = per_photo.view(full, rms)
        else:
            out = codec.decode(data, key if v.needs_key else None, v).pixels
        rec[f"decode_s/{v}"] = time.perf_counter() - t0
        rec[v] = idx.prepare(out, extras and v == View.STRONG)
        q = {"psnr": psnr(px, out), "ms_ssim": ms_ssim(px, out)}
        if v == View.FULL:
            full = out
            q.update({f"{k}_vs_original": s for k, s in grid_score_parts(out, px).items()})
        else:
            q.update(grid_score_parts(out, full))
            if per_photo:
                q["residual_rms"] = rms
        rec[f"quality/{v}"] = q
        del out
    return rec


def plan_sizes(sizes, counts: dict, native_count: int) -> list[tuple[str, int | None, int, int]]:
    """``(name, long side or None for native, labelled, unlabelled)`` per size to measure, the costliest first
    (when the time budget runs out, the small sizes get fewer images instead of the large ones none); a size
    with no image planned (``--native-count 0``) is left out."""
    plan = [(str(s), s, *counts.get(s, (0, 0))) for s in sizes] + [("native", None, 0, native_count)]
    return sorted((e for e in plan if e[2] + e[3] > 0), key=lambda e: -(e[1] or 768))


def read_records(idx: Indexers, recs: list[dict]) -> None:
    """Replace the prepared tensors of ``recs`` (original and each view) by the indexers' readings."""
    keys = ("original", *VIEWS)
    flat = [r[k] for r in recs for k in keys if isinstance(next(iter(r[k].values()), None), torch.Tensor)]
    read = iter(idx.read(flat))
    for r in recs:
        for k in keys:
            if isinstance(next(iter(r[k].values()), None), torch.Tensor):
                r[k] = next(read)


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def _r1(queries: torch.Tensor, gallery: torch.Tensor) -> float | None:
    """Share of queries ``i`` whose nearest gallery item (cosine) is item ``i``."""
    if len(queries) == 0:
        return None
    own = (queries @ gallery.t()).argmax(1) == torch.arange(len(queries))
    return float(own.float().mean())


def summarise(recs: list[dict], labels: list[int], labelled: list[bool], gallery: dict[str, torch.Tensor],
              judges: tuple[str, ...]) -> dict:
    """Aggregate one size's per-image records (``labels[i]`` is the Imagenette class index, or -1)."""
    lab = [r for r, is_l in zip(recs, labelled, strict=True) if is_l]
    y = [label for label, is_l in zip(labels, labelled, strict=True) if is_l]
    unl = [r for r, is_l in zip(recs, labelled, strict=True) if not is_l]
    res: dict = {"labelled_images": len(lab), "unlabelled_images": len(unl),
                 "sizes": sorted({f"{r['size'][0]}x{r['size'][1]}" for r in recs}),
                 "bpp": _mean(r["bpp"] for r in recs),
                 "seconds": {"encode": _mean(r["encode_s"] for r in recs),
                             **{f"decode_{v}": _mean(r[f"decode_s/{v}"] for r in recs) for v in VIEWS}}}
    views = ("original", *VIEWS)
    models = [f"target/{p}" for p in TARGET_PREPS] + [f"{j}/short224" for j in judges]
    if lab:
        top1: dict = {}
        for m in models:
            top1[m] = {v: _mean(r[v][m][0][0] == yi for r, yi in zip(lab, y, strict=True)) for v in views}
        for e in EXTRAS:
            top1[f"target/{e}"] = {}
            for v in (View.STRONG,):
                hits = [p == yi for r, yi in zip(lab, y, strict=True) for p in r[v][f"target/{e}"][0]]
                top1[f"target/{e}"][v] = _mean(hits)
        res["top1"] = top1
    if unl:
        agree: dict = {}
        for m in models:
            agree[m] = {v: _mean(r[v][m][1][0] == r["original"][m][1][0] for r in unl) for v in VIEWS}
            agree[m]["original_self"] = 1.0
        res["agreement_1000way"] = agree
    ret: dict = {"gallery": {k: int(g.shape[0]) for k, g in gallery.items()}, "queries": len(recs)}
    for k, g in gallery.items():
        ret[k] = {v: _r1(torch.stack([r[v][f"emb/{k}"] for r in recs]), g) for v in VIEWS}
    res["retrieval_r1"] = ret
    qual: dict = {}
    for v in VIEWS:
        qs = [r[f"quality/{v}"] for r in recs]
        qual[v] = {k: _mean(q.get(k) for q in qs) for k in qs[0]}
        if v != View.FULL:
            qual[v]["psnr_gap_to_full"] = _mean(q["psnr"] - r[f"quality/{View.FULL}"]["psnr"] for q, r in zip(qs, recs,
                                                                                                       strict=True))
    res["quality"] = qual
    return res


def distractor_embeddings(idx: Indexers, distractors: list[Path], side: int) -> dict[str, torch.Tensor]:
    """Embeddings (target; Lite2 pooled features) of distractor originals prepared at long side ``side``."""
    from psic_lab.vlp import preprocess as pp
    from psic_lab.vlp.mini import lite_pooled_features

    out: dict[str, list[torch.Tensor]] = {"target": [], "effnet-lite2": []}
    lite = idx.judges.get("effnet-lite2")
    with torch.no_grad():
        for chunk in range(0, len(distractors), 16):
            x = torch.cat([pp.short224(_tensor(labelled_image(p, side))) for p in distractors[chunk : chunk + 16]])
            out["target"].append(idx.target.encode_image(x))
            if lite is not None:
                out["effnet-lite2"].append(torch.nn.functional.normalize(
                    lite_pooled_features(lite.backbone, x, lite.image_size), dim=-1))
    return {k: torch.cat(v) for k, v in out.items() if v}


def build_gallery(recs: list[dict], distractors: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Retrieval galleries: the decoded images' own originals first (item ``i`` is query ``i``'s), then
    distractor originals up to ``n`` items."""
    out = {}
    for k, d in distractors.items():
        own = torch.stack([r["original"][f"emb/{k}"] for r in recs])
        out[k] = torch.cat([own, d[: max(0, n - len(recs))]])
    return out


def _interleave(*lists: list) -> list:
    out = []
    for i in range(max(len(x) for x in lists)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def run(args: argparse.Namespace) -> dict:
    from psic_cli.keys import read_key
    from psic_cli.zoo import load_model
    from psic_lab.vlp.data_utils import list_images, list_labelled_folder

    t_start = time.time()
    deadline = t_start + 60 * args.max_minutes if args.max_minutes else math.inf
    key = read_key(args.key)
    sizes = QUICK_SIZES if args.quick else tuple(args.sizes)
    counts = QUICK_COUNTS if args.quick else {**COUNTS, **args.counts}
    native_count = 2 if args.quick else args.native_count
    gallery_n = 8 if args.quick else args.gallery
    n_lab = max(counts.get(s, (0, 0))[0] for s in sizes)
    files, wnids = list_labelled_folder(args.val, n_lab + gallery_n)
    # a class-balanced order, so that the first k images of any size cover the classes evenly
    by_class: dict[str, list[Path]] = {}
    for f, w in zip(files, wnids, strict=True):
        by_class.setdefault(w, []).append(f)
    order = _interleave(*by_class.values())
    lab_files, distractors = order[:n_lab], order[n_lab:]
    unl_files = _interleave(list_images(args.kodak), list_images(args.bsds))
    res: dict = {
        "command": "python benchmarks/shield_geometry.py " + " ".join(args.argv),
        "git_revision": _git_revision(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "torch_threads": torch.get_num_threads()},
        "quality": args.quality,
        "labelled_set": f"{args.val} (centre crop to 3:2, bicubic to each long side)",
        "unlabelled_set": f"{args.kodak} + {args.bsds} (interleaved; long side rescaled, aspect kept)",
        "target": "psic-vlp-mini", "judges": list(args.judges),
        "preprocessings": list(TARGET_PREPS), "strong_extras": list(EXTRAS),
        "gallery_max_side": args.gallery_max_side,
        "sizes": {}, "missing": [],
    }
    replaced: dict[str, dict] = {}
    if args.resume and args.out.exists():  # keep what an earlier run measured; measure only what it missed
        old = json.loads(args.out.read_text())
        res["sizes"] = old["sizes"]
        # --replace: measure these sizes again (with --counts); the new one is kept only if it has more images
        replaced = {k: res["sizes"].pop(k) for k in args.replace if k in res["sizes"]}
        res["command"] = old["command"] + " ; then " + res["command"]
        res["git_revision"] = old["git_revision"] + " ; then " + str(res["git_revision"])
        res["seconds_before"] = old.get("seconds", 0) + old.get("seconds_before", 0)
    with tempfile.TemporaryDirectory() as tmp:
        from psic_lab.evaluation.weights import install_weights

        model_id = install_weights(args.weights, Path(tmp))
        lm = load_model(model_id)
        res["model"] = {"id": model_id, "weights": str(args.weights), "weights_sha256": lm.weights_sha256,
                        **{k: lm.info.metadata.get(k) for k in ("steps", "stage", "shield_levels")}}
        idx = Indexers(tuple(args.judges))
        from psic_lab.evaluation import per_photo as pp

        per_photo = pp.from_arguments(args, (str(View.SHIELDED), str(View.STRONG)))
        if per_photo:
            res["per_photo"] = per_photo.record()
        label_index = {w: i for i, w in enumerate(idx.wnids)}
        wnid_of = dict(zip(files, wnids, strict=True))
        plan = plan_sizes(sizes, counts, native_count)
        dcache: dict[int, dict[str, torch.Tensor]] = {}
        for name, side, nl, nu in plan:
            if name in res["sizes"]:
                continue
            if time.time() > deadline:
                res["missing"].append(name)
                continue
            t0 = time.time()
            recs, labels, is_lab = [], [], []
            jobs = [(f, True) for f in lab_files[:nl]] + [(f, False) for f in unl_files[:nu]]
            jobs = _interleave([j for j in jobs if j[1]], [j for j in jobs if not j[1]])
            for f, is_l in jobs:
                if time.time() > deadline and recs:
                    break
                px = labelled_image(f, side) if is_l else unlabelled_image(f, side)
                recs.append(measure_image(px, model_id, key, args.quality, idx, extras=is_l, per_photo=per_photo))
                labels.append(label_index[wnid_of[f]] if is_l else -1)
                is_lab.append(is_l)
                del px
                if len(recs) % args.chunk == 0:  # run the towers batched, a chunk of images at a time
                    read_records(idx, recs[-args.chunk :])
            read_records(idx, recs[len(recs) - len(recs) % args.chunk :])
            dside = min(side or args.gallery_max_side, args.gallery_max_side)
            if dside not in dcache:
                dcache[dside] = distractor_embeddings(idx, distractors[:gallery_n], dside)
            gallery = build_gallery(recs, dcache[dside], gallery_n)
            entry = summarise(recs, labels, is_lab, gallery, tuple(args.judges))
            entry["planned"] = {"labelled": nl, "unlabelled": nu}
            entry["seconds"]["wall"] = time.time() - t0
            res["sizes"][name] = entry
            print(f"{name}: {entry['labelled_images']}+{entry['unlabelled_images']} images in "
                  f"{entry['seconds']['wall']:.0f} s", file=sys.stderr, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=2))  # what is measured so far survives an interruption
    for k, e in replaced.items():
        new = res["sizes"].get(k)
        n_new = new["labelled_images"] + new["unlabelled_images"] if new else -1
        if n_new < e["labelled_images"] + e["unlabelled_images"]:
            res["sizes"][k] = e
    order = [str(s) for s in sorted({*sizes, *(int(k) for k in res["sizes"] if k.isdigit())})]
    order.insert(min(2, len(order)), "native")
    res["sizes"] = {k: res["sizes"][k] for k in order if k in res["sizes"]}
    res["missing"] = [k for k in order if k in res["missing"]]
    res["seconds"] = time.time() - t_start
    return res


def _git_revision() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        return r.stdout.strip() + ("-dirty" if dirty else "") if r.returncode == 0 else None
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- report
def pct(v: float | None) -> str:
    """``v`` as a percentage, or "n/a" (never nan)."""
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.0%}"


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def _size_label(name: str, e: dict) -> str:
    return f"{name} ({', '.join(e['sizes'])})" if name == "native" else name


def _readme_module():
    """``scripts/update_readme.py`` (not a package), which renders the README block and names the files."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def headline_md(res: dict) -> str:
    """The README block (rendered by ``scripts/update_readme.py``, which pastes it)."""
    return _readme_module().geometry_headline(res)


def report_md(res: dict, command: str | None = None) -> str:
    """``docs/shield-geometry.md``: every table, rendered from the results dict."""
    command = command or res["command"]
    views = ("original", *VIEWS)
    total_s = res.get("seconds", 0) + res.get("seconds_before", 0)
    lines = ["# The shield at every size, through the indexers' preprocessing", "",
             f"Generated by `{command}` (git {res['git_revision']}); raw numbers in "
             f"`{_readme_module().geometry_paths(res)[0]}`.",
             f"Model `{res['model']['id']}` from `{res['model']['weights']}` (sha256 "
             f"`{res['model']['weights_sha256']}`), quality {res['quality']}, "
             f"{res['host']['torch_threads']} torch thread(s); {fmt(total_s, '.0f')} s in all.", "",
             "Labelled: " + res["labelled_set"] + ". Unlabelled: " + res["unlabelled_set"] + ". Every image is "
             "encoded and decoded through `psic_cli.codec` (large ones through the decoder's tiled path). "
             "See `benchmarks/shield_geometry.py` for the exact protocol.", ""]
    if res.get("per_photo"):
        pp = res["per_photo"]
        lines += [f"**Per-photo prototype**: the shielded and strong views are the full view plus a 224x224 residual "
                  f"optimised for each photo without labels ({pp['steps']} Adam steps against "
                  f"{', '.join(pp['against'])}, each model's own top ImageNet class; RMS "
                  + (", ".join(f"{v} {r:g}" for v, r in pp["rms"].items()) + " levels" if "rms" in pp else
                     ", ".join(f"{v} {r:g}" for v, r in pp["budget"].items())
                     + " times the photo's full-view RMS error (mean levels in the quality table)")
                  + ")" + (f", with the embedding cosine to the original at weight {pp['embed_weight']:g} and input "
                           f"diversity at probability {pp['diversity']:g}" if "embed_weight" in pp else "")
                  + ", not the model's decoder views (`psic_lab.evaluation.per_photo`).", ""]
    if res.get("missing"):
        lines += [f"**Not measured** (the run's time budget ran out): {', '.join(res['missing'])}.", ""]
    lines += ["## Images and timings", "", "| long side | image sizes | labelled | unlabelled | planned | bpp | "
              "encode s | decode s (each view) | wall s |", "|---" * 9 + "|"]
    for name, e in res["sizes"].items():
        s = e["seconds"]
        lines.append(f"| {name} | {', '.join(e['sizes'])} | {e['labelled_images']} | {e['unlabelled_images']} | "
                     f"{e['planned']['labelled']}+{e['planned']['unlabelled']} | {fmt(e['bpp'], '.3f')} | "
                     f"{fmt(s['encode'], '.2f')} | {fmt(s['decode_shielded'], '.2f')} | {fmt(s['wall'], '.0f')} |")
    lines += ["", "## Labelled: 10-way zero-shot top-1 (chance 10%)", "",
              "Target `psic-vlp-mini` under each preprocessing (at 336 and 448 its tower runs at that size); the "
              "judges after short224 (then their own resize to 260 / 64 pixels).", "",
              "| long side | indexer | " + " | ".join(views) + " |", "|---" * (2 + len(views)) + "|"]
    for name, e in res["sizes"].items():
        for m, t in e.get("top1", {}).items():
            if m.split("/")[1] in EXTRAS:
                continue
            lines.append(f"| {name} | {m} | " + " | ".join(pct(t.get(v)) for v in views) + " |")
    lines += ["", "## Strong view after re-encoding, downscaling and tiling (target, labelled)", "",
              "JPEG q75 and WebP q75 (Pillow) and a 0.5x downscale, each followed by short224; 2x2 tiles: top-1 "
              "per tile (each tile short224).", "",
              "| long side | after | strong |", "|---|---|---|"]
    for name, e in res["sizes"].items():
        for ex in EXTRAS:
            t = e.get("top1", {}).get(f"target/{ex}")
            if t:
                lines.append(f"| {name} | {ex} | {pct(t[View.STRONG])} |")
    lines += ["", "## Unlabelled: 1000-way top-1 agreement with the original", "",
              "Share of images whose 1000-way top-1 on the view equals the same indexer's top-1 on the original "
              "(target and scratch judge: zero-shot over the 1000 ImageNet class prompts; Lite2: its own head).", "",
              "| long side | indexer | " + " | ".join(VIEWS) + " |", "|---" * (2 + len(VIEWS)) + "|"]
    for name, e in res["sizes"].items():
        for m, a in e.get("agreement_1000way", {}).items():
            lines.append(f"| {_size_label(name, e)} | {m} | " + " | ".join(pct(a.get(v)) for v in VIEWS) + " |")
    lines += ["", "## Image-to-image retrieval R@1", "",
              "Each decoded view (labelled and unlabelled images) is ranked against a gallery of originals at the "
              "same size (its own first, then distractors); R@1 = its own original is the nearest.", "",
              "| long side | queries | gallery | by | " + " | ".join(VIEWS) + " |", "|---" * (4 + len(VIEWS)) + "|"]
    for name, e in res["sizes"].items():
        r = e["retrieval_r1"]
        for k, n in r["gallery"].items():
            lines.append(f"| {name} | {r['queries']} | {n} | {k} | " + " | ".join(pct(r[k][v]) for v in VIEWS) + " |")
    lines += ["", "## Quality against the original", "",
              "PSNR (dB) and MS-SSIM against the original (SSIM below 161 pixels), the PSNR gap to the full view, "
              "and the grid score of (view - full) (`psic_lab.evaluation.metrics.grid_score_parts`: energy at the "
              "harmonics of the decoder's 16- and 8-pixel lattices against the neighbouring frequencies; 1 = no "
              "peak). For the full view the grid columns score (full - original), the codec's own lattice.", "",
              "| long side | view | PSNR | gap to full | MS-SSIM | grid | grid 16 px | grid 8 px |"
              + (" residual RMS |" if res.get("per_photo") else ""),
              "|---" * (9 if res.get("per_photo") else 8) + "|"]
    fixed_rms = res["per_photo"].get("rms", {}) if res.get("per_photo") else None  # a fixed RMS is named once
    for name, e in res["sizes"].items():
        for v in VIEWS:
            q = e["quality"][v]
            sfx = "_vs_original" if v == View.FULL else ""
            lines.append(f"| {_size_label(name, e)} | {v} | {fmt(q['psnr'], '.2f')} | "
                         f"{fmt(q.get('psnr_gap_to_full'), '+.2f')} | {fmt(q['ms_ssim'], '.4f')} | "
                         f"{fmt(q.get('grid' + sfx), '.2f')} | {fmt(q.get('grid16' + sfx), '.2f')} | "
                         f"{fmt(q.get('grid8' + sfx), '.2f')} |"
                         + ("" if fixed_rms is None else f" {fmt(q.get('residual_rms', fixed_rms.get(v)), '.2f')} |"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=ROOT / "weights/psic-sh.safetensors")
    ap.add_argument("--key", type=Path, default=ROOT / "weights/shipped.key")
    ap.add_argument("--val", type=Path, default=Path("../shared/data/imagenette/val"))
    ap.add_argument("--kodak", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--bsds", type=Path, default=Path("../shared/data/bsds500/test"))
    ap.add_argument("--quality", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="long sides (default: %(default)s)")
    ap.add_argument("--counts", nargs="*", default=[], metavar="SIZE:LABELLED:UNLABELLED",
                    help="override the images per size, e.g. 64:12:6")
    ap.add_argument("--native-count", type=int, default=NATIVE_COUNT, help="unlabelled images at native size")
    ap.add_argument("--judges", nargs="*", default=list(JUDGES))
    ap.add_argument("--gallery", type=int, default=100, help="originals per retrieval gallery (default 100)")
    ap.add_argument("--gallery-max-side", type=int, default=512,
                    help="distractor originals are prepared at most this long (default 512; the query's own "
                         "original is always at its size)")
    ap.add_argument("--chunk", type=int, default=16, help="images whose indexer inputs are batched together")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    ap.add_argument("--max-minutes", type=float, default=0, help="stop starting images past this (0: no limit)")
    ap.add_argument("--quick", action="store_true", help="a few images at three sizes (for tests)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the sizes already in --out and measure only the others")
    ap.add_argument("--replace", nargs="*", default=[], metavar="SIZE",
                    help="with --resume: measure these sizes again (kept if the new run has more images)")
    from psic_lab.evaluation.per_photo import add_arguments

    add_arguments(ap)
    ap.add_argument("--render-only", action="store_true", help="only re-render --docs from --out")
    ap.add_argument("--out", type=Path, default=OUT, help=f"results JSON to write (default: {OUT})")
    ap.add_argument("--docs", type=Path, default=None,
                    help=f"markdown page to render (default: {DOCS} when --out is {OUT}, else none, so "
                         "measuring lab weights never overwrites the shipped weights' page)")
    args = ap.parse_args(argv)
    if args.docs is None and args.out == OUT:
        args.docs = DOCS
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.counts = {int(a): (int(b), int(c)) for a, b, c in (x.split(":") for x in args.counts)}
    except ValueError:
        ap.error("--counts takes SIZE:LABELLED:UNLABELLED, e.g. 64:12:6")
    if args.render_only:  # re-render the docs from an existing results file
        if args.docs is None:
            ap.error("--render-only needs --docs when --out is not the default")
        res = json.loads(args.out.read_text())
        args.docs.write_text(report_md(res))
        print(headline_md(res))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    if args.docs is not None:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(report_md(res))
    print(headline_md(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
