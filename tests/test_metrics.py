"""AUC, maxBA, AP, F1-max and per-group AUC against scikit-learn and brute-force threshold sweeps."""
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from trainers.scoring import average_precision, detection_metrics, f1_max, max_balanced_accuracy, per_group_auc, roc_auc


def brute_force_max_ba(labels, scores):
    best = 0.0
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        best = max(best, balanced_accuracy_score(labels, (scores >= t).astype(int)))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels * 0.8
    scores[:20] = np.round(scores[:20])  # some ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert max_balanced_accuracy(labels, scores) == pytest.approx(brute_force_max_ba(labels, scores))


def test_perfect_and_inverted_scores():
    labels = np.array([0, 0, 1, 1])
    m = detection_metrics(labels, np.array([0.1, 0.2, 0.8, 0.9]))
    assert (m["auc"], m["max_ba"], m["ap"], m["f1_max"], m["f1_threshold"]) == (1.0, 1.0, 1.0, 1.0, 0.8)
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_single_class_and_nan_are_errors():
    with pytest.raises(ValueError, match="both"):
        roc_auc(np.zeros(4), np.arange(4.0))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([0, 1]), np.array([0.0, np.nan]))


def brute_force_f1_and_ap(labels, scores):
    """Every distinct score as threshold (anomalous = score >= t): the best F1, and AP as the sum over
    thresholds, from the highest down, of (recall gained) x (precision there)."""
    best, best_t, ap, prev_recall = 0.0, None, 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        precision, recall = tp / pred.sum(), tp / np.sum(labels == 1)
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        if f1 > best:
            best, best_t = f1, t
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return best, best_t, ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_and_f1_max_match_a_brute_force_sweep(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    scores[:30] = np.round(scores[:30], 1)  # ties
    f1, threshold = f1_max(labels, scores)
    want_f1, want_t, want_ap = brute_force_f1_and_ap(labels, scores)
    assert f1 == pytest.approx(want_f1) and threshold == want_t
    assert average_precision(labels, scores) == pytest.approx(want_ap)


def test_per_group_auc_is_each_group_against_the_normal_samples():
    labels = np.array([0, 0, 1, 1, 1, 1])
    groups = ["good", "good", "crack", "crack", "hole", "hole"]
    scores = np.array([0.1, 0.5, 0.6, 0.7, 0.0, 0.3])
    got = per_group_auc(labels, scores, groups)
    assert got == {"crack": 1.0, "hole": 0.25}  # hole: 0.3 beats 0.1 only -> 1 of 4 pairs
