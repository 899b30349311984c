"""A short real run on the shared CIFAR-10 subset: one class, a few epochs, AUC clearly above chance."""
import pytest

from main_cifar10 import main
from tests.conftest import CIFAR10_DATA, require


@pytest.mark.parametrize("boundary", ["soft"])
def test_short_real_run_beats_chance(tmp_path, boundary):
    data = require(CIFAR10_DATA)
    metrics = main(["-ptr", "-tr", "-tt", "-nc", "1", "-dp", str(data), "-bd", boundary, "--preset", "cpu",
                    "-ae", "2", "-e", "2", "--no-progress", "--run-dir", str(tmp_path / "run")])
    assert metrics["n_test"] == 5000 and metrics["n_anomalous"] == 4500
    assert metrics["auc"] > 0.6, metrics  # chance 0.5; measured 0.674 on 1 thread, 0.675 on 2 (AMD EPYC, AVX2)
    assert metrics["max_ba"] > 0.55
