"""Training data: every image of the given folders decoded once into memory, random crops per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG", ".webp", ".bmp"}


def find_images(folders: list[Path]) -> list[Path]:
    out: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file():
            out.append(folder)
            continue
        out.extend(sorted(p for p in folder.rglob("*") if p.suffix in IMAGE_SUFFIXES))
    if not out:
        raise SystemExit(f"no training images under {[str(f) for f in folders]}")
    return out


def load_rgb_at_least(path: Path, patch: int) -> np.ndarray:
    """An image as uint8 HxWx3, upscaled (bicubic) when its short side is below ``patch``."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if min(im.size) < patch:
            s = patch / min(im.size)
            im = im.resize((max(patch, round(im.width * s)), max(patch, round(im.height * s))), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def random_crop(img: np.ndarray, patch: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``patch``-square crop, flipped left-right half of the time."""
    h, w = img.shape[:2]
    i, j = rng.integers(h - patch + 1), rng.integers(w - patch + 1)
    crop = img[i : i + patch, j : j + patch]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


class PatchBank:
    """All training images as uint8 HWC arrays; ``batch()`` draws random crops with flips.

    Images smaller than the patch are upscaled to fit.  Loading ~10k small JPEGs takes ~30 s; the
    per-step cost is then negligible next to the network (2 CPU cores are the bottleneck).
    """

    def __init__(self, folders: list[Path], patch: int, seed: int = 0, limit: int | None = None,
                 progress=None):
        paths = find_images(folders)
        rng = np.random.default_rng(seed)
        if limit is not None and len(paths) > limit:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
        self.patch = patch
        self.images: list[np.ndarray] = []
        for i, p in enumerate(paths):
            self.images.append(load_rgb_at_least(p, patch))
            if progress is not None:
                progress(i + 1, len(paths))
        self.rng = np.random.default_rng(seed + 1)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, n: int) -> torch.Tensor:
        p = self.patch
        out = np.empty((n, p, p, 3), dtype=np.uint8)
        for k in range(n):
            out[k] = random_crop(self.images[self.rng.integers(len(self.images))], p, self.rng)
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
