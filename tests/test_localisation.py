"""Pixel AUROC and PRO from patch scores, against values computed by hand and a pixel-level reference."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trainers.localisation import pixel_auroc, pro_auc, pro_curve


def one_image():
    """A 4x4 image as a 2x2 grid of 2x2 patches; region A fills patch 0, region B is one pixel of patch 3
    (not 8-connected to A). Patch scores 0.9, 0.8 / 0.1, 0.5 (row-major)."""
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, :2, :2] = 1
    mask[0, 3, 3] = 1
    return np.array([[0.9, 0.8, 0.1, 0.5]]), mask


def test_pro_by_hand():
    scores, mask = one_image()
    fpr, pro = pro_curve(scores, mask)
    # normal pixels per patch 0, 4, 4, 3 (11 in all); order by score: patch 0, 1, 3, 2
    np.testing.assert_allclose(fpr, [0, 0, 4 / 11, 7 / 11, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1.0, 1.0])  # A found first, B with patch 3
    assert pro_auc(scores, mask) == pytest.approx(0.5)  # PRO 0.5 on all of [0, 0.3]
    assert pro_auc(scores, mask, max_fpr=1.0) == pytest.approx(4 / 11 * 0.5 + 3 / 11 * 0.75 + 4 / 11)


def test_pixel_auroc_by_hand_and_against_the_full_map():
    scores, mask = one_image()
    # anomalous pixels: 4 at 0.9, 1 at 0.5; normal: 4 at 0.8, 4 at 0.1, 3 at 0.5 -> (44 + 4 + 1.5) / 55
    assert pixel_auroc(scores, mask) == pytest.approx(49.5 / 55)
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 16, 16)) < 0.2).astype(np.uint8)
    patch = rng.normal(size=(3, 16))
    full = np.kron(patch.reshape(3, 4, 4), np.ones((4, 4)))  # every pixel gets its patch's score
    assert pixel_auroc(patch, masks) == pytest.approx(roc_auc_score(masks.ravel(), full.ravel()))


def test_perfect_map_and_errors():
    mask = np.zeros((2, 4, 4), np.uint8)
    mask[1, 2:, 2:] = 1
    scores = np.zeros((2, 4))
    scores[1, 3] = 1.0
    assert pixel_auroc(scores, mask) == 1.0 and pro_auc(scores, mask) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="anomalous region"):
        pro_auc(scores, np.zeros_like(mask))
    with pytest.raises(ValueError, match="do not tile"):
        pixel_auroc(np.zeros((2, 5)), mask)
