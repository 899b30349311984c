"""main_shanghaitech.py end to end: generated ShanghaiTech layout (fast) and two real Ped2 clips."""
import csv
import json
import os

import numpy as np
import pytest

from main_shanghaitech import main
from tests.conftest import SHARED_DATA, expect_user_error, require
from tests.video_fixtures import make_authors_shanghaitech

FAST = ["--frame-size", "32", "48", "-zl", "32", "-hs", "8", "-bs", "2", "--clips-per-epoch", "4",
        "--centroid-clips", "4", "-e", "2", "-we", "1", "--test-batch-size", "8", "--no-progress"]


@pytest.fixture(autouse=True)
def _cache(isolated_cache):
    """Every test here decodes into the session's temp cache."""


def ped2_subset(tmp_path, clips=("01", "02")):
    """A Ped2 root holding only some real clips (symlinks), with the real ped2.mat labels."""
    src = require(SHARED_DATA / "ped2")
    root = tmp_path / "ped2"
    for split in ("training", "testing"):
        (root / split / "frames").mkdir(parents=True)
        for c in clips:
            os.symlink(src / split / "frames" / c, root / split / "frames" / c)
    os.symlink(src / "ped2.mat", root / "ped2.mat")
    return root


def test_real_ped2_two_clips_end_to_end(tmp_path):
    root = ped2_subset(tmp_path)
    m = main(["--dataset", "ped2", "-dp", str(root), "-ee", "-tt", "-ile", "5", "6", "--run-dir",
              str(tmp_path / "r"), *FAST])
    assert m["n_videos"] == 2 and m["n_frames"] == 360  # test clips 01 and 02: 180 frames each
    with open(tmp_path / "r" / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 360  # every frame scored
    labels = np.array([int(r["label"]) for r in rows])
    assert labels.sum() == 120 + 86  # abnormal frames of clips 01 and 02 in ped2.mat
    for kind in ("combined", "one_class", "reconstruction"):
        assert set(m["frame_auc"][kind]) >= {"micro", "per_video_mean"}
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["auc"] == pytest.approx(m["auc"]) and 0.5 <= saved["max_ba"] <= 1.0


def test_authors_layout_train_then_test_from_checkpoint(tmp_path):
    root = tmp_path / "st"
    make_authors_shanghaitech(root)
    main(["-dp", str(root), "-ee", "-ll", "-use", "-bd", "hard", "--run-dir", str(tmp_path / "a"), *FAST])
    m = main(["-dp", str(root), "-tt", "-ck", str(tmp_path / "a" / "model.pt"), "--run-dir", str(tmp_path / "b"),
              *FAST])
    assert m["boundary"] == "hard" and m["layers"] == [6]




def test_errors(tmp_path, capsys):
    assert "-ee" in expect_user_error(main, capsys, ["-dp", str(tmp_path), "-ptr", *FAST])
    assert "not found" in expect_user_error(main, capsys, ["-dp", str(tmp_path / "none"), "-ee", *FAST])
    assert "-ck" in expect_user_error(main, capsys, ["-dp", str(tmp_path), "-tt", *FAST])


def test_channels_last_is_applied_to_video_runs(tmp_path):
    """--channels-last lays out clips and 3-D conv weights as channels_last_3d; the numbers stay the same."""
    root = tmp_path / "st"
    make_authors_shanghaitech(root)
    plain = main(["-dp", str(root), "-ee", "-tt", "--run-dir", str(tmp_path / "a"), *FAST])
    fast = main(["-dp", str(root), "-ee", "-tt", "--run-dir", str(tmp_path / "b"), "--channels-last", *FAST])
    import torch

    state = torch.load(tmp_path / "b" / "model.pt", weights_only=False)["state"]
    conv = next(v for k, v in state.items() if v.dim() == 5)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    losses = [float(next(csv.DictReader(open(d / "train_log.csv")))["loss"]) for d in (tmp_path / "a", tmp_path / "b")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)  # float32 summation order only
    assert fast["auc"] == pytest.approx(plain["auc"], abs=0.05)


def test_video_objective_sums_the_heads_by_default(tmp_path):
    root = tmp_path / "st"
    make_authors_shanghaitech(root)
    args = ["-dp", str(root), "-ee", "-ile", "4", "5", "6", *FAST, "--clips-per-epoch", "2"]  # one step in epoch 1
    main([*args, "--run-dir", str(tmp_path / "s")])
    main([*args, "--run-dir", str(tmp_path / "m"), "--layer-reduction", "mean"])
    first = [next(csv.DictReader(open(tmp_path / d / "train_log.csv"))) for d in ("s", "m")]
    # epoch 1: same weights, same clips; one-class term of 3 heads summed = 3 x their mean
    assert float(first[0]["one_class"]) == pytest.approx(3 * float(first[1]["one_class"]), rel=1e-3)


def test_best_loss_checkpoint_is_tested(tmp_path):
    root = tmp_path / "st"
    make_authors_shanghaitech(root)
    m = main(["-dp", str(root), "-ee", "-tt", "--run-dir", str(tmp_path / "r"), *FAST, "-e", "3",
              "--test-checkpoint", "best-loss"])
    import torch

    with open(tmp_path / "r" / "train_log.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    best = torch.load(tmp_path / "r" / "model_best.pt", weights_only=False)
    assert best["epoch"] == max(i + 1 for i, v in enumerate(losses) if v == min(losses))
    again = main(["-dp", str(root), "-tt", "-ck", str(tmp_path / "r" / "model_best.pt"), "--run-dir",
                  str(tmp_path / "t"), *FAST, "-e", "3"])
    assert m["test_checkpoint"] == "best-loss" and again["auc"] == pytest.approx(m["auc"])
