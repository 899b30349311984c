"""Pixel-level metrics from MOCCA's texture patch scores: pixel AUROC and PRO (Bergmann et al., IJCV 2021).

MOCCA scores a 512x512 texture image as 64 patches of 64x64 (eq. 7); the score of patch (r, c)
is its score map's pixel (r, c). Upsampled to the mask's size by repetition (every pixel gets its
patch's score, the honest upsampling of a block score: no detail the model did not produce), both
metrics can be computed exactly from per-patch pixel counts, without materialising
N x 512 x 512 maps. The maps are never normalised per image: both metrics depend only on the order
of the scores over the whole test set.

- pixel AUROC: every pixel of every test image is a sample (label = its mask value).
- PRO: at each threshold, the mean over ground-truth regions (connected components of the masks,
  8-connectivity) of the fraction of the region above the threshold, against the false-positive
  rate over all normal pixels; the area under that curve up to FPR 0.3, divided by 0.3.
"""
from __future__ import annotations

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

PRO_MAX_FPR = 0.3


def _grid(masks: np.ndarray, patch_scores: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Masks (N, H, W) in {0, 1}; patch scores (N, G*G) row-major over the grid -> (masks, G, patch side)."""
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    n, h, w = masks.shape
    g = int(round(np.sqrt(patch_scores.shape[1])))
    if patch_scores.shape != (n, g * g) or h != w or h % g:
        raise ValueError(f"patch scores {patch_scores.shape} do not tile masks of {masks.shape}")
    return (masks > 0).astype(np.uint8), g, h // g


def patch_counts(masks: np.ndarray, grid: int) -> np.ndarray:
    """Anomalous pixels per patch: (N, grid*grid), row-major (the order of ``extract_patches``)."""
    n, h, _ = masks.shape
    p = h // grid
    return masks.reshape(n, grid, p, grid, p).sum(axis=(2, 4)).reshape(n, grid * grid).astype(np.int64)


def pixel_auroc(patch_scores: np.ndarray, masks: np.ndarray) -> float:
    """ROC AUC over all pixels, each pixel scored by its patch (exact, via per-patch pixel weights)."""
    masks, g, p = _grid(masks, patch_scores)
    anomalous = patch_counts(masks, g).ravel()
    normal = p * p - anomalous
    scores = np.asarray(patch_scores, dtype=np.float64).ravel()
    if anomalous.sum() == 0 or normal.sum() == 0:
        raise ValueError("pixel AUROC needs both anomalous and normal pixels in the masks")
    y = np.r_[np.ones_like(scores), np.zeros_like(scores)]
    weight = np.r_[anomalous, normal].astype(np.float64)
    keep = weight > 0
    return float(roc_auc_score(y[keep], np.r_[scores, scores][keep], sample_weight=weight[keep]))


def pro_curve(patch_scores: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct score, from the highest threshold down, starting at (0, 0)."""
    masks, g, p = _grid(masks, patch_scores)
    n = masks.shape[0]
    scores = np.asarray(patch_scores, dtype=np.float64).ravel()
    normal = (p * p - patch_counts(masks, g)).ravel().astype(np.float64)
    region_weight = np.zeros(n * g * g)  # per patch: sum over regions of (region pixels in it / region size)
    n_regions = 0
    for i in range(n):
        count, labels = cv2.connectedComponents(masks[i], connectivity=8)
        for r in range(1, count):
            region = (labels == r).astype(np.int64)
            per_patch = region.reshape(g, p, g, p).sum(axis=(1, 3)).ravel()
            region_weight[i * g * g:(i + 1) * g * g] += per_patch / per_patch.sum()
            n_regions += 1
    if n_regions == 0 or normal.sum() == 0:
        raise ValueError("PRO needs at least one anomalous region and some normal pixels")
    order = np.argsort(-scores, kind="stable")
    fpr = np.cumsum(normal[order]) / normal.sum()
    pro = np.cumsum(region_weight[order]) / n_regions
    last = np.r_[np.diff(scores[order]) != 0, True]  # ties: one point after the whole tie group
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def pro_auc(patch_scores: np.ndarray, masks: np.ndarray, max_fpr: float = PRO_MAX_FPR) -> float:
    """Area under the PRO curve for FPR in [0, max_fpr], divided by max_fpr (1 = perfect)."""
    fpr, pro = pro_curve(patch_scores, masks)
    stop = np.searchsorted(fpr, max_fpr, side="right")
    x, y = fpr[:stop], pro[:stop]
    if stop < len(fpr) and x[-1] < max_fpr:  # close the curve at max_fpr by linear interpolation
        x = np.r_[x, max_fpr]
        y = np.r_[y, np.interp(max_fpr, fpr[stop - 1:stop + 1], pro[stop - 1:stop + 1])]
    return float(np.trapezoid(y, x) / max_fpr)


def localisation_metrics(patch_scores: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    return {"pixel_auroc": pixel_auroc(patch_scores, masks), "pro": pro_auc(patch_scores, masks)}
