"""Clip -> frame scores, per-video min-max (equation 8), 1:1 combination and frame AUC conventions."""
from __future__ import annotations

import numpy as np
import pytest

from trainers.scoring import clip_scores_to_frame_scores, combine_scores, frame_auc, minmax_normalise


def test_frame_score_is_mean_of_windows_containing_it():
    # 5 frames, windows of 3: [0,1,2] -> 1, [1,2,3] -> 2, [2,3,4] -> 3
    frames = clip_scores_to_frame_scores(np.array([1.0, 2.0, 3.0]), n_frames=5, clip_length=3)
    np.testing.assert_allclose(frames, [1.0, 1.5, 2.0, 2.5, 3.0])


def test_single_window_scores_every_frame():
    np.testing.assert_allclose(clip_scores_to_frame_scores(np.array([7.0]), 16, 16), np.full(16, 7.0))


def test_every_frame_covered_for_realistic_lengths():
    for n_frames in (16, 17, 150, 180):
        scores = np.arange(n_frames - 15, dtype=float)
        frames = clip_scores_to_frame_scores(scores, n_frames, 16)
        assert frames.shape == (n_frames,) and np.isfinite(frames).all()
        assert frames[0] == 0 and frames[-1] == n_frames - 16


def test_wrong_number_of_clip_scores_is_user_error():
    with pytest.raises(ValueError, match="3 windows"):
        clip_scores_to_frame_scores(np.zeros(4), n_frames=5, clip_length=3)
    with pytest.raises(ValueError):
        clip_scores_to_frame_scores(np.zeros(1), n_frames=2, clip_length=3)


def test_minmax_normalise():
    np.testing.assert_allclose(minmax_normalise(np.array([2.0, 4.0, 6.0])), [0.0, 0.5, 1.0])
    constant = minmax_normalise(np.full(4, 3.0))
    assert not np.isnan(constant).any() and (constant == 0).all()
    with pytest.raises(ValueError, match="NaN"):
        minmax_normalise(np.array([1.0, np.nan]))


def test_combine_scores_one_to_one_per_video():
    oc, recon = np.array([0.0, 10.0, 5.0]), np.array([100.0, 300.0, 500.0])
    np.testing.assert_allclose(combine_scores(oc, recon), [0.0, 1.5, 1.5])  # [0, 1, .5] + [0, .5, 1]
    both = combine_scores([oc, np.array([1.0, 3.0])], [recon, np.zeros(2)])
    np.testing.assert_allclose(both[0], [0.0, 1.5, 1.5])
    np.testing.assert_allclose(both[1], [0.0, 1.0])  # encoder-only: zero recon adds nothing
    with pytest.raises(ValueError):
        combine_scores(oc, recon[:2])


def test_paper_equation_8_form_gives_the_same_auc():
    """The paper prints (s - max)/(max - min); the code uses (s - min)/(max - min): a -1 shift."""
    rng = np.random.default_rng(0)
    videos = [rng.normal(size=n) * (i + 1) + 5 * i for i, n in enumerate((30, 40, 25))]
    labels = [(rng.random(len(v)) < 0.3).astype(int) for v in videos]
    ours = [minmax_normalise(v) for v in videos]
    paper = [(v - v.max()) / (v.max() - v.min()) for v in videos]
    np.testing.assert_allclose(np.concatenate(paper), np.concatenate(ours) - 1)
    assert frame_auc(ours, labels)["micro"] == pytest.approx(frame_auc(paper, labels)["micro"])


def test_frame_auc_reports_both_conventions():
    scores = [np.array([0.0, 1.0]), np.array([2.0, 3.0, 4.0]), np.array([5.0, 6.0])]
    labels = [np.array([0, 1]), np.array([1, 0, 0]), np.array([0, 0])]
    result = frame_auc(scores, labels)
    # micro: positives {1, 2} vs negatives {0, 3, 4, 5, 6}: 2 of 10 pairs ranked right
    assert result["micro"] == pytest.approx(0.2)
    # per video: 1.0 and 0.0; the all-normal third video is skipped
    assert result["per_video"] == [1.0, 0.0, None]
    assert result["per_video_mean"] == pytest.approx(0.5)
    assert (result["per_video_used"], result["per_video_skipped"]) == (2, 1)


def test_frame_auc_input_errors():
    with pytest.raises(ValueError, match="both normal"):
        frame_auc([np.zeros(3)], [np.zeros(3)])
    with pytest.raises(ValueError, match="3 frame scores but 2"):
        frame_auc([np.zeros(3)], [np.array([0, 1])])
    with pytest.raises(ValueError, match="videos"):
        frame_auc([np.zeros(3)], [])
