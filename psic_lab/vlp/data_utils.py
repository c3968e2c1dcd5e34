"""Small image-folder helpers shared by the VLP training and evaluation scripts (PIL only, no torchvision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_labelled_folder(folder: str | Path, limit: int | None = None) -> tuple[list[Path], list[str]]:
    """Images under ``folder/<label>/`` with their label (subfolder name), sorted.

    With ``limit``, a deterministic, class-balanced-by-stride subset: every ``k``-th file of the sorted list.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*/*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"no images in <label>/ subfolders of {folder}")
    if limit is not None and limit < len(files):
        idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in idx]
    return files, [p.parent.name for p in files]


def list_images(folder: str | Path) -> list[Path]:
    """All images directly inside ``folder`` (sorted)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image as a ``[3, H, W]`` float tensor in ``[0, 1]``."""
    arr = np.array(Image.open(path).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def load_square_uint8(path: str | Path, size: int) -> np.ndarray:
    """Centre square crop resized to ``size x size`` (PIL bicubic-antialiased), as ``[size, size, 3]`` uint8."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.uint8)


def square_crops(image: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``n`` square crops spaced evenly along the long side of a ``[3, H, W]`` image."""
    h, w = image.shape[-2:]
    s = min(h, w)
    if n <= 1:
        offs = [(h - s) // 2, (w - s) // 2]
        return [image[:, offs[0] : offs[0] + s, offs[1] : offs[1] + s]]
    out = []
    for k in range(n):
        t = round(k * (h - s) / (n - 1))
        left = round(k * (w - s) / (n - 1))
        out.append(image[:, t : t + s, left : left + s])
    return out
