"""Generate small MVTec AD categories in the official layout, for tests that must not need real data.

Layout written (as in the official archive):
    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png ...   (0 / 255 grey-scale)
Images are smooth gradients with a few rectangles (small PNGs, fast to write and decode); defect
images get a bright blob that their mask marks. Grid, screw and zipper are written as 1-channel
PNGs like the official files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

GREY_CATEGORIES = frozenset({"grid", "screw", "zipper"})


def _normal_image(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """A smooth gradient plus random rectangles: distinct per seed, compresses well."""
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = np.stack([np.add.outer(ramp * rng.uniform(40, 200), ramp * rng.uniform(0, 55))] * channels, -1)
    base += rng.uniform(0, 30, size=channels)
    img = base.clip(0, 255).astype(np.uint8)
    for _ in range(3):
        x0, y0 = rng.integers(0, size - size // 4, size=2)
        w, h = rng.integers(size // 10, size // 4, size=2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=channels, dtype=np.uint8)
    return img


def _defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a white disc on ``img``; return the image and its 0/255 mask."""
    size = img.shape[0]
    mask = np.zeros(img.shape[:2], np.uint8)
    cx, cy = rng.integers(size // 4, 3 * size // 4, size=2)
    cv2.circle(mask, (int(cx), int(cy)), max(2, size // 10), 255, -1)
    img = img.copy()
    img[mask > 0] = 255
    return img, mask


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def make_mvtec_category(root: str | Path, category: str, n_train: int = 4, n_good: int = 2, n_defect: int = 2,
                        size: int = 96, defects: Sequence[str] = ("crack", "scratch"), grey: bool | None = None,
                        seed: int = 0) -> Path:
    """Write ``<root>/<category>`` with ``n_defect`` images (and masks) per defect type; return it.

    ``grey`` defaults to the official channel count of the category (1 for grid, screw, zipper).
    """
    folder = Path(root) / category
    channels = 1 if (category in GREY_CATEGORIES if grey is None else grey) else 3
    rng = np.random.default_rng(seed)

    def image() -> np.ndarray:
        img = _normal_image(rng, size, channels)
        return img[..., 0] if channels == 1 else img

    for i in range(n_train):
        _write(folder / "train" / "good" / f"{i:03d}.png", image())
    for i in range(n_good):
        _write(folder / "test" / "good" / f"{i:03d}.png", image())
    for defect in defects:
        for i in range(n_defect):
            img, mask = _defect(image(), rng)
            _write(folder / "test" / defect / f"{i:03d}.png", img)
            _write(folder / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return folder
