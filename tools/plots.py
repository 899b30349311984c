"""Figures from run folders (PNG): ROC curves, per-layer distance CDFs (paper Fig. 5), training curves.

Everything is read back from the run folder (scores.csv, metrics.json, *_log.csv, config.yaml),
so a figure can be redrawn for any finished run without the model. Figures are built with the
object-oriented ``matplotlib.figure.Figure`` API, which renders PNGs with the Agg backend and
touches no global pyplot state (safe in tests and in a long report loop).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from utils import results
from utils.cli import PROJECT_ROOT
from utils.io import atomic_path

NORMAL_COLOR, ANOMALY_COLOR = "tab:blue", "tab:red"  # the paper's Fig. 5 colours


def read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    """A CSV of numbers (and maybe text columns) -> {column: array}; numeric columns become float."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, np.ndarray] = {}
    for key in rows[0] if rows else []:
        values = [r[key] for r in rows]
        try:
            columns[key] = np.asarray(values, dtype=np.float64)
        except ValueError:
            columns[key] = np.asarray(values, dtype=object)
    return columns


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / results.METRICS_FILE).read_text())


def layer_distances(run_dir: Path) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Labels and the per-layer squared distance d^2 of every test sample of a finished run.

    scores.csv holds d^2 (hard boundary) or d^2 - R_j^2 (soft) per layer; R_j comes from metrics.json.
    """
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    cols = read_csv_columns(run_dir / results.SCORES_FILE)
    soft = metrics["boundary"] == "soft"
    d2 = {}
    for j in metrics["layers"]:
        r = float(metrics["radii"].get(str(j), 0.0)) if soft else 0.0
        d2[int(j)] = cols[f"score_layer_{j}"] + r * r
    return cols["label"].astype(int), d2


def _run_label(metrics: dict) -> str:
    layers = ",".join(map(str, metrics["layers"]))
    return f"{metrics['boundary']} [{layers}] seed {metrics['seed']} (AUC {metrics['auc']:.3f})"


def plot_roc(run_dirs: Sequence[Path], png: Path, title: str | None = None) -> Path:
    """One ROC curve per run (combined score of scores.csv), on one axes."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for run_dir in run_dirs:
        cols = read_csv_columns(Path(run_dir) / results.SCORES_FILE)
        fpr, tpr, _ = roc_curve(cols["label"].astype(int), cols["score"])
        ax.plot(fpr, tpr, label=_run_label(read_metrics(run_dir)))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate (anomaly = positive)", xlim=(0, 1), ylim=(0, 1),
           title=title or "ROC")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, png)


def plot_distance_cdfs(mocca_run: Path, holistic_run: Path | None, png: Path, title: str | None = None) -> Path:
    """Paper Fig. 5: per-layer CDFs of the distance d = sqrt(d^2) to the centroid (not squared), normal vs
    anomalous test samples; top row the MOCCA run, bottom row the holistic run in its layer's column."""
    rows = [("MOCCA", Path(mocca_run))] + ([("holistic", Path(holistic_run))] if holistic_run else [])
    data = [(name, read_metrics(d), *layer_distances(d)) for name, d in rows]
    layers = sorted({j for _, _, _, d2 in data for j in d2})
    fig = Figure(figsize=(3.2 * len(layers), 2.8 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(layers), squeeze=False)
    for r, (name, metrics, labels, d2) in enumerate(data):
        for c, j in enumerate(layers):
            ax = axes[r][c]
            if j not in d2:
                ax.set_axis_off()
                continue
            d = np.sqrt(np.clip(d2[j], 0.0, None))
            ax.ecdf(d[labels == 0], color=NORMAL_COLOR, label="normal")
            ax.ecdf(d[labels == 1], color=ANOMALY_COLOR, label="anomalous")
            auc = metrics["per_layer"].get(str(j), {}).get("auc")
            ax.set_title(f"{name} ({metrics['boundary']}): layer {j}" + (f", AUC {auc:.3f}" if auc is not None else ""),
                         fontsize=9)
            ax.set_xlabel("distance to the centroid d", fontsize=8)
            if c == 0 or (r > 0 and j == min(d2)):
                ax.set_ylabel("CDF")
            ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, png)


def _pretrain_log(run_dir: Path) -> Path | None:
    """The stage-1 log: in the run folder (-ptr -tr), or next to the AE checkpoint given with -ck."""
    own = run_dir / "pretrain_log.csv"
    if own.is_file():
        return own
    try:
        config = yaml.safe_load((run_dir / results.CONFIG_FILE).read_text()) or {}
    except OSError:
        return None
    if not config.get("model_ckp"):
        return None
    ckp = Path(config["model_ckp"])
    for base in ([ckp] if ckp.is_absolute() else [PROJECT_ROOT / ckp, run_dir / ckp]):
        if (base.parent / "pretrain_log.csv").is_file():
            return base.parent / "pretrain_log.csv"
    return None


def plot_training_curves(run_dir: Path, png: Path, title: str | None = None) -> Path:
    """Loss per epoch (AE pretraining and one-class training), mean train distance and radius per layer."""
    run_dir = Path(run_dir)
    train = read_csv_columns(run_dir / "train_log.csv") if (run_dir / "train_log.csv").is_file() else {}
    pre_path = _pretrain_log(run_dir)
    pre = read_csv_columns(pre_path) if pre_path else {}
    panels = [("AE reconstruction loss", pre, ["loss"]), ("one-class loss", train, ["loss"]),
              ("mean train d^2 per layer", train, sorted(k for k in train if k.startswith("dist_"))),
              ("radius R per layer", train, sorted(k for k in train if k.startswith("radius_")))]
    panels = [p for p in panels if p[1] and all(k in p[1] for k in p[2]) and p[2]]
    if not panels:
        raise ValueError(f"{run_dir}: no train_log.csv or pretrain_log.csv to plot")
    fig = Figure(figsize=(4 * len(panels), 3.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, log, keys) in zip(axes, panels):
        for key in keys:
            ax.plot(log["epoch"], log[key], marker="o", markersize=3, label=key.replace("_", " layer ")
                    if key != "loss" else None)
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key.startswith("dist_") and all(np.all(log[k] > 0) for k in keys):
            ax.set_yscale("log")  # the layers' distances differ by orders of magnitude
        if len(keys) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, png)


def _save(fig: Figure, png: Path) -> Path:
    with atomic_path(png) as tmp:  # a killed report leaves no truncated PNG
        fig.savefig(tmp, dpi=100, format="png")
    return Path(png)
