"""Tiny synthetic video datasets in the layouts the video code reads, for tests.

Every writer returns what it wrote (frame counts, labels) so tests can check bookkeeping exactly.
Videos show a bright square moving over a static, smooth dark background: MOG2 background removal
must keep the square and zero the rest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np


def moving_square_video(
    n_frames: int = 24, height: int = 48, width: int = 64, square: int = 8, seed: int = 0, lead_in: int = 0
) -> np.ndarray:
    """(T, H, W, 3) uint8: smooth static background (values 20-80) + a white square moving right.

    The first ``lead_in`` frames show only the background (MOG2 initialises its model from the first
    frame, so an object already there leaves a "ghost" in the background estimate).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, size=3)
    background = np.stack(
        [50 + 30 * np.sin(xx / 7.0 + phase[c]) * np.cos(yy / 9.0 + phase[c]) for c in range(3)], axis=-1
    ).astype(np.uint8)
    frames = np.repeat(background[None], n_frames, axis=0)
    top = (height - square) // 2
    for t in range(lead_in, n_frames):
        rows, cols = square_box(t, n_frames, height, width, square, lead_in)
        frames[t, rows, cols] = 255
    return frames


def square_box(
    t: int, n_frames: int, height: int, width: int, square: int = 8, lead_in: int = 0
) -> tuple[slice, slice]:
    """Where ``moving_square_video`` draws the square in frame t >= lead_in (rows, cols)."""
    top = (height - square) // 2
    left = int(round((t - lead_in) * (width - square) / max(n_frames - lead_in - 1, 1)))
    return slice(top, top + square), slice(left, left + square)


def write_frames(folder: Path, frames: np.ndarray) -> list[Path]:
    """Write frames (treated as BGR by cv2) as 000.jpg, 001.jpg, ... (quality 100)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = folder / f"{i:03d}.jpg"
        assert cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 100])
        paths.append(path)
    return paths


def write_avi(path: Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    """Write an MJPG .avi with OpenCV's built-in writer (needs no system codec)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi files"
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


def frame_labels(n_frames: int, seed: int) -> np.ndarray:
    """Deterministic 0/1 labels with one abnormal run in the middle (both classes present)."""
    labels = np.zeros(n_frames, dtype=np.uint8)
    start = n_frames // 3 + seed % 3
    labels[start : start + n_frames // 3] = 1
    return labels


def make_frames_dataset(
    root: Path,
    name: str = "ped2",
    train_lengths: Sequence[int] = (20, 18),
    test_lengths: Sequence[int] = (20, 17),
    size: tuple[int, int] = (24, 32),
    write_labels: bool = True,
) -> dict:
    """Ped2/Avenue layout: {training,testing}/frames/NN/NNN.jpg and <root>/frame_labels_<name>.npy."""
    height, width = size
    for i, n in enumerate(train_lengths, 1):
        write_frames(root / "training" / "frames" / f"{i:02d}", moving_square_video(n, height, width, seed=i))
    labels = []
    for i, n in enumerate(test_lengths, 1):
        write_frames(root / "testing" / "frames" / f"{i:02d}", moving_square_video(n, height, width, seed=100 + i))
        labels.append(frame_labels(n, i))
    if write_labels:
        stem = "shanghai" if name == "shanghaitech" else name
        np.save(root / f"frame_labels_{stem}.npy", np.concatenate(labels)[None])  # (1, N) like MNAD's files
    return {"train_lengths": list(train_lengths), "test_lengths": list(test_lengths), "labels": labels}


def make_official_shanghaitech(
    root: Path,
    train: Mapping[str, int] = {"01_001": 20, "02_001": 18},
    test: Mapping[str, int] = {"01_0014": 19, "02_0128": 17},
    size: tuple[int, int] = (48, 64),
) -> dict:
    """Official ShanghaiTech layout: training/videos/*.avi, testing/frames/<clip>/, test_frame_mask/."""
    height, width = size
    for i, (clip, n) in enumerate(train.items()):
        write_avi(root / "training" / "videos" / f"{clip}.avi", moving_square_video(n, height, width, seed=i))
    masks = {}
    for i, (clip, n) in enumerate(test.items()):
        write_frames(root / "testing" / "frames" / clip, moving_square_video(n, height, width, seed=50 + i))
        masks[clip] = frame_labels(n, i)
        (root / "testing" / "test_frame_mask").mkdir(parents=True, exist_ok=True)
        np.save(root / "testing" / "test_frame_mask" / f"{clip}.npy", masks[clip])
    return {"train": dict(train), "test": dict(test), "masks": masks}


def make_authors_shanghaitech(
    root: Path,
    train: Mapping[str, int] = {"01_001": 20, "02_001": 18},
    test: Mapping[str, int] = {"01_0014": 19, "02_0128": 17},
    size: tuple[int, int] = (32, 64),
) -> dict:
    """The authors' preprocessed layout: {training,testing}/nobackground_frames_resized/<clip>/NNN.jpg."""
    height, width = size
    for split, clips in (("training", train), ("testing", test)):
        for i, (clip, n) in enumerate(clips.items()):
            folder = root / split / "nobackground_frames_resized" / clip
            write_frames(folder, moving_square_video(n, height, width, seed=i))
    masks = {clip: frame_labels(n, i) for i, (clip, n) in enumerate(test.items())}
    (root / "testing" / "test_frame_mask").mkdir(parents=True, exist_ok=True)
    for clip, mask in masks.items():
        np.save(root / "testing" / "test_frame_mask" / f"{clip}.npy", mask)
    return {"train": dict(train), "test": dict(test), "masks": masks}


def shared_data_dir() -> Path:
    """The project's shared real data (../shared/data relative to the repository root)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"
