"""CIFAR-10 one-class data: decode once, normalise once, keep as tensors.

Accepted layouts for ``-dp``: the official ``cifar-10-batches-py`` pickles (read with
torchvision), an image-folder root ``{train,test}/<class name>/*.jpg|png``, a folder holding one
such root, or a ``.tar.gz`` of it (extracted once into the user cache).
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from utils.io import cache_dir, cache_key, cached_array, read_image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# (min, max) of the L1 global-contrast-normalised training images of each normal class (Deep SVDD / MOCCA).
GCN_L1_MIN_MAX: tuple[tuple[float, float], ...] = (
    (-28.94083453598571, 13.802961825439636),
    (-6.681770233365245, 9.158067708230273),
    (-34.924463588638204, 14.419298165027628),
    (-10.599172931391799, 11.093187820377565),
    (-11.945022995801637, 10.628045447867583),
    (-9.691969487694928, 8.948326776180823),
    (-9.174940012342555, 13.847014686472365),
    (-6.876682005899029, 12.282371383343161),
    (-15.603507135507172, 15.2464923804279),
    (-6.132882973622672, 8.046098172351265),
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass
class OneClassData:
    """Train: normal class only. Test: every test image, label 1 = anomaly (any other class)."""

    train: Tensor
    test: Tensor
    test_labels: np.ndarray
    test_classes: np.ndarray
    normal_class: int


def global_contrast_normalization(x: Tensor, what: str = "image") -> Tensor:
    """Per image: subtract the mean over all values, divide by the mean absolute deviation (L1 scale).

    A constant image has no contrast to normalise (0 / 0): ValueError naming it (``what``: which
    set, for the message), instead of a NaN loss blamed on the learning rate.
    """
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    scale = x.abs().mean(dim=(1, 2, 3), keepdim=True)
    flat = (scale.flatten() == 0).nonzero().flatten().tolist()
    if flat:
        which = ", ".join(f"{what} {i}" for i in flat[:3])
        raise ValueError(f"{len(flat)} image(s) are constant (every pixel the same value, e.g. {which} in file order): "
                         "global contrast normalisation divides by their zero contrast; remove them")
    return x / scale


def min_max_scale(x: Tensor, normal_class: int) -> Tensor:
    """Scale with the normal class's constants so its training images span [0, 1]."""
    lo, hi = GCN_L1_MIN_MAX[normal_class]
    return (x - lo) / (hi - lo)


def preprocess(images_uint8_nhwc: np.ndarray, normal_class: int, what: str = "image") -> Tensor:
    """uint8 (N, 32, 32, 3) -> float32 (N, 3, 32, 32): ToTensor, GCN-L1, per-class min-max."""
    x = torch.from_numpy(np.array(images_uint8_nhwc)).permute(0, 3, 1, 2).float() / 255.0  # copy: cache is read-only
    return min_max_scale(global_contrast_normalization(x, what), normal_class).contiguous()


def check_class(normal_class: int) -> None:
    if not 0 <= normal_class < len(CIFAR10_CLASSES):
        names = ", ".join(f"{i}={n}" for i, n in enumerate(CIFAR10_CLASSES))
        raise ValueError(f"normal class must be an index 0-9 ({names}), got {normal_class}")


def _extract(archive: Path) -> Path:
    """Extract an archive once into the user cache (atomic: a temp folder renamed into place)."""
    st = archive.stat()
    target = cache_dir() / f"cifar10-extract-{cache_key(archive.resolve(), st.st_size, st.st_mtime)}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"cannot extract {archive}: {err}") from err
        tmp.rename(target)
    return target


def _is_folder_root(p: Path) -> bool:
    return (p / "train").is_dir() and (p / "test").is_dir()


def resolve_layout(path: Path) -> tuple[str, Path]:
    """Return ('pickle', root holding cifar-10-batches-py) or ('folder', root holding train/ and test/)."""
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist: point -dp at a CIFAR-10 root (or add --download)")
    if path.is_file():
        if not path.name.endswith(ARCHIVE_SUFFIXES):
            raise ValueError(f"data path {path} is a file but not a .tar.gz/.tar archive")
        return resolve_layout(_extract(path))
    if (path / "cifar-10-batches-py").is_dir():
        return "pickle", path
    if path.name == "cifar-10-batches-py":
        return "pickle", path.parent
    if _is_folder_root(path):
        return "folder", path
    subs = [d for d in sorted(path.iterdir()) if d.is_dir() and _is_folder_root(d)]
    if len(subs) == 1:
        return "folder", subs[0]
    archives = [f for f in sorted(path.iterdir()) if f.is_file() and f.name.endswith(ARCHIVE_SUFFIXES)]
    if len(archives) == 1:
        return resolve_layout(_extract(archives[0]))
    raise ValueError(f"no CIFAR-10 data under {path}: expected cifar-10-batches-py/, train/<class>/ and "
                    "test/<class>/ image folders, or one .tar.gz of them (use --download to fetch the official set)")


def _decode_folder(folder: Path) -> np.ndarray:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images in {folder}")
    out = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        img = read_image(f)
        if img.shape[:2] != (32, 32):
            raise ValueError(f"image {f} is {img.shape[1]}x{img.shape[0]}, CIFAR-10 images are 32x32")
        out[i] = img[:, :, ::-1]  # BGR -> RGB
    return out


def _folder_class(root: Path, split: str, class_index: int) -> np.ndarray:
    folder = root / split / CIFAR10_CLASSES[class_index]
    if not folder.is_dir():
        raise FileNotFoundError(f"missing folder {folder}: an image-folder root needs {split}/<class name>/ for all 10 classes")
    files = sorted(folder.iterdir())
    key = cache_key(folder.resolve(), len(files), max((f.stat().st_mtime for f in files), default=0))
    return cached_array(f"cifar10-{split}-{class_index}", key, lambda: _decode_folder(folder))


def _load_pickles(root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=download)
    except RuntimeError as err:
        raise ValueError(f"CIFAR-10 pickles under {root} are missing or corrupt ({err}); fix -dp or add --download") from err
    except OSError as err:
        raise ValueError(f"CIFAR-10 download into {root} failed ({err}); are you offline? download it elsewhere "
                        "and point -dp at it") from err
    return np.asarray(ds.data), np.asarray(ds.targets)


def load_one_class(data_path: str | Path, normal_class: int, download: bool = False) -> OneClassData:
    """Build the one-class split (train: normal class only; test: all classes, 1 = anomaly)."""
    check_class(normal_class)
    path = Path(data_path)
    if download and not (path / "cifar-10-batches-py").is_dir():
        path.mkdir(parents=True, exist_ok=True)
        _load_pickles(path, True, True)
    kind, root = resolve_layout(path)
    if kind == "pickle":
        x_tr, y_tr = _load_pickles(root, True, False)
        x_te, y_te = _load_pickles(root, False, False)
        x_tr = x_tr[y_tr == normal_class]
    else:
        x_tr = _folder_class(root, "train", normal_class)
        per_class = [_folder_class(root, "test", c) for c in range(len(CIFAR10_CLASSES))]
        x_te = np.concatenate(per_class)
        y_te = np.concatenate([np.full(len(a), c) for c, a in enumerate(per_class)])
    if len(x_tr) == 0:
        raise ValueError(f"no training images of class {normal_class} under {data_path}")
    return OneClassData(
        train=preprocess(x_tr, normal_class, f"training image of class {normal_class}:"),
        test=preprocess(x_te, normal_class, "test image"),
        test_labels=(y_te != normal_class).astype(np.int64),
        test_classes=y_te.astype(np.int64),
        normal_class=normal_class,
    )
