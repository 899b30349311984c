"""AUC and maxBA against scikit-learn and a brute-force threshold sweep."""
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from trainers.scoring import detection_metrics, max_balanced_accuracy, roc_auc


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
    assert detection_metrics(labels, np.array([0.1, 0.2, 0.8, 0.9])) == {"auc": 1.0, "max_ba": 1.0}
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_single_class_and_nan_are_errors():
    with pytest.raises(ValueError, match="both"):
        roc_auc(np.zeros(4), np.arange(4.0))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([0, 1]), np.array([0.0, np.nan]))
