"""psic's full view against the codecs people use, all measured in one run (not a test).

    python benchmarks/codec_compare.py measure --weights lab_weights/rd/psic-msh2.safetensors
    python benchmarks/codec_compare.py measure --large --weights ...   # adds the 6000x4000 encode/decode
    python benchmarks/codec_compare.py render                          # JSON -> docs/codec-compare.md

``measure`` writes ``results/codec-compare.json`` only:

- rate-distortion on the folder: psic's full view through its real file bytes at every quality, and
  Pillow's JPEG, WebP (method 6) and AVIF (libavif, default speed) over a range of qualities, measured on
  the same images in the same run; BD-rates (PSNR, over the overlapping range) against each, and against
  CompressAI's published Kodak curves (reference data, below);
- speed: in-process decode (and encode) of one 768x512 image against CompressAI's ``bmshj2018_hyperprior``
  (quality 3, random weights, the same input) built in the same run, interleaved, as a ratio;
- with ``--large``: a 6000x4000 encode and decode in fresh processes, wall time, user/system CPU time and
  peak memory; and seams: a 1536x1024 file decoded in tiles against decoded whole.

``render`` turns that JSON into ``docs/codec-compare.md``; it never measures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# CompressAI's published results on Kodak (results/image/kodak/compressai-*_mse_cpu.json in its repository)
COMPRESSAI_PUBLISHED = {
    "bmshj2018-hyperprior": {
        "bpp": [0.1313, 0.2089, 0.3199, 0.4784, 0.6687, 0.9388, 1.2592, 1.6602],
        "psnr": [27.58, 29.20, 30.97, 32.84, 34.53, 36.74, 38.58, 40.56],
    },
    "mbt2018-mean": {
        "bpp": [0.1239, 0.1980, 0.3072, 0.4606, 0.6617, 0.9144, 1.2342, 1.6191],
        "psnr": [27.70, 29.36, 31.13, 32.95, 34.97, 36.91, 38.84, 40.63],
    },
}
JPEG_QUALITIES = [10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95]
WEBP_QUALITIES = [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
AVIF_QUALITIES = [10, 20, 30, 40, 50, 60, 70, 80, 90]
RESULTS = Path("results/codec-compare.json")
DOC = Path("docs/codec-compare.md")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def bd_rate(anchor: dict, test: dict) -> float | None:
    """BD-rate (%) of ``test`` against ``anchor`` in PSNR; None where the curves do not overlap."""
    from scipy.interpolate import PchipInterpolator

    ra, da = np.log(np.asarray(anchor["bpp"])), np.asarray(anchor["psnr"])
    rb, db = np.log(np.asarray(test["bpp"])), np.asarray(test["psnr"])
    lo, hi = max(da.min(), db.min()), min(da.max(), db.max())
    if hi - lo < 0.1:
        return None
    ia, ib = np.argsort(da), np.argsort(db)
    fa, fb = PchipInterpolator(da[ia], ra[ia]), PchipInterpolator(db[ib], rb[ib])
    return float((np.exp((fb.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo)) - 1) * 100)


def _pillow(img: np.ndarray, fmt: str, q: int) -> tuple[float, float]:
    buf = io.BytesIO()
    kw: dict = {"quality": q}
    if fmt == "WEBP":
        kw["method"] = 6
    Image.fromarray(img).save(buf, fmt, **kw)
    dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return len(buf.getvalue()) * 8 / (img.shape[0] * img.shape[1]), _psnr(img, dec)


def _mean(points: list[list[tuple[float, float]]]) -> dict:
    arr = np.asarray(points).mean(0)
    return {"bpp": arr[:, 0].round(5).tolist(), "psnr": arr[:, 1].round(4).tolist()}


def curve_name(effort: int) -> str:
    """The results' name of psic's full-view curve at an encoder ``effort``."""
    return "psic-full" if effort == 0 else f"psic-full-effort{effort}"


def measure_rd(folder: Path, model_id: str, key: bytes, limit: int | None, efforts: tuple[int, ...] = (0,),
               skip: int = 0) -> dict:
    from psic_cli import codec
    from psic_cli.zoo import load_model

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[skip:][:limit]
    nq = load_model(model_id).model.cfg.qualities
    ours = [curve_name(e) for e in efforts]
    rows: dict[str, list] = {**{k: [] for k in ours}, "jpeg": [], "webp": [], "avif": []}
    encode_s = {k: 0.0 for k in ours}
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        data = p.read_bytes()
        for effort, name in zip(efforts, ours, strict=True):
            pts = []
            for q in range(1, nq + 1):
                t = time.perf_counter()
                enc = codec.encode(data, p.name, model_id, q, effort=effort, key=key).data
                encode_s[name] += time.perf_counter() - t
                dec = codec.decode(enc, key)
                pts.append((len(enc) * 8 / (img.shape[0] * img.shape[1]), _psnr(img, dec.pixels)))
            rows[name].append(pts)
            print(f"{p.name} ({name}): " + ", ".join(f"q{i + 1} {b:.3f} bpp {d:.2f} dB"
                                                     for i, (b, d) in enumerate(pts)), file=sys.stderr, flush=True)
        rows["jpeg"].append([_pillow(img, "JPEG", q) for q in JPEG_QUALITIES])
        rows["webp"].append([_pillow(img, "WEBP", q) for q in WEBP_QUALITIES])
        rows["avif"].append([_pillow(img, "AVIF", q) for q in AVIF_QUALITIES])
    curves = {k: _mean(v) for k, v in rows.items()}
    spi = {name: encode_s[name] / (len(paths) * nq) for name in ours}
    return {"first_image": skip, "image_names": [p.name for p in paths],
            **rd_summary(curves, dict(zip(ours, efforts, strict=True)), spi, len(paths))}


def rd_summary(curves: dict, efforts: dict[str, int], encode_s_per_image: dict[str, float], images: int) -> dict:
    """BD-rates and top points of psic's curves (``efforts``: curve name -> effort, the headline first)."""
    ours = list(efforts)
    refs = {**{k: curves[k] for k in ("jpeg", "webp", "avif")},
            **{f"compressai-{k} (published)": v for k, v in COMPRESSAI_PUBLISHED.items()}}
    first = curves[ours[0]]
    res = {
        "images": images,
        "curves": curves,
        "bd_rate_psnr_percent": {k: bd_rate(v, first) for k, v in refs.items()},
        "top_quality_psnr": first["psnr"][-1],
        "top_quality_bpp": first["bpp"][-1],
    }
    if list(efforts.values()) != [0]:  # the encoder's search: each effort's curve against the same references
        res["efforts"] = {name: {"effort": e, "encode_s_per_image": round(encode_s_per_image[name], 3),
                                 "bd_rate_psnr_percent": {k: bd_rate(v, curves[name]) for k, v in refs.items()},
                                 "top_quality_psnr": curves[name]["psnr"][-1],
                                 "top_quality_bpp": curves[name]["bpp"][-1]}
                          for name, e in efforts.items()}
    return res


