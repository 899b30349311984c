"""tools.report / tools.plots on synthetic results folders with hand-picked metrics."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from tools import report
from tools.plots import layer_distances, plot_distance_cdfs, plot_roc, plot_training_curves
from utils import results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_run(root: Path, name: str, *, dataset: str = "cifar10", cls: int | str = 1, boundary: str = "soft",
             layers=(0, 1, 2, 3), seed: int = 0, auc: float = 0.7, max_ba: float | None = None,
             presets=("cpu",), config: dict | None = None, scores: bool = False, radii: dict | None = None,
             d2: dict | None = None, labels=None) -> Path:
    """A finished run folder as the entry scripts write it (metrics.json, config.yaml, optional scores)."""
    run = root / name
    run.mkdir(parents=True)
    is_cifar = dataset == "cifar10"
    class_name = f"{cls}_{CIFAR_NAMES[cls]}" if is_cifar else str(cls)
    radii = radii or {j: (0.5 if boundary == "soft" else 0.0) for j in layers}
    cfg = {"seed": seed, "boundary": boundary, "idx_list_enc": list(layers), "nu": 0.1, "epochs": 10, "ae_epochs": 20,
           "presets": list(presets), "run_dir": str(run), "data_path": "/data", "model_ckp": None}
    if is_cifar:
        cfg["normal_class"] = cls
    cfg.update(config or {})
    results.write_config(run, cfg, {"code_version": "test"})
    metrics = {"dataset": dataset, "class": class_name, "boundary": boundary, "layers": list(layers),
               "nu": cfg["nu"], "seed": seed, "auc": auc, "max_ba": auc if max_ba is None else max_ba,
               "per_layer": {str(j): {"auc": auc, "max_ba": auc} for j in layers},
               "radii": {str(j): r for j, r in radii.items()}, "n_test": 0, "n_anomalous": 0}
    if is_cifar:
        metrics["normal_class"] = cls
    if scores:
        rng = np.random.default_rng(seed)
        labels = np.asarray(labels if labels is not None else [0] * 30 + [1] * 30)
        d2 = d2 or {j: rng.gamma(2.0, 1.0 + labels, size=len(labels)) for j in layers}
        shift = {j: (radii[j] ** 2 if boundary == "soft" else 0.0) for j in layers}
        layer_scores = {j: d2[j] - shift[j] for j in layers}
        combined = np.mean([layer_scores[j] for j in layers], axis=0)
        results.write_scores(run / results.SCORES_FILE, labels, combined, layer_scores)
        history = [{"epoch": e, "loss": 10.0 / e, "lr": 1e-4, "seconds": 1.0,
                    **{f"dist_{j}": 1.0 / e + j for j in layers}, **{f"radius_{j}": radii[j] for j in layers}}
                   for e in (1, 2, 3)]
        results.write_history(run / "train_log.csv", history)
        results.write_history(run / "pretrain_log.csv", [{"epoch": e, "loss": 50.0 / e, "lr": 1e-3, "seconds": 1.0}
                                                         for e in (1, 2)])
        metrics["n_test"], metrics["n_anomalous"] = len(labels), int(labels.sum())
    results.write_metrics(run, metrics)
    return run


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def row_of(rows, key, value):
    return next(r for r in rows if r[key] == value)


@pytest.fixture
def cifar_folder(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for seed, auc in enumerate([0.70, 0.72, 0.74]):  # class 1 soft: mean 0.72, std(ddof=1) 0.02
        make_run(root / "runs", f"1-soft-s{seed}", boundary="soft", seed=seed, auc=auc)
    for seed, auc in enumerate([0.70, 0.72]):  # class 1 hard: mean 0.71, std 0.0141421
        make_run(root / "runs", f"1-hard-s{seed}", boundary="hard", seed=seed, auc=auc)
    make_run(root / "runs", "0-soft-s0", cls=0, boundary="soft", seed=0, auc=0.62)  # one seed: no std
    for seed, auc in enumerate([0.65, 0.66]):  # holistic baseline (preset + last layer only)
        make_run(root / "runs", f"1-hol-s{seed}", boundary="soft", seed=seed, auc=auc, layers=(3,),
                 presets=("cpu", "holistic"))
    (root / "pretrain" / "x").mkdir(parents=True)  # folders without metrics.json are not runs
    return root


def test_table1_means_stds_differences_and_marks(cifar_folder: Path):
    text, tables, _ = report.write_report(cifar_folder, plots=False)
    out = cifar_folder / "report"
    rows = read_rows(out / "table1_cifar10.csv")
    assert [r["class_index"] for r in rows] == [str(i) for i in range(10)] + ["mean"]
    c1 = row_of(rows, "class_index", "1")
    assert float(c1["mocca_soft_mean"]) == pytest.approx(0.72)
    assert float(c1["mocca_soft_std"]) == pytest.approx(0.02)  # ddof=1 (ddof=0 would give 0.01633)
    assert c1["mocca_soft_n_seeds"] == "3"
    assert float(c1["mocca_soft_paper"]) == pytest.approx(0.746)
    assert float(c1["mocca_soft_diff"]) == pytest.approx(0.72 - 0.746)
    assert c1["mocca_soft_outside_2std"] == "1"  # |-0.026| > 2 * 0.008
    assert float(c1["mocca_hard_mean"]) == pytest.approx(0.71)
    assert float(c1["mocca_hard_std"]) == pytest.approx(math.sqrt(0.0002))
    assert float(c1["mocca_hard_diff"]) == pytest.approx(0.005)
    assert c1["mocca_hard_outside_2std"] == "0"
    # the holistic runs are compared with Deep SVDD, not mixed into MOCCA
    assert float(c1["holistic_soft_mean"]) == pytest.approx(0.655)
    assert float(c1["holistic_soft_paper"]) == pytest.approx(0.648)
    c0 = row_of(rows, "class_index", "0")
    assert float(c0["mocca_soft_mean"]) == pytest.approx(0.62) and c0["mocca_soft_std"] == ""
    assert c0["mocca_hard_n_seeds"] == "0" and c0["mocca_hard_mean"] == ""
    # Markdown: ours beside the paper, the difference, the mark
    line = next(ln for ln in text.splitlines() if ln.startswith("| 1 automobile"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == ["0.720 ± 0.020", "0.746 ± 0.008", "-0.026 *"]
    assert cells[4:7] == ["0.710 ± 0.014", "0.705 ± 0.013", "+0.005"]
    assert cells[7:10] == ["0.655 ± 0.007", "0.648 ± 0.014", "+0.007"]
    line0 = next(ln for ln in text.splitlines() if ln.startswith("| 0 airplane"))
    assert [c.strip() for c in line0.strip("|").split("|")][1:4] == ["0.620", "0.626 ± 0.021", "-0.006"]
    mean_line = next(ln for ln in text.splitlines() if ln.startswith("| mean"))
    assert "(2/10 classes)" in mean_line
    assert "coverage: 4 cells from 8 runs; seeds per cell: 1-3" in text
    assert (out / "report.md").read_text() == text
    assert len(read_rows(out / "runs.csv")) == 8
    assert any(t.name == "table7_layers-cifar10-1_automobile" for t in tables)  # two layer variants


def test_mean_row_over_all_classes(tmp_path: Path):
    root = tmp_path / "r"
    for cls in range(10):
        for seed in (0, 1):
            make_run(root, f"c{cls}-s{seed}", cls=cls, boundary="hard", seed=seed, auc=0.60 + 0.01 * cls + 0.02 * seed)
    report.write_report(root, plots=False)
    mean = row_of(read_rows(root / "report" / "table1_cifar10.csv"), "class_index", "mean")
    # per-seed class averages: 0.645 and 0.665 -> mean 0.655, std(ddof=1) 0.0141421
    assert float(mean["mocca_hard_mean"]) == pytest.approx(0.655)
    assert float(mean["mocca_hard_std"]) == pytest.approx(0.02 / math.sqrt(2))
    assert float(mean["mocca_hard_diff"]) == pytest.approx(0.655 - 0.669)
    assert mean["mocca_hard_outside_2std"] == "0"


def test_other_varying_hyperparameters_split_the_tables(tmp_path: Path):
    root = tmp_path / "r"
    make_run(root, "a", auc=0.70, config={"nu": 0.05})
    make_run(root, "b", auc=0.60, config={"nu": 0.1})
    make_run(root, "c", auc=0.80, seed=1, config={"nu": 0.1})
    _, tables, _ = report.write_report(root, plots=False)
    names = sorted(t.name for t in tables)
    assert [n for n in names if n.startswith("table1")] == ["table1_cifar10-nu_0.05", "table1_cifar10-nu_0.1"]
    assert [n for n in names if n.startswith("evaluation")] == ["evaluation-cifar10-nu_0.05", "evaluation-cifar10-nu_0.1"]
    c1 = row_of(read_rows(root / "report" / "table1_cifar10-nu_0.1.csv"), "class_index", "1")
    assert float(c1["mocca_soft_mean"]) == pytest.approx(0.70) and c1["mocca_soft_n_seeds"] == "2"
    assert {t.title for t in tables} >= {"CIFAR-10 one-class ROC AUC (Table I layout) — nu=0.05"}


def test_mvtec_tables_pick_best_layer_set_and_leather_ablation(tmp_path: Path):
    root = tmp_path / "r"
    for seed, ba in enumerate([0.80, 0.84]):
        make_run(root, f"bottle-a{seed}", dataset="mvtec", cls="bottle", layers=(5, 6), seed=seed, auc=0.9, max_ba=ba)
        make_run(root, f"bottle-b{seed}", dataset="mvtec", cls="bottle", layers=(6,), seed=seed, auc=0.95,
                 max_ba=ba - 0.1)
    for seed, ba in enumerate([0.90, 0.92]):  # paper 4,5,6 soft: 0.955 ± 0.007 -> outside
        make_run(root, f"leather-s{seed}", dataset="mvtec", cls="leather", layers=(4, 5, 6), seed=seed, auc=0.97,
                 max_ba=ba)
    for seed, ba in enumerate([0.905, 0.907]):  # paper 4,5,6 hard: 0.906 ± 0.001 -> inside
        make_run(root, f"leather-h{seed}", dataset="mvtec", cls="leather", boundary="hard", layers=(4, 5, 6),
                 seed=seed, auc=0.96, max_ba=ba)
    text, tables, _ = report.write_report(root, plots=False)
    out = root / "report"
    rows = read_rows(out / "table3_4_mvtec.csv")
    assert rows[0]["category"] == "carpet" and rows[-1]["category"] == "mean" and len(rows) == 16
    bottle = row_of(rows, "category", "bottle")
    assert bottle["layers_soft"] == "5,6"  # higher mean maxBA than layer 6 alone
    assert float(bottle["max_ba_soft_mean"]) == pytest.approx(0.82)
    assert float(bottle["max_ba_soft_std"]) == pytest.approx(math.sqrt(0.0008))
    assert float(bottle["max_ba_soft_diff"]) == pytest.approx(0.82 - 0.90)
    assert float(bottle["auc_soft_mean"]) == pytest.approx(0.9) and float(bottle["auc_soft_paper"]) == 0.95
    assert bottle["max_ba_hard_mean"] == ""
    leather = read_rows(out / "table7_layers-mvtec-leather.csv")
    assert [r["layers"] for r in leather] == ["6", "5,6", "4,5,6", "3,4,5,6", "2,3,4,5,6", "1,2,3,4,5,6",
                                              "0,1,2,3,4,5,6"]
    r456 = row_of(leather, "layers", "4,5,6")
    assert float(r456["max_ba_soft_mean"]) == pytest.approx(0.91)
    assert float(r456["max_ba_soft_paper"]) == pytest.approx(0.955)
    assert r456["max_ba_soft_outside_2std"] == "1"
    assert float(r456["max_ba_hard_diff"]) == pytest.approx(0.906 - 0.906, abs=1e-9)
    assert r456["max_ba_hard_outside_2std"] == "0"
    assert row_of(leather, "layers", "6")["max_ba_hard_mean"] == ""
    bottle_layers = read_rows(out / "table7_layers-mvtec-bottle.csv")  # two layer sets: a layer table, no paper
    assert [r["layers"] for r in bottle_layers] == ["6", "5,6"] and bottle_layers[0]["max_ba_soft_paper"] == ""
    assert "0.910 ± 0.014 | 0.955 ± 0.007 | -0.045 *" in text


def test_distances_are_recovered_from_soft_scores(tmp_path: Path):
    d2 = {0: np.linspace(0.1, 3.0, 6), 3: np.linspace(1.0, 9.0, 6)}
    run = make_run(tmp_path, "soft", boundary="soft", layers=(0, 3), radii={0: 0.5, 3: 2.0}, d2=d2,
                   labels=[0, 0, 0, 1, 1, 1], scores=True)
    labels, got = layer_distances(run)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    for j in (0, 3):
        np.testing.assert_allclose(got[j], d2[j], rtol=1e-9)  # scores were d^2 - R^2


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000, path


def test_plots_are_valid_pngs(tmp_path: Path):
    root = tmp_path / "r"
    mocca = make_run(root, "mocca", boundary="soft", scores=True, auc=0.7)
    hol = make_run(root, "hol", boundary="soft", layers=(3,), presets=("cpu", "holistic"), scores=True, auc=0.6)
    assert_png(plot_roc([mocca, hol], tmp_path / "roc.png"))
    assert_png(plot_distance_cdfs(mocca, hol, tmp_path / "cdf.png"))
    assert_png(plot_training_curves(mocca, tmp_path / "train.png"))
    # the report draws them all into <folder>/report/plots
    _, _, figures = report.write_report(root, plots=True)
    names = {p.name for p, _ in figures}
    assert {"roc-cifar10-1_automobile.png", "cdf-cifar10-1_automobile-soft.png"} <= names
    assert sum(n.startswith("train-") for n in names) == 2
    for p, caption in figures:
        assert_png(p)
        assert caption


def test_cli_and_errors(tmp_path: Path, capsys):
    make_run(tmp_path / "r", "a", auc=0.7)
    assert report.main([str(tmp_path / "r"), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    assert "| 1 automobile | 0.700 |" in capsys.readouterr().out
    assert (tmp_path / "o" / "table1_cifar10.csv").is_file() and not (tmp_path / "o" / "plots").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as err:
        report.main([str(tmp_path / "empty")])
    assert err.value.code == 2 and "no finished runs" in capsys.readouterr().err


def test_paper_tables_are_in_the_project():
    rows = report.read_paper_table("table1_cifar10_auc.csv")
    assert rows[-1]["class_index"] == "mean" and float(rows[-1]["mocca_soft"]) == pytest.approx(0.676)
    for name in ("table3_4_mvtec.csv", "table6_shanghaitech_auc.csv", "table7_leather_layer_ablation_maxba.csv"):
        assert report.read_paper_table(name)
    assert "transcribed" in (report.PAPER_DIR / "README.md").read_text().lower()
