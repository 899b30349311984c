"""Detection metrics: ROC AUC and maxBA (best balanced accuracy over all thresholds).

Both come from one scikit-learn ROC curve, computed with ``drop_intermediate=False`` so maxBA
is the true maximum over every threshold, not over the curve's corner points only.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


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


def detection_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {"auc": roc_auc(labels, scores), "max_ba": max_balanced_accuracy(labels, scores)}
