"""main_cifar10.py end to end on tiny generated data: stages, run folder, resume, error paths."""
import csv
import json

import pytest
import torch

from main_cifar10 import main
from tests.conftest import Killed, expect_user_error, kill_after_saves
from trainers import engine
from tests.cifar_fixtures import make_cifar_folder

FAST = ["--preset", "cpu", "-ae", "2", "-e", "2", "-we", "1", "-bs", "16", "--no-progress"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_cifar_folder(tmp_path_factory.mktemp("cifar"), n_train=40, n_test=8)


@pytest.fixture(autouse=True)
def _cache(isolated_cache):
    """Every test here decodes into the session's temp cache."""


def run(data_root, run_dir, *flags):
    return main(["-dp", str(data_root), "-nc", "1", "--run-dir", str(run_dir), *FAST, *flags])


def test_all_stages_write_a_complete_run_folder(data_root, tmp_path):
    metrics = run(data_root, tmp_path / "r", "-ptr", "-tr", "-tt", "-bd", "soft", "-ile", "3", "0")
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"config.yaml", "env.json", "ae.pt", "model.pt", "metrics.json", "scores.csv",
            "pretrain_log.csv", "train_log.csv"} <= files
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["auc"] == pytest.approx(metrics["auc"]) and saved["layers"] == [3, 0]
    assert set(saved["per_layer"]) == {"3", "0"}
    with open(tmp_path / "r" / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 80 and set(rows[0]) == {"index", "label", "score", "score_layer_3", "score_layer_0", "class"}
    # soft boundary: radii were re-estimated after the warm-up epoch
    assert all(r > 0 for r in saved["radii"].values())


def test_scores_not_constant_and_centroids_not_zero(data_root, tmp_path):
    """Guard against the collapse where every sample maps to the centre (all scores equal)."""
    run(data_root, tmp_path / "r", "-ptr", "-tr", "-tt", "-bd", "hard")
    model = torch.load(tmp_path / "r" / "model.pt", weights_only=False)["state"]
    centers = [v for k, v in model.items() if k.startswith("objective.center_")]
    assert centers and all(c.abs().min() > 0 for c in centers)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["score_std"] > 1e-6


def test_stages_run_separately_from_checkpoints(data_root, tmp_path):
    run(data_root, tmp_path / "a", "-ptr")
    run(data_root, tmp_path / "b", "-tr", "-ck", str(tmp_path / "a" / "ae.pt"))
    m = run(data_root, tmp_path / "c", "-tt", "-ck", str(tmp_path / "b" / "model.pt"))
    together = run(data_root, tmp_path / "d", "-ptr", "-tr", "-tt")
    assert m["auc"] == pytest.approx(together["auc"])  # same seed, same result


def test_resume_continues_a_killed_run(data_root, tmp_path, monkeypatch):
    straight = run(data_root, tmp_path / "s", "-ptr", "-tr", "-tt", "-ae", "3")
    kill_after_saves(monkeypatch, engine, 1)  # killed right after AE epoch 1 was saved
    with pytest.raises(Killed):
        run(data_root, tmp_path / "k", "-ptr", "-tr", "-tt", "-ae", "3")
    resumed = run(data_root, tmp_path / "k", "-ptr", "-tr", "-tt", "-ae", "3", "--resume")
    assert resumed["auc"] == pytest.approx(straight["auc"], abs=1e-6)
    log = (tmp_path / "k" / "pretrain_log.csv").read_text().splitlines()
    assert len(log) == 4  # header + 3 epochs, the first one from before the "kill"


@pytest.mark.parametrize("changed", [["-ae", "4"], ["-lr", "1e-3"], ["-aml", "1"], ["-we", "0"], ["-wd", "1e-4"]])
def test_resume_with_other_settings_is_refused(data_root, tmp_path, monkeypatch, capsys, changed):
    kill_after_saves(monkeypatch, engine, 1)
    with pytest.raises(Killed):
        run(data_root, tmp_path / "k", "-ptr", "-tr", "-tt", "-ae", "3")
    before = (tmp_path / "k" / "config.yaml").read_text()
    msg = expect_user_error(main, capsys, ["-dp", str(data_root), "--run-dir", str(tmp_path / "k"), *FAST,
                                           "-ptr", "-tr", "-tt", "-ae", "3", "--resume", *changed])
    key = {"-ae": "ae_epochs", "-lr": "learning_rate", "-aml": "ae_lr_milestones", "-we": "warm_up_n_epochs",
           "-wd": "weight_decay"}[changed[0]]
    assert "--resume" in msg and key in msg
    assert (tmp_path / "k" / "config.yaml").read_text() == before  # the folder still describes its run


def test_runs_with_other_settings_get_other_folders(data_root, tmp_path):
    """Folder names carry a digest of every result-changing setting; how a run executes does not count."""
    base = ["-dp", str(data_root), "-nc", "1", "--output_path", str(tmp_path), *FAST, "-ptr", "-ae", "1"]
    main(base)
    main([*base, "-alr", "1e-2"])
    main([*base, "--no-progress", "--channels-last"])  # same settings: the same folder
    folders = sorted((tmp_path / "cifar10" / "1_automobile").iterdir())
    assert len(folders) == 2 and all("-cfg_" in f.name for f in folders)




def test_cli_error_paths(data_root, tmp_path, capsys):
    base = ["--run-dir", str(tmp_path / "e"), *FAST]
    assert "0-9" in expect_user_error(main, capsys, ["-dp", str(data_root), "-nc", "12", "-ptr", *base])
    assert "does not exist" in expect_user_error(main, capsys, ["-dp", str(tmp_path / "nope"), "-nc", "1", "-ptr", *base])
    assert "nothing to do" in expect_user_error(main, capsys, ["-dp", str(data_root), "-nc", "1", *base])
    assert "needs -ck" in expect_user_error(main, capsys, ["-dp", str(data_root), "-nc", "1", "-tr", *base])


def test_checkpoint_from_another_architecture(data_root, tmp_path, capsys):
    run(data_root, tmp_path / "a", "-ptr", "-zl", "64")
    msg = expect_user_error(main, capsys, ["-dp", str(data_root), "-nc", "1", "-tr", "-zl", "128",
                                     "-ck", str(tmp_path / "a" / "ae.pt"), "--run-dir", str(tmp_path / "b"), *FAST])
    assert "another architecture" in msg and "code_length" in msg
    assert not (tmp_path / "b" / "model.pt").exists()
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    assert "cannot be read" in expect_user_error(
        main, capsys, ["-dp", str(data_root), "-nc", "1", "-tt", "-ck", str(tmp_path / "junk.pt"), *FAST])


def test_nan_loss_stops_with_a_clear_error(data_root, tmp_path, capsys):
    msg = expect_user_error(main, capsys, ["-dp", str(data_root), "-nc", "1", "-ptr", "-alr", "1e30",
                                     "--run-dir", str(tmp_path / "n"), *FAST])
    assert "loss became" in msg
    assert not list((tmp_path / "n").glob("*.tmp"))


def test_best_loss_checkpoint_is_the_lowest_training_loss_epoch(data_root, tmp_path, capsys):
    m = run(data_root, tmp_path / "r", "-ptr", "-tr", "-tt", "-e", "4", "--test-checkpoint", "best-loss")
    with open(tmp_path / "r" / "train_log.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    best = torch.load(tmp_path / "r" / "model_best.pt", weights_only=False)
    assert best["epoch"] == max(i + 1 for i, v in enumerate(losses) if v == min(losses))
    assert m["test_checkpoint"] == "best-loss"
    again = run(data_root, tmp_path / "t", "-tt", "-ck", str(tmp_path / "r" / "model.pt"), "--test-checkpoint",
                "best-loss", "-e", "4")  # flags that contradict the trained model are refused
    assert again["auc"] == m["auc"]
    last = run(data_root, tmp_path / "l", "-tt", "-ck", str(tmp_path / "r" / "model.pt"), "-e", "4")
    assert last["test_checkpoint"] == "last"
    (tmp_path / "r" / "model_best.pt").unlink()
    msg = expect_user_error(main, capsys, ["-dp", str(data_root), "-nc", "1", "--run-dir", str(tmp_path / "u"), *FAST,
                                           "-tt", "-ck", str(tmp_path / "r" / "model.pt"), "--test-checkpoint",
                                           "best-loss", "-e", "4"])
    assert "model_best.pt" in msg
