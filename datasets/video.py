"""Video anomaly-detection data: ShanghaiTech (authors' layout), UCSD Ped2 and CUHK Avenue.

Layouts (``root`` is what the user passes as the data path):

* ``shanghaitech`` - the authors' preprocessed layout (background already removed, frames already
  resized): ``{training,testing}/nobackground_frames_resized/<clip>/*.jpg`` and per-clip labels
  ``testing/test_frame_mask/<clip>.npy``. Build it from the official release with
  ``python -m tools.preprocess_video --src <official root> --dst <root>``.
* ``ped2`` / ``avenue`` - the common frame layout (Liu et al. 2018, MNAD):
  ``{training,testing}/frames/<NN>/*.jpg``. Labels are one ``.npy`` of all test frames concatenated in
  sorted clip order (``<root>/frame_labels_<name>.npy`` or ``--labels``) or, for Ped2, the official
  ``ped2.mat`` (abnormal frame intervals per test clip, 1-based, inclusive). Background removal and
  resizing happen at load time (defaults: background removed, as the paper does for ShanghaiTech,
  with the ``lsa`` recipe of ``datasets.background``).

Decoded (and background-removed, resized) videos are cached once per clip through
``utils.io.cached_array`` and handed out memory-mapped, so a large set does not have to fit in RAM.

Training samples are 16-frame windows with stride 1 drawn uniformly with replacement (authors: an
"epoch" is 10,000 such draws; here the number of draws is the caller's choice). Test videos are
scored through all stride-1 windows in order.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from datasets.background import (
    DEFAULT_DILATE_ITERATIONS,
    DEFAULT_RECIPE,
    DEFAULT_THRESHOLD,
    get_recipe,
    remove_background,
)
from utils.io import atomic_path, cache_dir, cache_key, cached_array
from utils.io import read_image as io_read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov")
CLIP_LENGTH = 16
SHANGHAITECH_SIZE = (256, 512)  # (H, W) used by the authors
CACHE_VERSION = "video-frames-v1"  # bump when the decoding pipeline changes

# Official per-clip frame counts of the full test sets, in sorted clip order. They let a concatenated
# label file be sliced when only some test clips are on disk.
PED2_TEST_CLIP_LENGTHS = (180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180)  # sum 2,010
# Avenue: sum 15,324 = length of MNAD's frame_labels_avenue.npy; the same table appears in several public
# VAD code bases, and every slice of that label file starts and ends with a normal frame.
AVENUE_TEST_CLIP_LENGTHS = (
    1439, 1211, 923, 947, 1007, 1283, 605, 36, 1175, 841, 472,
    1271, 549, 507, 1001, 740, 426, 294, 248, 273, 76,
)


@dataclass(frozen=True)
class VideoFormat:
    """Where a dataset keeps its frames and labels, and whether frames need background removal."""

    name: str
    frames_subdir: str
    remove_bg_default: bool
    test_clip_lengths: tuple[int, ...] | None
    labels_stem: str  # default label file: <root>/frame_labels_<labels_stem>.npy


FORMATS: dict[str, VideoFormat] = {
    "shanghaitech": VideoFormat("shanghaitech", "nobackground_frames_resized", False, None, "shanghai"),
    "ped2": VideoFormat("ped2", "frames", True, PED2_TEST_CLIP_LENGTHS, "ped2"),
    "avenue": VideoFormat("avenue", "frames", True, AVENUE_TEST_CLIP_LENGTHS, "avenue"),
}


def get_format(name: str) -> VideoFormat:
    """The layout description of a dataset name (ValueError for an unknown one)."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown video dataset format '{name}'; use one of {sorted(FORMATS)}") from None


# --------------------------------------------------------------------------------------------------
# Files and frames
# --------------------------------------------------------------------------------------------------

