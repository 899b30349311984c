"""Scoring and metrics, for images and video alike: test distances -> eq. 6/7 scores -> AUC, maxBA;
clip scores -> eq. 8 frame scores -> frame AUC.

Eq. 6 per layer needs the radii, so it is ``MultiLayerObjective.layer_scores`` / ``combined_score``;
everything after it lives here. Distances and scores stay on the model's device until ``to_numpy``,
the single device-to-host step.

Metrics. Detection metrics: ROC AUC and maxBA (best balanced accuracy over all thresholds).

Both come from one scikit-learn ROC curve, computed with ``drop_intermediate=False`` so maxBA
is the true maximum over every threshold, not over the curve's corner points only.

Video, eq. 8. Frame-level scoring of videos from clip scores (paper section V-A, equation 8) and frame AUC.

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

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
from torch import Tensor, nn

from trainers.objective import MultiLayerObjective, max_over_patches


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------

def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    if len(np.unique(labels)) != 2:
        raise ValueError("AUC needs both normal (0) and anomalous (1) samples in the test set")
    return labels, scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; label 1 = anomaly, higher score = more anomalous."""
    labels, scores = _check(labels, scores)
    return float(roc_auc_score(labels, scores))


def max_balanced_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """max over thresholds of (TPR + TNR) / 2."""
    labels, scores = _check(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(np.max((tpr + 1.0 - fpr) / 2.0))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, scikit-learn's average precision); anomaly = positive."""
    labels, scores = _check(labels, scores)
    return float(average_precision_score(labels, scores))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The best F1 over thresholds and that threshold (anomalous = score >= threshold)."""
    labels, scores = _check(labels, scores)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def detection_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Threshold-free image (or frame) metrics: ROC AUC, maxBA, AP and F1-max with its threshold."""
    f1, threshold = f1_max(labels, scores)
    return {"auc": roc_auc(labels, scores), "max_ba": max_balanced_accuracy(labels, scores),
            "ap": average_precision(labels, scores), "f1_max": f1, "f1_threshold": threshold}


def per_group_auc(labels: np.ndarray, scores: np.ndarray, groups: Sequence[str]) -> dict[str, float]:
    """AUC of each anomalous group (an MVTec defect type, a CIFAR-10 class) against all normal samples."""
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64)
    groups = np.asarray([str(g) for g in groups], dtype=object)
    normal = labels == 0
    out = {}
    for g in dict.fromkeys(groups[labels == 1]):
        pick = normal | ((groups == g) & (labels == 1))
        out[str(g)] = roc_auc(labels[pick], scores[pick])
    return out


# ------------------------------------------------------------------------------------------------
# test distances and eq. 6/7 scores of a model
# ------------------------------------------------------------------------------------------------

@dataclass
class ScoreResult:
    """Per-sample scores (one column per layer plus the combined score) and their metrics."""

    labels: np.ndarray
    layer_scores: dict[int, np.ndarray]
    scores: np.ndarray
    metrics: dict
    patch_scores: np.ndarray | None = None  # textures: (N, patches) combined score of every patch (the map)


@torch.no_grad()
def test_distances(net: nn.Module, objective: MultiLayerObjective, batches: Iterable[Tensor],
                   prepare: Callable[[Tensor], Tensor] = lambda x: x) -> dict[int, Tensor]:
    """Squared distances per layer for every test sample, in one batched pass (net in eval mode):
    {j: (N,)}, or {j: (K, N)} for a grouped model.

    They stay on the model's device, next to the objective's radii; ``to_numpy`` is the only way
    out to the host, once, after scoring (eq. 6 subtracts R^2 from them).
    """
    net.eval()
    parts: dict[int, list[Tensor]] = {k: [] for k in objective.layer_indices}
    for x in batches:
        for k, d in objective.distances(net(prepare(x))).items():
            parts[k].append(d.float())
    return {k: torch.cat(v, dim=-1) for k, v in parts.items()}  # samples are the last axis (one or K runs)


