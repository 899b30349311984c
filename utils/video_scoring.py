"""Frame-level scoring of videos from clip scores (paper section V-A, equation 8) and frame AUC.

Pipeline per test video, as in the authors' code:
1. every stride-1 window of T frames gets a score (one-class score and reconstruction error);
2. a frame's score is the mean over the windows that contain it (``clip_scores_to_frame_scores``);
3. each score is min-max normalised over the video and OC + reconstruction are added 1:1
   (``combine_scores``);
4. frame AUC over all videos (``frame_auc``).

About equation 8: the paper prints (s - max) / (max - min), which would put every score in [-1, 0];
the code uses (s - min) / (max - min). The two differ by the constant -1 on every frame of every video,
so every AUC is identical; we use the code's [0, 1] form. The paper's words "within the clips in which
the frame is present" also suggest a local normalisation, but the code normalises over the whole video.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from utils.errors import UserError


def clip_scores_to_frame_scores(clip_scores: np.ndarray, n_frames: int, clip_length: int) -> np.ndarray:
    """Per-frame mean of the scores of all stride-1 windows containing the frame, shape (n_frames,).

    Window i covers frames i .. i + clip_length - 1, so there must be n_frames - clip_length + 1 scores;
    the first and last frames are covered by fewer windows (down to one), every frame by at least one.
    """
    scores = np.asarray(clip_scores, dtype=np.float64).ravel()
    expected = n_frames - clip_length + 1
    if clip_length < 1 or expected < 1 or len(scores) != expected:
        raise UserError(
            f"a video of {n_frames} frames has {max(expected, 0)} windows of {clip_length} frames, "
            f"but {len(scores)} clip scores were given"
        )
    kernel = np.ones(clip_length)
    sums = np.convolve(scores, kernel)  # length n_clips + clip_length - 1 = n_frames
    counts = np.convolve(np.ones_like(scores), kernel)
    return sums / counts


def minmax_normalise(x: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) over one video; a constant video maps to zeros (no NaN)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    low, high = np.min(x), np.max(x)
    if not np.isfinite(low) or not np.isfinite(high):
        raise UserError("scores contain NaN or infinity; the model diverged or the input is corrupt")
    span = high - low
    return np.zeros_like(x) if span == 0 else (x - low) / span


def combine_scores(
    oc: np.ndarray | Sequence[np.ndarray], recon: np.ndarray | Sequence[np.ndarray]
) -> np.ndarray | list[np.ndarray]:
    """Normalised OC + normalised reconstruction, per video, weights 1:1 (the authors' final score).

    Give one video's frame scores as arrays, or a list of videos (returns a list). For encoder-only
    models pass zeros as ``recon``: it normalises to zeros and leaves the OC score alone.
    """
    if isinstance(oc, np.ndarray):
        oc_arr, recon_arr = np.asarray(oc), np.asarray(recon)
        if oc_arr.shape != recon_arr.shape:
            raise UserError(f"OC scores {oc_arr.shape} and reconstruction scores {recon_arr.shape} differ in shape")
        return minmax_normalise(oc_arr) + minmax_normalise(recon_arr)
    if len(oc) != len(recon):
        raise UserError(f"{len(oc)} videos of OC scores but {len(recon)} of reconstruction scores")
    return [combine_scores(np.asarray(o), np.asarray(r)) for o, r in zip(oc, recon)]


def _checked_pairs(
    per_video_scores: Sequence[np.ndarray], per_video_labels: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(per_video_scores) != len(per_video_labels) or not per_video_scores:
        raise UserError(f"{len(per_video_scores)} videos of scores but {len(per_video_labels)} of labels")
    pairs = []
    for i, (s, y) in enumerate(zip(per_video_scores, per_video_labels)):
        s, y = np.asarray(s, dtype=np.float64).ravel(), np.asarray(y).ravel()
        if len(s) != len(y):
            raise UserError(f"video {i}: {len(s)} frame scores but {len(y)} frame labels")
        pairs.append((s, y))
    return pairs


def frame_auc(per_video_scores: Sequence[np.ndarray], per_video_labels: Sequence[np.ndarray]) -> dict:
    """Frame-level ROC AUC under both conventions found in the literature, labelled.

    ``micro``: one AUC over all frames of all videos concatenated (the authors' number).
    ``per_video_mean``: mean of per-video AUCs over the videos with both classes (None if none);
    ``per_video_used`` / ``per_video_skipped`` count the videos in / out of that mean, and
    ``per_video`` lists each video's AUC (None when skipped).
    """
    pairs = _checked_pairs(per_video_scores, per_video_labels)
    scores = np.concatenate([s for s, _ in pairs])
    labels = np.concatenate([y for _, y in pairs])
    if len(np.unique(labels)) != 2:
        raise UserError("frame AUC needs both normal (0) and abnormal (1) frames in the test labels")
    per_video = [float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None for s, y in pairs]
    used = [a for a in per_video if a is not None]
    return {
        "micro": float(roc_auc_score(labels, scores)),
        "per_video_mean": float(np.mean(used)) if used else None,
        "per_video_used": len(used),
        "per_video_skipped": len(per_video) - len(used),
        "per_video": per_video,
    }