def _natural_key(name: str) -> list:
    """Sort '2.jpg' before '10.jpg' (frame files are not always zero-padded)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_frame_files(clip_dir: str | os.PathLike) -> list[Path]:
    """Image files of one clip in temporal (natural) order; ValueError when there are none."""
    clip_dir = Path(clip_dir)
    if not clip_dir.is_dir():
        raise FileNotFoundError(f"frame folder {clip_dir} does not exist; check the data path")
    files = [p for p in clip_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not files:
        raise ValueError(f"no image files in {clip_dir}; expected frames such as 000.jpg")
    return sorted(files, key=lambda p: _natural_key(p.name))


def count_frames(clip_dir: str | os.PathLike) -> int:
    """Number of frames of a clip, without decoding anything."""
    return len(list_frame_files(clip_dir))


def _check_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(f"frame size must be two positive integers (H W), got {list(size)}")
    return int(size[0]), int(size[1])


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (T, H, W, 3) frames to size = (H, W); area interpolation when shrinking (no aliasing)."""
    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    shrinking = height <= frames.shape[1] and width <= frames.shape[2]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = np.empty((len(frames), height, width, frames.shape[3]), dtype=frames.dtype)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (width, height), interpolation=interpolation)
    return out


def read_image(path: Path) -> np.ndarray:
    """One frame as (H, W, 3) uint8 in cv2's BGR order; ValueError when it cannot be decoded."""
    return io_read_image(path)


def _stack_frames(frames: list[np.ndarray], where: str) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames of {where} have different sizes {sorted(shapes)}; all frames of a video must match")
    return np.stack(frames)


def clean_frames(
    frames: np.ndarray,
    size: tuple[int, int] | None,
    remove_bg: bool,
    threshold: float = DEFAULT_THRESHOLD,
    dilate_iterations: int = DEFAULT_DILATE_ITERATIONS,
    recipe: str = DEFAULT_RECIPE,
) -> np.ndarray:
    """Resize and optionally remove the background, in the order the recipe prescribes.

    ``lsa`` resizes first (the background is estimated at the model size); ``native`` removes the
    background at the native resolution and resizes afterwards. ``size=None`` keeps the native size.
    """
    spec = get_recipe(recipe)
    early = size is not None and (spec.resize_first or not remove_bg)
    if early:
        frames = resize_frames(frames, size)
    if remove_bg:
        frames = remove_background(frames, threshold=threshold, dilate_iterations=dilate_iterations, recipe=spec)
    if size is not None and not early:
        frames = resize_frames(frames, size)
    return frames


def _decode_clip(
    files: Sequence[Path],
    size: tuple[int, int] | None,
    remove_bg: bool,
    threshold: float,
    dilate_iterations: int,
    recipe: str = DEFAULT_RECIPE,
) -> np.ndarray:
    """Decode, resize and optionally remove the background (see ``clean_frames``). RGB out."""
    frames = _stack_frames([read_image(f) for f in files], str(files[0].parent))
    frames = clean_frames(frames, size, remove_bg, threshold, dilate_iterations, recipe)
    return np.ascontiguousarray(frames[..., ::-1])  # BGR -> RGB


def _memmapped(array: np.ndarray, name: str, key: str) -> np.ndarray:
    """Re-open a freshly built cache entry memory-mapped so that all videos stay disk-backed."""
    if isinstance(array, np.memmap):
        return array
    path = cache_dir() / f"{name}-{key}.npy"  # the path utils.io.cached_array writes to
    return np.load(path, mmap_mode="r") if path.exists() else array


def _recipe_key(remove_bg: bool, recipe: str) -> tuple[str, ...]:
    """Cache-key part of the recipe: empty without background removal, so entries of plain decodes
    (the recipe does not touch them) stay valid; entries made before recipes existed never match."""
    return (f"background-recipe={recipe}",) if remove_bg else ()