def merge(parts: list[Path], out: Path) -> dict:
    """One result from ``measure`` runs on disjoint images of one folder (``--skip``/``--limit``) with the same
    weights and efforts: every curve is the image-weighted mean of the parts' curves (each part's curve is a
    mean over its images), and the BD-rates are computed again from the merged curves.  Speed comes from the
    first part."""
    res = [json.loads(p.read_text()) for p in parts]
    first = res[0]
    for r in res[1:]:
        if r["model"]["weights_sha256"] != first["model"]["weights_sha256"]:
            raise SystemExit("merge: the parts were measured on different weights")
        if set(r["rd"]["curves"]) != set(first["rd"]["curves"]) or r["rd"]["folder"] != first["rd"]["folder"]:
            raise SystemExit("merge: the parts measured different curves or folders")
    spans = sorted((r["rd"].get("first_image", 0), r["rd"]["images"]) for r in res)
    if any(a + n > b for (a, n), (b, _) in zip(spans, spans[1:], strict=False)):
        raise SystemExit("merge: the parts' images overlap")
    n = sum(r["rd"]["images"] for r in res)
    curves = {k: {m: [round(sum(r["rd"]["curves"][k][m][i] * r["rd"]["images"] for r in res) / n, 5)
                      for i in range(len(first["rd"]["curves"][k][m]))] for m in ("bpp", "psnr")}
              for k in first["rd"]["curves"]}
    eff = first["rd"].get("efforts") or {curve_name(0): {"effort": 0, "encode_s_per_image": 0.0}}
    spi = {k: sum(r["rd"].get("efforts", eff)[k]["encode_s_per_image"] * r["rd"]["images"] for r in res) / n
           for k in eff}
    rd = {**rd_summary(curves, {k: v["effort"] for k, v in eff.items()}, spi, n), "folder": first["rd"]["folder"]}
    merged = {"command": "python benchmarks/codec_compare.py merge " + " ".join(map(str, parts)) + f" --out {out}",
              "git_revision": first.get("git_revision"), "model": first["model"], "host": first.get("host"),
              "parts": [{"command": r["command"], "git_revision": r.get("git_revision"),
                         "first_image": r["rd"].get("first_image", 0), "images": r["rd"]["images"]} for r in res],
              "speed": first["speed"], "rd": rd, "load_average_at_end": first["load_average_at_end"]}
    out.write_text(json.dumps(merged, indent=2) + "\n")
    return merged