def score_tensors(objective: MultiLayerObjective, distances: dict[int, Tensor],
                  patches_per_image: int | None = None) -> tuple[dict[int, Tensor], Tensor]:
    """Eq. 6 per layer and combined (eq. 7 max over patches if given), on the objective's device."""
    per_layer = objective.layer_scores(distances)
    combined = objective.combined_score(per_layer)
    if patches_per_image:
        per_layer = {k: max_over_patches(v, patches_per_image) for k, v in per_layer.items()}
        combined = max_over_patches(combined, patches_per_image)
    return per_layer, combined


def to_numpy(t: Tensor) -> np.ndarray:
    """The single device-to-host step of scoring: float64 NumPy for the metrics."""
    return t.detach().cpu().numpy().astype(np.float64)


def score_and_evaluate(objective: MultiLayerObjective, distances: dict[int, Tensor], labels: np.ndarray,
                       patches_per_image: int | None = None) -> ScoreResult:
    """Turn distances into eq. 6 scores (eq. 7 max over patches if given) and compute AUC / maxBA."""
    per_layer, combined = score_tensors(objective, distances, patches_per_image)
    layer_np = {k: to_numpy(v) for k, v in per_layer.items()}
    combined_np = to_numpy(combined)
    patches = None
    if patches_per_image:  # the eq. 6 score of every patch, before eq. 7's max: the texture's score map
        patches = to_numpy(objective.combined_score(objective.layer_scores(distances))).reshape(-1, patches_per_image)
    if not np.isfinite(combined_np).all():
        raise ValueError("test scores contain NaN or inf: the model diverged")
    metrics = detection_metrics(labels, combined_np)
    metrics["per_layer"] = {str(k): detection_metrics(labels, v) for k, v in layer_np.items()}
    metrics["score_std"] = float(np.std(combined_np))
    return ScoreResult(labels=np.asarray(labels), layer_scores=layer_np, scores=combined_np, metrics=metrics,
                       patch_scores=patches)


# ------------------------------------------------------------------------------------------------
# video: clip scores -> frame scores (eq. 8) -> frame AUC
# ------------------------------------------------------------------------------------------------

def clip_scores_to_frame_scores(clip_scores: np.ndarray, n_frames: int, clip_length: int) -> np.ndarray:
    """Per-frame mean of the scores of all stride-1 windows containing the frame, shape (n_frames,).

    Window i covers frames i .. i + clip_length - 1, so there must be n_frames - clip_length + 1 scores;
    the first and last frames are covered by fewer windows (down to one), every frame by at least one.
    """
    scores = np.asarray(clip_scores, dtype=np.float64).ravel()
    expected = n_frames - clip_length + 1
    if clip_length < 1 or expected < 1 or len(scores) != expected:
        raise ValueError(
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
        raise ValueError("scores contain NaN or infinity; the model diverged or the input is corrupt")
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
            raise ValueError(f"OC scores {oc_arr.shape} and reconstruction scores {recon_arr.shape} differ in shape")
        return minmax_normalise(oc_arr) + minmax_normalise(recon_arr)
    if len(oc) != len(recon):
        raise ValueError(f"{len(oc)} videos of OC scores but {len(recon)} of reconstruction scores")
    return [combine_scores(np.asarray(o), np.asarray(r)) for o, r in zip(oc, recon)]


def _checked_pairs(
    per_video_scores: Sequence[np.ndarray], per_video_labels: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(per_video_scores) != len(per_video_labels) or not per_video_scores:
        raise ValueError(f"{len(per_video_scores)} videos of scores but {len(per_video_labels)} of labels")
    pairs = []
    for i, (s, y) in enumerate(zip(per_video_scores, per_video_labels)):
        s, y = np.asarray(s, dtype=np.float64).ravel(), np.asarray(y).ravel()
        if len(s) != len(y):
            raise ValueError(f"video {i}: {len(s)} frame scores but {len(y)} frame labels")
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
        raise ValueError("frame AUC needs both normal (0) and abnormal (1) frames in the test labels")
    per_video = [float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None for s, y in pairs]
    used = [a for a in per_video if a is not None]
    return {
        "micro": float(roc_auc_score(labels, scores)),
        "per_video_mean": float(np.mean(used)) if used else None,
        "per_video_used": len(used),
        "per_video_skipped": len(per_video) - len(used),
        "per_video": per_video,
    }