def load_video_frames(
    clip_dir: str | os.PathLike,
    size: Sequence[int] | None = None,
    remove_bg: bool = False,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    dilate_iterations: int = DEFAULT_DILATE_ITERATIONS,
    background_recipe: str = DEFAULT_RECIPE,
) -> np.ndarray:
    """A clip's frames as (T, H, W, 3) uint8 RGB, decoded once and cached.

    ``size`` = (H, W) to resize to (None keeps the native size; frames already of that size are not
    touched). The cache key covers the clip path, size, background settings (recipe included when the
    background is removed) and every file's name, mtime and byte size, so editing a frame invalidates
    the entry.
    """
    clip_dir = Path(clip_dir).resolve()
    size = _check_size(size)
    recipe = get_recipe(background_recipe).name
    files = list_frame_files(clip_dir)
    stamps = [(f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files]
    key = cache_key(CACHE_VERSION, clip_dir, size, bool(remove_bg), threshold, dilate_iterations, stamps,
                    *_recipe_key(bool(remove_bg), recipe))
    array = cached_array(
        "video-frames", key, lambda: _decode_clip(files, size, bool(remove_bg), threshold, dilate_iterations, recipe)
    )
    return _memmapped(array, "video-frames", key)


def video_dirs(root: str | os.PathLike, fmt: str, split: str) -> list[tuple[str, Path]]:
    """(clip name, frame folder) of every video of a split, in sorted clip order."""
    spec = get_format(fmt)
    if split not in ("training", "testing"):
        raise ValueError(f"split must be 'training' or 'testing', got '{split}'")
    base = Path(root) / split / spec.frames_subdir
    if not base.is_dir():
        hint = " (run `python -m tools.preprocess_video` first)" if fmt == "shanghaitech" else ""
        raise FileNotFoundError(f"{base} not found: the {fmt} layout expects {split}/{spec.frames_subdir}/<clip>/*.jpg{hint}")
    dirs = sorted((d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    if not dirs:
        raise ValueError(f"no clip folders in {base}")
    return [(d.name, d) for d in dirs]


def load_split(
    root: str | os.PathLike,
    fmt: str,
    split: str,
    size: Sequence[int] | None,
    remove_bg: bool | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    background_recipe: str = DEFAULT_RECIPE,
) -> tuple[list[str], list[np.ndarray]]:
    """Names and frames of all videos of a split. ``remove_bg=None`` uses the format's default."""
    spec = get_format(fmt)
    remove = spec.remove_bg_default if remove_bg is None else bool(remove_bg)
    recipe = get_recipe(background_recipe).name  # checked before the first (slow) decode
    names, videos = [], []
    for name, path in video_dirs(root, fmt, split):
        if progress is not None:
            progress(name)
        names.append(name)
        videos.append(load_video_frames(path, size, remove, background_recipe=recipe))
    return names, videos


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------

def _as_label_vector(labels: np.ndarray, where: str) -> np.ndarray:
    """A 0/1 uint8 vector from an array of shape (N,), (1, N) or (N, 1)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and 1 in labels.shape:
        labels = labels.ravel()
    if labels.ndim != 1:
        raise ValueError(f"labels in {where} must be a 1-D array of 0/1 per frame, got shape {labels.shape}")
    if labels.size and not np.isin(np.unique(labels), (0, 1)).all():
        raise ValueError(f"labels in {where} must be 0 (normal) or 1 (abnormal), found values {np.unique(labels)[:5]}")
    return labels.astype(np.uint8)


def read_mat_intervals(path: str | os.PathLike) -> list[np.ndarray]:
    """Abnormal intervals per test clip from a UCSD-style ``.mat`` (variable ``gt``).

    ``gt`` is a 1 x n_clips cell array; each cell is a 2 x K array whose columns are [first; last]
    abnormal frame, 1-based and inclusive (Ped2 has K = 1 for every clip).
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises several types for non-.mat files
        raise ValueError(f"cannot read {path} as a MATLAB file ({err}); give a UCSD ped2.mat or a .npy") from None
    keys = [k for k in mat if not k.startswith("__")]
    key = "gt" if "gt" in mat else (keys[0] if len(keys) == 1 else None)
    if key is None:
        raise ValueError(f"{path} has variables {keys}; expected 'gt' with abnormal intervals per test clip")
    intervals = []
    for cell in np.asarray(mat[key], dtype=object).ravel():
        arr = np.asarray(cell, dtype=np.int64)
        if arr.ndim == 2 and arr.shape[0] != 2 and arr.shape[1] == 2:
            arr = arr.T
        if arr.ndim != 2 or arr.shape[0] != 2:
            raise ValueError(f"{path}: each clip entry must be a 2 x K array of [first; last] frames, got {arr.shape}")
        intervals.append(arr)
    return intervals


def intervals_to_labels(intervals: np.ndarray, n_frames: int, clip: str = "?") -> np.ndarray:
    """0/1 frame labels from 1-based inclusive [first; last] columns."""
    labels = np.zeros(n_frames, dtype=np.uint8)
    for first, last in np.asarray(intervals).T:
        if not 1 <= first <= last <= n_frames:
            raise ValueError(
                f"test clip {clip}: abnormal interval [{first}, {last}] does not fit its {n_frames} frames; "
                "the label file does not match the frames on disk"
            )
        labels[first - 1 : last] = 1
    return labels


def _clip_positions(clip_names: Sequence[str], n_full: int) -> list[int]:
    """Index of each clip in the full test set: sorted order when all clips are present, else the
    official 1-based clip number in its name (01, 02, ...)."""
    if len(clip_names) == n_full:
        return list(range(n_full))
    positions = []
    for name in clip_names:
        if not name.isdigit() or not 1 <= int(name) <= n_full:
            raise ValueError(
                f"only {len(clip_names)} of the {n_full} test clips are on disk and clip '{name}' has no official "
                f"number 01..{n_full:02d} in its name; rename it or give labels for exactly the clips on disk"
            )
        positions.append(int(name) - 1)
    return positions


def _split_concatenated(
    labels: np.ndarray, clip_names: Sequence[str], n_frames: Sequence[int], full_lengths: Sequence[int] | None
) -> list[np.ndarray]:
    if sum(n_frames) == len(labels):  # the clips on disk are the whole set: no table needed
        bounds = np.cumsum([0, *n_frames])
        return [labels[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if full_lengths is None or sum(full_lengths) != len(labels):
        raise ValueError(
            f"the label array has {len(labels)} frames but the {len(clip_names)} test clips on disk have "
            f"{sum(n_frames)}; give the label file of exactly this test set (or the official full-set file "
            "for ped2/avenue)"
        )
    bounds = np.cumsum([0, *full_lengths])
    pieces = [labels[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return [pieces[p] for p in _clip_positions(clip_names, len(full_lengths))]


def labels_for_clips(
    clip_names: Sequence[str],
    n_frames: Sequence[int],
    *,
    concatenated: np.ndarray | None = None,
    full_lengths: Sequence[int] | None = None,
    intervals: Sequence[np.ndarray] | None = None,
    per_clip: Mapping[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Per-clip 0/1 frame labels for the test clips on disk, checked against their frame counts.

    Exactly one source: ``concatenated`` (all test frames in sorted clip order; sliced by the clips'
    own frame counts when they add up, else by ``full_lengths`` of the official full set, clips placed
    by their 01..NN number), ``intervals`` (one 2 x K [first; last] array per clip of the full set, as
    in ped2.mat) or ``per_clip`` (name -> array, ShanghaiTech's test_frame_mask).
    """
    if sum(x is not None for x in (concatenated, intervals, per_clip)) != 1:
        raise ValueError("give exactly one of concatenated, intervals, per_clip")
    if len(clip_names) != len(n_frames):
        raise ValueError("clip_names and n_frames must have the same length")
    if concatenated is not None:
        vector = _as_label_vector(concatenated, "the concatenated label array")
        result = _split_concatenated(vector, clip_names, n_frames, full_lengths)
    elif intervals is not None:
        positions = _clip_positions(clip_names, len(intervals))
        result = [intervals_to_labels(intervals[p], n, c) for p, n, c in zip(positions, n_frames, clip_names)]
    else:
        missing = [c for c in clip_names if c not in per_clip]
        if missing:
            raise ValueError(f"no labels for test clip(s) {missing[:5]}; add their frame masks")
        result = [_as_label_vector(per_clip[c], f"clip {c}") for c in clip_names]
    for name, n, labels in zip(clip_names, n_frames, result):
        if len(labels) != n:
            raise ValueError(f"test clip {name} has {n} frames but {len(labels)} labels; the label file does not match")
    return result


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except Exception as err:  # numpy raises ValueError, OSError, EOFError, UnpicklingError...
        raise ValueError(f"cannot read labels from {path} ({err}); expected a .npy array or ped2-style .mat") from None


def _find_label_file(root: Path, spec: VideoFormat, labels_path: str | os.PathLike | None) -> Path:
    if labels_path is not None:
        path = Path(labels_path)
        if not path.is_file():
            raise FileNotFoundError(f"label file {path} does not exist")
        return path
    candidates = [root / f"frame_labels_{spec.labels_stem}.npy"]
    if spec.name == "ped2":  # UCSD's interval file; Avenue's official .mat files hold pixel masks instead
        candidates.append(root / "ped2.mat")
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(f"no test labels found (looked for {', '.join(map(str, candidates))}); pass --labels <file>")


def load_test_labels(
    root: str | os.PathLike,
    fmt: str,
    clip_names: Sequence[str],
    n_frames: Sequence[int],
    labels_path: str | os.PathLike | None = None,
) -> list[np.ndarray]:
    """Frame labels of the given test clips from the format's label source (see module docstring)."""
    spec, root = get_format(fmt), Path(root)
    if fmt == "shanghaitech" and labels_path is None:
        mask_dir = root / "testing" / "test_frame_mask"
        if not mask_dir.is_dir():
            raise FileNotFoundError(f"{mask_dir} not found: ShanghaiTech labels are testing/test_frame_mask/<clip>.npy")
        masks = {c: _load_npy(mask_dir / f"{c}.npy") for c in clip_names if (mask_dir / f"{c}.npy").is_file()}
        return labels_for_clips(clip_names, n_frames, per_clip=masks)
    path = _find_label_file(root, spec, labels_path)
    if path.suffix.lower() == ".mat":
        return labels_for_clips(clip_names, n_frames, intervals=read_mat_intervals(path))
    array = _load_npy(path)
    return labels_for_clips(clip_names, n_frames, concatenated=array, full_lengths=spec.test_clip_lengths)


def check_test_set(root: str | os.PathLike, fmt: str, labels_path: str | os.PathLike | None,
                   clip_length: int) -> int:
    """What the test stage needs, checked before training: the layout, a label per frame, at least
    one clip per video, and the first and last frame of each video decodable. Returns the number of
    test videos (a ValueError or FileNotFoundError names what is missing)."""
    dirs = video_dirs(root, fmt, "testing")
    counts = [count_frames(d) for _, d in dirs]
    load_test_labels(root, fmt, [name for name, _ in dirs], counts, labels_path)
    for (name, d), n in zip(dirs, counts):
        if n < clip_length:
            raise ValueError(f"test video {d} has {n} frames, fewer than one clip of {clip_length} (-cl)")
        files = list_frame_files(d)
        read_image(files[0])
        read_image(files[-1])
    return len(dirs)


def load_test_set(
    root: str | os.PathLike,
    fmt: str,
    size: Sequence[int] | None,
    remove_bg: bool | None = None,
    labels_path: str | os.PathLike | None = None,
    *,
    background_recipe: str = DEFAULT_RECIPE,
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Names, frames and per-frame labels of every test video (labels checked against frame counts)."""
    dirs = video_dirs(root, fmt, "testing")
    names = [name for name, _ in dirs]
    labels = load_test_labels(root, fmt, names, [count_frames(d) for _, d in dirs], labels_path)
    _, videos = load_split(root, fmt, "testing", size, remove_bg, background_recipe=background_recipe)
    return names, videos, labels


# --------------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------------

def clips_to_tensor(clips: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32 in [0, 1] (the authors divide by 255, no mean/std)."""
    tensor = torch.from_numpy(np.ascontiguousarray(clips))
    # permute while still uint8 (4x fewer bytes to move), then convert: ~4x faster than the reverse
    return tensor.permute(0, 4, 1, 2, 3).contiguous().float().div_(255.0)


class VideoClips:
    """All videos of a split plus the index of every stride-1 window of ``clip_length`` frames.

    Videos stay uint8 numpy arrays (memory-mapped when they come from the cache): ShanghaiTech at
    256x512 is ~100 GB as uint8, so holding it as tensors in RAM is not an option. Windows are copied
    and converted to float only when a batch is drawn.
    """

    def __init__(
        self, videos: Sequence[np.ndarray], clip_length: int = CLIP_LENGTH, names: Sequence[str] | None = None
    ):
        if clip_length < 1:
            raise ValueError(f"clip length must be positive, got {clip_length}")
        if not videos:
            raise ValueError("no videos given")
        self.names = list(names) if names is not None else [str(i) for i in range(len(videos))]
        if len(self.names) != len(videos):
            raise ValueError("names and videos must have the same length")
        self.clip_length = int(clip_length)
        self._frame_shape = tuple(np.shape(videos[0])[1:3])
        self.videos = [self._check_video(v, n) for v, n in zip(videos, self.names)]
        self.index = np.concatenate(
            [np.stack([np.full(self.n_windows(i), i), np.arange(self.n_windows(i))], 1) for i in range(len(videos))]
        ).astype(np.int64)

    def _check_video(self, video: np.ndarray, name: str) -> np.ndarray:
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise ValueError(f"video {name} must be (T, H, W, 3) uint8, got {video.shape} {video.dtype}")
        if len(video) < self.clip_length:
            raise ValueError(
                f"video {name} has {len(video)} frames, fewer than the clip length {self.clip_length}; "
                "remove it or lower the clip length"
            )
        if tuple(video.shape[1:3]) != self._frame_shape:
            raise ValueError(
                f"video {name} is {video.shape[1:3]} but earlier videos are {self._frame_shape}; resize them"
            )
        return video

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) shared by all videos."""
        return self._frame_shape

    def __len__(self) -> int:
        return len(self.index)

    def n_frames(self, video: int) -> int:
        return len(self.videos[video])

    def n_windows(self, video: int) -> int:
        """Stride-1 windows of a video: n_frames - clip_length + 1."""
        return len(self.videos[video]) - self.clip_length + 1

    def window(self, i: int) -> np.ndarray:
        """Window ``i`` of the global index as (T, H, W, 3) uint8."""
        video, start = self.index[i]
        return np.asarray(self.videos[video][start : start + self.clip_length])

    def sample_batch(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``batch_size`` windows drawn uniformly with replacement, as (B, 3, T, H, W) float in [0, 1]."""
        picks = torch.randint(len(self.index), (batch_size,), generator=generator).numpy()
        return clips_to_tensor(np.stack([self.window(i) for i in picks]))

    def test_windows(self, video: int, batch_size: int = 1) -> Iterator[torch.Tensor]:
        """All stride-1 windows of one video, in order, in batches of (b, 3, T, H, W)."""
        frames = self.videos[video]
        starts = range(self.n_windows(video))
        for b in range(0, len(starts), batch_size):
            batch = [np.asarray(frames[s : s + self.clip_length]) for s in starts[b : b + batch_size]]
            yield clips_to_tensor(np.stack(batch))


# --------------------------------------------------------------------------------------------------
# Offline preprocessing of the official ShanghaiTech release into the authors' layout
# --------------------------------------------------------------------------------------------------

def read_video(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video file as (T, H, W, 3) uint8 BGR; ValueError when it cannot be read."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot open video {path}; the file is missing, corrupt or in an unsupported codec")
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"video {path} has no readable frames; it is corrupt or in an unsupported codec")
    return _stack_frames(frames, str(path))


def read_frame_folder(clip_dir: Path) -> np.ndarray:
    """All frames of a folder as (T, H, W, 3) uint8 BGR, uncached (preprocessing reads each once)."""
    return _stack_frames([read_image(f) for f in list_frame_files(clip_dir)], str(clip_dir))


def preprocess_frames(
    frames: np.ndarray,
    size: tuple[int, int],
    threshold: float,
    dilate_iterations: int,
    recipe: str = DEFAULT_RECIPE,
) -> np.ndarray:
    """Background-removed frames of size (H, W), BGR in and out (see ``clean_frames``)."""
    return clean_frames(frames, size, True, threshold, dilate_iterations, recipe)


def write_clip_atomically(frames_bgr: np.ndarray, out_dir: Path, jpeg_quality: int) -> None:
    """Write NNN.jpg frames into a hidden temp folder and rename it into place (no half clips)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        width = max(3, len(str(len(frames_bgr) - 1)))
        for i, frame in enumerate(frames_bgr):
            if not cv2.imwrite(str(tmp / f"{i:0{width}d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]):
                raise ValueError(f"cannot write frames into {out_dir.parent}; check free space and permissions")
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _official_sources(src: Path) -> tuple[list[Path], list[Path]]:
    train_dir, test_dir = src / "training" / "videos", src / "testing" / "frames"
    for folder in (train_dir, test_dir, src / "testing" / "test_frame_mask"):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found: --src must be the official ShanghaiTech root")
    videos = sorted(p for p in train_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    tests = sorted(d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not videos or not tests:
        raise ValueError(f"{src} holds {len(videos)} training videos and {len(tests)} test clips; need both")
    return videos, tests


def _copy_mask(src: Path, dst_dir: Path, clip: str, n_frames: int) -> None:
    mask_path = src / "testing" / "test_frame_mask" / f"{clip}.npy"
    if not mask_path.is_file():
        raise FileNotFoundError(f"{mask_path} not found: every test clip needs its frame mask")
    mask = _as_label_vector(_load_npy(mask_path), str(mask_path))
    if len(mask) != n_frames:
        raise ValueError(f"{mask_path} has {len(mask)} labels but test clip {clip} has {n_frames} frames")
    with atomic_path(dst_dir / f"{clip}.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, _load_npy(mask_path))


def preprocess_shanghaitech(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    size: Sequence[int] = SHANGHAITECH_SIZE,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    dilate_iterations: int = DEFAULT_DILATE_ITERATIONS,
    background_recipe: str = DEFAULT_RECIPE,
    jpeg_quality: int = 100,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Official ShanghaiTech (training .avi, testing frame folders) -> the authors' layout.

    Clips whose output folder already exists are skipped, so an interrupted run resumes.
    Returns counts of written and skipped clips.
    """
    src, dst, size = Path(src), Path(dst), _check_size(size)
    recipe = get_recipe(background_recipe).name
    videos, tests = _official_sources(src)
    counts = {"written": 0, "skipped": 0}
    jobs = [("training", v.stem, v) for v in videos] + [("testing", d.name, d) for d in tests]
    for n, (split, clip, source) in enumerate(jobs, 1):
        out_dir = dst / split / "nobackground_frames_resized" / clip
        if split == "testing":
            _copy_mask(src, dst / "testing" / "test_frame_mask", clip, count_frames(source))
        if out_dir.is_dir():
            counts["skipped"] += 1
            continue
        frames = read_video(source) if split == "training" else read_frame_folder(source)
        write_clip_atomically(preprocess_frames(frames, size, threshold, dilate_iterations, recipe), out_dir, jpeg_quality)
        counts["written"] += 1
        log(f"[{n}/{len(jobs)}] {split}/{clip}: {len(frames)} frames")
    return counts
