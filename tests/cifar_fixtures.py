"""Tiny CIFAR-10 image-folder trees, generated in the official class order, for fast tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datasets.cifar10 import CIFAR10_CLASSES


def make_cifar_folder(root: Path, n_train: int = 24, n_test: int = 6, seed: int = 0) -> Path:
    """Write train/<class>/NNNN.png and test/<class>/NNNN.png; each class has its own mean colour."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.normal(25 * c, 30, size=(32, 32, 3)).clip(0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{i:04d}.png"), img)
    return root
