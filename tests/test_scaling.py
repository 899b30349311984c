"""benchmarks.scaling: the tables are built and printed (tiny sizes, 1 timed step), and the grouped
loss it times is the sum of the single runs' losses. No timing is asserted."""
from __future__ import annotations

import pytest
import torch

from benchmarks import scaling
from models.lenet import LeNetAutoencoder
from models.lenet_grouped import GroupedLeNetAutoencoder, stack_runs
from trainers.objective import reconstruction_loss

TINY = ["--batches", "1", "--images", "16", "32", "--epochs", "2", "--sizes", "16", "24", "--layer-size", "16",
        "--k", "1", "2", "--cifar-batch", "8", "--mvtec-batch", "4"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread."""


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of the output, each as rows of cells (header first, separator dropped)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            if not line.startswith("|---"):
                current.append([c.strip() for c in line.strip("|").split("|")])
        else:
            current = None
    return tables


def test_all_tables_print(capsys):
    scaling.main(["cifar10", "mvtec", "batched", *TINY])
    out = capsys.readouterr().out
    tables = _tables(out)
    n_rows = [2, len(scaling.CIFAR_LAYER_SETS), 2, 2 * len(scaling.MVTEC_LAYER_SETS), 2 * 2]
    assert [len(t) - 1 for t in tables] == n_rows
    for t in tables:
        assert all(len(row) == len(t[0]) for row in t), t
    epochs = tables[0]
    assert epochs[0][2:4] == ["epoch 1 s", "epoch 2 s"]
    assert [r[0] for r in epochs[1:]] == ["16", "32"] and [r[1] for r in epochs[1:]] == ["2", "4"]
    assert [r[0] for r in tables[2][1:]] == ["16", "24"]
    assert [r[1] for r in tables[3][1:]] == ["no"] * 3 + ["yes"] * 3
    assert [(r[0], r[1]) for r in tables[4][1:]] == [("pretraining", "1"), ("pretraining", "2"),
                                                     ("one-class", "1"), ("one-class", "2")]
    for t in tables:  # every rate is a positive number
        rates = [i for i, name in enumerate(t[0]) if "img/s" in name or "images/s" in name]
        assert rates, t[0]
        assert all(float(row[i]) > 0 for row in t[1:] for i in rates), t


def test_grouped_ae_loss_is_the_sum_of_the_runs_losses():
    torch.manual_seed(0)
    singles = [LeNetAutoencoder(16).double() for _ in range(3)]  # float64: equality is the claim
    grouped = GroupedLeNetAutoencoder.from_models(singles)
    x = torch.rand(3, 4, 3, 32, 32, dtype=torch.float64)
    expected = sum(reconstruction_loss(x[r].double(), m(x[r]).double()) for r, m in enumerate(singles))
    got = scaling.grouped_ae_loss(grouped, 3)(stack_runs(x))
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-6, atol=1e-6)