def measure_speed(model_id: str, key: bytes, image: Path, repeats: int) -> dict:
    """Interleaved in-process timings of psic and CompressAI's hyperprior on the same 768x512 input."""
    import torch

    from psic_cli import codec
    from psic_cli._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from compressai.zoo import bmshj2018_hyperprior

    torch.manual_seed(0)
    ref = bmshj2018_hyperprior(quality=3, pretrained=False).eval()
    ref.update(force=True)
    img = np.asarray(Image.open(image).convert("RGB"))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    data = image.read_bytes()
    times: dict[str, list[float]] = {"psic_encode": [], "psic_decode": [], "compressai_compress": [],
                                     "compressai_decompress": []}
    psic_bytes = codec.encode(data, image.name, model_id, 3).data
    codec.decode(psic_bytes, key)  # warm-up: model load, runtime copies
    with torch.no_grad():
        c = ref.compress(x)
        ref.decompress(c["strings"], c["shape"])
        for _ in range(repeats):
            t = time.perf_counter()
            codec.encode(data, image.name, model_id, 3)
            times["psic_encode"].append(time.perf_counter() - t)
            t = time.perf_counter()
            codec.decode(psic_bytes, key)
            times["psic_decode"].append(time.perf_counter() - t)
            t = time.perf_counter()
            c = ref.compress(x)
            times["compressai_compress"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ref.decompress(c["strings"], c["shape"])
            times["compressai_decompress"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "image": image.name,
        "size": [int(img.shape[1]), int(img.shape[0])],
        "repeats": repeats,
        "median_s": med,
        "decode_ratio_psic_over_compressai": med["psic_decode"] / med["compressai_decompress"],
        "encode_ratio_psic_over_compressai": med["psic_encode"] / med["compressai_compress"],
        "threads": torch.get_num_threads(),
    }


def _timed_child(cmd: list[str]) -> dict:
    """Run ``cmd`` in a fresh process; wall, user and system seconds and peak memory of that child alone
    (``os.wait4``: ``RUSAGE_CHILDREN`` would report the largest of every child so far)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {stderr.strip()[-500:]}")
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "peak_rss_gib": usage.ru_maxrss / 2**20}


def measure_large(model_id: str, key_file: Path, image: Path, tmp: Path) -> dict:
    """A 6000x4000 photo (the example upscaled) encoded and decoded by ``psic`` in fresh processes."""
    big = tmp / "big.png"
    Image.open(image).convert("RGB").resize((6000, 4000), Image.BICUBIC).save(big, compress_level=1)
    psic = [sys.executable, "-m", "psic_cli"]
    enc = _timed_child(psic + ["encode", str(big), "-o", str(tmp / "big.psic"), "-m", model_id, "-q", "3", "--force"])
    dec = _timed_child(psic + ["decode", str(tmp / "big.psic"), "--key", str(key_file), "-o", str(tmp / "out.png"),
                               "--force"])
    return {"size": [6000, 4000], "encode": enc, "decode": dec}


def decode_in_tiles(model_id: str, data: bytes, key: bytes | None, tiles: dict[str, int]) -> dict[str, np.ndarray]:
    """``data`` decoded in process once per entry of ``tiles`` (name -> the model's ``tile_latent``; a huge value
    decodes whole), the model's own tiling restored afterwards."""
    from psic_cli import codec
    from psic_cli.zoo import load_model

    model = load_model(model_id).model
    default = model.tile_latent
    out = {}
    try:
        for name, tile in tiles.items():
            model.tile_latent = tile
            model.reset_runtime()
            out[name] = codec.decode(data, key=key).pixels
    finally:
        model.tile_latent = default
        model.reset_runtime()
    return out


def measure_seams(model_id: str, key: bytes, image: Path, size: tuple[int, int] = (1536, 1024)) -> dict:
    """Seams: one file decoded whole and in tiles (the decoder's default tiles, and 16-latent ones, which put
    a tile border every 256 pixels), in process; the largest pixel difference of each against the whole."""
    from psic_cli import codec
    from psic_cli.zoo import load_model

    img = np.asarray(Image.open(image).convert("RGB").resize(size, Image.BICUBIC))
    data = codec.encode_pixels(img, model_id, 3)
    default = load_model(model_id).model.tile_latent
    out = decode_in_tiles(model_id, data, key, {"whole": 10**6, "default_tiles": default, "tiles_16": 16})
    whole = out["whole"].astype(np.int16)
    diff = {k: int(np.abs(out[k].astype(np.int16) - whole).max()) for k in ("default_tiles", "tiles_16")}
    return {"size": list(size), "default_tile_latents": default, "max_abs_diff": diff}


def measure(args: argparse.Namespace) -> None:
    from psic_cli.keys import read_key

    key = read_key(args.key)
    res: dict = {"command": "python benchmarks/codec_compare.py " + " ".join(sys.argv[1:])}
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        res["git_revision"] = git.stdout.strip()
    except OSError:
        res["git_revision"] = None
    with tempfile.TemporaryDirectory() as tmp:
        from psic_lab.evaluation.weights import install_weights

        model_id = install_weights(args.weights, Path(tmp)) if args.weights else args.model
        from psic_cli.zoo import load_model

        lm = load_model(model_id)
        res["model"] = {"id": model_id, "weights_sha256": lm.weights_sha256,
                        **{k: lm.info.metadata.get(k) for k in ("steps", "training_data", "stage")}}
        res["host"] = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
        files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() == ".png")
        res["speed"] = measure_speed(model_id, key, files[0], args.repeats)
        print(json.dumps(res["speed"]), file=sys.stderr)
        if not args.skip_rd:
            res["rd"] = measure_rd(args.folder, model_id, key, args.limit, tuple(args.effort), args.skip)
            res["rd"]["folder"] = str(args.folder)
        if args.large:
            res["large"] = measure_large(model_id, args.key, files[0], Path(tmp))
            res["large"]["seams"] = measure_seams(model_id, key, files[0])
        res["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None or not np.isfinite(v) else format(v, spec)


def render(results: Path) -> str:
    res = json.loads(results.read_text())
    m = res["model"]
    out = ["# psic against other codecs", "",
           f"Generated from `results/{results.name}` (measured by `{res['command']}` at revision "
           f"`{(res.get('git_revision') or '?')[:10]}`); do not edit by hand.", "",
           f"Model `{m['id']}` ({m.get('stage')} weights, {m.get('steps')} training steps).", ""]
    if "parts" in res:
        out += ["Measured in parts on disjoint images, then merged:", ""]
        out += [f"- images {p['first_image'] + 1} to {p['first_image'] + p['images']}: `{p['command']}` at revision "
                f"`{(p.get('git_revision') or '?')[:10]}`" for p in res["parts"]]
        out.append("")
    if "rd" in res:
        rd = res["rd"]
        out += [f"## Rate-distortion on {rd['folder']} ({rd['images']} images, RGB PSNR)", "",
                f"Top quality: {_fmt(rd['top_quality_psnr'], '.2f')} dB at {_fmt(rd['top_quality_bpp'], '.3f')} bpp.",
                "", "| against | BD-rate of psic's full view (PSNR) |", "|---|---|"]
        out += [f"| {k} | {_fmt(v, '+.1f')}% |" for k, v in rd["bd_rate_psnr_percent"].items()]
        out += ["", "Negative means psic needs fewer bytes for the same PSNR; — means the curves do not overlap.", "",
                "| quality | bpp | PSNR (dB) |", "|---|---|---|"]
        c = rd["curves"]["psic-full"]
        out += [f"| {i + 1} | {b:.3f} | {p:.2f} |" for i, (b, p) in enumerate(zip(c["bpp"], c["psnr"], strict=True))]
        out.append("")
        if "efforts" in rd:
            names = list(rd["efforts"])
            out += ["### The encoder's search (`psic encode --effort N`)", "",
                    "Same images, same decoder; each curve's BD-rate against the same references, and its mean encode "
                    "seconds per image and quality (one process, the machine's threads).", "",
                    "| against | " + " | ".join(f"effort {rd['efforts'][n]['effort']}" for n in names) + " |",
                    "|---|" + "---|" * len(names)]
            refs = list(rd["efforts"][names[0]]["bd_rate_psnr_percent"])
            out += [f"| {r} | " + " | ".join(f"{_fmt(rd['efforts'][n]['bd_rate_psnr_percent'][r], '+.1f')}%"
                                            for n in names) + " |" for r in refs]
            out += ["| top quality (dB at bpp) | " + " | ".join(
                f"{rd['efforts'][n]['top_quality_psnr']:.2f} at {rd['efforts'][n]['top_quality_bpp']:.3f}"
                for n in names) + " |",
                    "| encode s per image and quality | " + " | ".join(
                f"{rd['efforts'][n]['encode_s_per_image']:.2f}" for n in names) + " |", "",
                    "| quality | " + " | ".join(f"effort {rd['efforts'][n]['effort']}: bpp, PSNR" for n in names)
                    + " |", "|---|" + "---|" * len(names)]
            for i in range(len(rd["curves"][names[0]]["bpp"])):
                out.append(f"| {i + 1} | " + " | ".join(
                    f"{rd['curves'][n]['bpp'][i]:.3f}, {rd['curves'][n]['psnr'][i]:.2f}" for n in names) + " |")
            out.append("")
    s = res["speed"]
    out += [f"## Speed ({s['size'][0]}x{s['size'][1]}, in process, median of {s['repeats']}, {s['threads']} threads)",
            "", "| what | seconds |", "|---|---|"]
    out += [f"| {k} | {v:.3f} |" for k, v in s["median_s"].items()]
    out += ["", f"Decode: psic takes {s['decode_ratio_psic_over_compressai']:.2f}x the time of CompressAI's "
            f"`bmshj2018_hyperprior` (quality 3) decompress in the same run; encode "
            f"{s['encode_ratio_psic_over_compressai']:.2f}x.", ""]
    if "large" in res:
        lg = res["large"]
        out += [f"## {lg['size'][0]}x{lg['size'][1]} in a fresh process", "",
                "| step | wall s | user s | system s | peak memory GiB |", "|---|---|---|---|---|"]
        out += [f"| {k} | {v['wall_s']:.1f} | {v['user_s']:.1f} | {v['sys_s']:.1f} | {v['peak_rss_gib']:.2f} |"
                for k, v in ((k, lg[k]) for k in ("encode", "decode"))]
        out.append("")
        if "seams" in lg:
            sm = lg["seams"]
            d = sm["max_abs_diff"]
            out += [f"Seams ({sm['size'][0]}x{sm['size'][1]}, in process): decoded in tiles against decoded whole, the "
                    f"largest pixel difference is {d['default_tiles']} with the decoder's tiles "
                    f"({sm['default_tile_latents']} latents) and {d['tiles_16']} with 16-latent tiles (a border every "
                    "256 pixels).", ""]
    out.append(f"Load average at the end of the run: {', '.join(f'{v:.1f}' for v in res['load_average_at_end'])}.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    me = sub.add_parser("measure", help="measure and write the JSON")
    me.add_argument("--folder", type=Path, default=Path("../shared/data/kodak"), help="evaluation images (Kodak)")
    me.add_argument("--weights", type=Path, help="a psic weights file to measure (default: the installed --model)")
    me.add_argument("--model", default="psic-sh", help="installed model id, when --weights is not given")
    me.add_argument("--key", type=Path, default=Path("weights/shipped.key"), help="key that opens the full view")
    me.add_argument("--limit", type=int, help="only the first N images (quick checks)")
    me.add_argument("--skip", type=int, default=0,
                    help="leave out the first N images (sorted by name): with --limit, one part of a split run")
    me.add_argument("--repeats", type=int, default=5, help="timing repeats (median is reported)")
    me.add_argument("--skip-rd", action="store_true", help="speed only")
    me.add_argument("--effort", type=int, nargs="+", default=[0],
                    help="encoder search steps (psic encode --effort); several give one curve each, the first "
                         "is the page's headline (default: 0)")
    me.add_argument("--large", action="store_true", help="also time a 6000x4000 encode and decode (slow)")
    me.add_argument("--out", type=Path, default=RESULTS, help="JSON to write")
    mg = sub.add_parser("merge", help="one JSON from measure runs on disjoint images (--skip/--limit)")
    mg.add_argument("parts", type=Path, nargs="+", help="JSONs written by measure, same weights and efforts")
    mg.add_argument("--out", type=Path, default=RESULTS, help="JSON to write")
    re_ = sub.add_parser("render", help="JSON -> markdown (no measuring)")
    re_.add_argument("--results", type=Path, default=RESULTS, help="JSON written by measure")
    re_.add_argument("--out", type=Path, default=DOC, help="markdown to write")
    re_.add_argument("--check", action="store_true", help="exit 1 if the markdown differs from the JSON's rendering")
    args = ap.parse_args(argv)
    if args.cmd == "measure":
        if args.effort[0] != 0 or len(set(args.effort)) != len(args.effort):
            ap.error("--effort: distinct values, starting with 0 (the headline curve)")
        measure(args)
        return 0
    if args.cmd == "merge":
        merge(args.parts, args.out)
        return 0
    text = render(args.results)
    if args.check:
        return 0 if args.out.exists() and args.out.read_text() == text else 1
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
