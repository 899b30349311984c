"""Atomic file writing and the user cache directory.

Every artefact the project writes (checkpoints, metrics, caches) goes through these helpers so
a killed run never leaves a half-written file behind: data goes to a temporary file in the same
folder and is renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


JPEG_SUFFIXES = (".jpg", ".jpeg")


def truncation(data: bytes, suffix: str) -> str | None:
    """Why an encoded image is cut short, or None. OpenCV decodes a truncated JPEG or PNG with only
    a warning and grey or black rows where the data ends, so this is checked on the bytes: a JPEG
    ends with the EOI marker (FF D9, trailing padding allowed), a PNG with its IEND chunk."""
    if data[:2] == b"\xff\xd8" or suffix in JPEG_SUFFIXES:
        return None if data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9" else "it has no JPEG end marker"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return None if b"IEND" in data[-12:] else "it has no PNG end chunk (IEND)"
    return None


def read_image(path: str | os.PathLike, grey: bool = False) -> np.ndarray:
    """Decode one image file as (H, W, 3) BGR uint8 (or (H, W) with ``grey``).

    ValueError naming the file when it is empty, truncated or not an image: a partly decoded image
    must never reach a cache or a score.
    """
    import cv2  # only the image paths need OpenCV

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read image {path}: {err.strerror or err}") from err
    if not data:
        raise ValueError(f"image {path} is empty (0 bytes); remove or replace it")
    cut = truncation(data, path.suffix.lower())
    if cut:
        raise ValueError(f"image {path} is truncated ({cut}); remove or replace it")
    flags = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR  # IMREAD_COLOR expands 1-channel files
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ValueError(f"cannot decode image {path}: the file is corrupt or not an image; remove or replace it")
    return image


def cache_dir() -> Path:
    """Root of the user cache (decoded images, preprocessed frames): $MOCCA_CACHE or ~/.cache/mocca."""
    root = os.environ.get("MOCCA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mocca")
    return Path(root)


def cache_key(*parts: Any) -> str:
    """A short stable hash of the things a cached result depends on (paths, sizes, file mtimes)."""
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def cached_array(name: str, key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Load ``<cache>/<name>-<key>.npy`` or build it once and store it atomically.

    The returned array is memory-mapped read-only when it came from disk, so a large cache does not
    need to fit twice in RAM.
    """
    path = cache_dir() / f"{name}-{key}.npy"
    if path.exists():
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            path.unlink(missing_ok=True)  # corrupt cache entry: rebuild it
    array = build()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return array
