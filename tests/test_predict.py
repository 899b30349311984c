"""tools.predict: a trained run scores new image files with the run's own preprocessing and threshold."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from main_cifar10 import main as main_cifar10
from tests.cifar_fixtures import make_cifar_folder
from tests.conftest import expect_user_error
from tools import predict

FAST = ["--preset", "cpu", "-ae", "2", "-e", "2", "-we", "1", "-bs", "16", "--no-progress", "-nc", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_cifar_folder(tmp_path_factory.mktemp("cifar"), n_train=40, n_test=4)


@pytest.fixture(autouse=True)
def _cache(isolated_cache):
    """Every test here decodes into the session's temp cache."""


def read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("boundary", ["hard", "soft"])
def test_predict_reproduces_the_test_scores_and_decides_at_the_stored_threshold(data_root, tmp_path, boundary):
    run = tmp_path / "run"
    main_cifar10(["-dp", str(data_root), *FAST, "-bd", boundary, "-ptr", "-tr", "-tt", "--run-dir", str(run)])
    rows = predict.main(["-ck", str(run / "model.pt"), str(data_root / "test"), "--out", str(tmp_path / "p.csv")])
    assert read(tmp_path / "p.csv")[0].keys() == rows[0].keys()
    want = read(run / "scores.csv")  # the same 40 test files, in the same (class, file) order
    assert len(rows) == len(want) == 40
    np.testing.assert_allclose([r["score"] for r in rows], [float(w["score"]) for w in want], rtol=1e-5, atol=1e-6)
    for j in (0, 1, 2, 3):
        np.testing.assert_allclose([r[f"score_layer_{j}"] for r in rows],
                                   [float(w[f"score_layer_{j}"]) for w in want], rtol=1e-5, atol=1e-6)
    threshold = rows[0]["threshold"]
    assert all(r["anomalous"] == int(r["score"] > threshold) for r in rows)
    if boundary == "soft":
        assert threshold == 0.0  # outside the spheres: d^2 > R^2 on average over the layers
    else:  # the (1 - nu) quantile of the training scores: a fraction nu of the normal training images is flagged
        train = predict.main(["-ck", str(run / "model.pt"), str(data_root / "train" / "automobile"), "--out",
                              str(tmp_path / "t.csv")])
        flagged = np.mean([r["anomalous"] for r in train])
        assert 0.0 < flagged <= 0.1 + 1 / 40


def test_bad_inputs_are_one_line_errors_and_write_nothing(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    main_cifar10(["-dp", str(data_root), *FAST, "-ptr", "-tr", "--run-dir", str(run)])
    ck = ["-ck", str(run / "model.pt")]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "p.csv"
    assert str(bad) in expect_user_error(predict.main, capsys, [*ck, str(bad), "--out", str(out)])
    assert "does not exist" in expect_user_error(predict.main, capsys, [*ck, str(tmp_path / "x.png"), "--out", str(out)])
    (tmp_path / "empty").mkdir()
    assert "no images" in expect_user_error(predict.main, capsys, [*ck, str(tmp_path / "empty"), "--out", str(out)])
    assert not out.exists()
    missing = ["-ck", str(tmp_path / "m.pt"), str(data_root / "test"), "--out", str(out)]
    assert "not found" in expect_user_error(predict.main, capsys, missing)


def test_predict_reproduces_an_mvtec_run_at_a_smaller_input_size(tmp_path):
    """Objects are decoded at the category's size, then downscaled to the run's --image-size, as in training."""
    from main_mvtec import main as main_mvtec
    from tests.mvtec_fixtures import make_mvtec_category

    root = tmp_path / "mvtec"
    make_mvtec_category(root, "hazelnut", n_train=4, n_good=2, n_defect=2, size=96)
    run = tmp_path / "run"
    main_mvtec(["-ptr", "-tr", "-tt", "-nc", "hazelnut", "-dp", str(root), "--image-size", "32", "-ile", "4",
                "--preset", "cpu", "-ae", "1", "-e", "1", "-bs", "4", "-zl", "16", "--no-progress",
                "--run-dir", str(run)])
    rows = predict.main(["-ck", str(run / "model.pt"), str(root / "hazelnut" / "test"), "--out",
                         str(tmp_path / "p.csv")])
    want = read(run / "scores.csv")  # test/<defect>/<file> in sorted order, as the loader lists them
    assert len(rows) == len(want) == 6
    np.testing.assert_allclose([r["score"] for r in rows], [float(w["score"]) for w in want], rtol=1e-5, atol=1e-6)
