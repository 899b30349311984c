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


# ------------------------------------------------------------------------------------------------
# figures of one run's test results (scores.csv, metrics.json and figures.npz of the run folder)
# ------------------------------------------------------------------------------------------------

def _figure_data(run_dir: Path) -> dict[str, np.ndarray]:
    from trainers.figure_data import FIGURE_DATA_FILE

    path = Path(run_dir) / FIGURE_DATA_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found (runs tested before figures were saved): rerun -tt to make it")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def plot_score_histogram(run_dir: Path, png: Path, title: str | None = None) -> Path:
    """Combined test score, normal vs anomalous, with the decision threshold stored with the model."""
    cols = read_csv_columns(Path(run_dir) / results.SCORES_FILE)
    metrics = read_metrics(run_dir)
    labels, scores = cols["label"].astype(int), cols["score"]
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(scores, bins=50)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, color=NORMAL_COLOR, label=f"normal ({np.sum(labels == 0)})")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, color=ANOMALY_COLOR, label=f"anomalous ({np.sum(labels == 1)})")
    threshold = metrics.get("threshold")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"decision threshold {threshold:.3g}")
    ax.set(xlabel="combined test score (higher = more anomalous)", ylabel="test samples",
           title=title or f"score histogram: {_run_label(metrics)}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    return _save(fig, png)


def plot_examples(run_dir: Path, png: Path, title: str | None = None) -> Path:
    """The most normal (top row) and the most anomalous (bottom row) test images with score and true label."""
    data = _figure_data(run_dir)
    images, scores, labels = data["example_image"], data["example_score"], data["example_label"]
    k = len(images) // 2
    fig = Figure(figsize=(1.6 * k, 4.0), layout="constrained")
    axes = fig.subplots(2, k, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i >= len(images):
            continue
        ax.imshow(images[i], interpolation="nearest")
        truth = "anomalous" if labels[i] else "normal"
        ax.set_title(f"{scores[i]:.3g}\n{truth}", fontsize=7, color=ANOMALY_COLOR if labels[i] else NORMAL_COLOR)
    fig.suptitle(title or "most normal (top) and most anomalous (bottom) test images: score and true label",
                 fontsize=9)
    return _save(fig, png)


def plot_texture_maps(run_dir: Path, png: Path, title: str | None = None) -> Path:
    """Texture images: image, ground-truth mask and the 8x8 patch score map (one colour scale for the dataset)."""
    data = _figure_data(run_dir)
    if "map_scores" not in data:
        raise ValueError(f"{run_dir} has no patch score maps (not a texture run)")
    n = len(data["map_scores"])
    has_mask = "map_mask" in data
    cols = 3 if has_mask else 2
    fig = Figure(figsize=(2.6 * cols, 2.5 * n + 0.4), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    lo, hi = (float(v) for v in data["map_range"])
    for i in range(n):
        panels = [("image", data["map_image"][i], {})]
        if has_mask:
            panels.append(("ground truth", data["map_mask"][i], {"cmap": "gray", "vmin": 0, "vmax": 1}))
        panels.append(("patch scores", data["map_scores"][i], {"cmap": "inferno", "vmin": lo, "vmax": hi}))
        for ax, (name, img, kw) in zip(axes[i], panels):
            shown = ax.imshow(img, interpolation="nearest", **kw)
            ax.set_title(f"#{int(data['map_index'][i])} {name}", fontsize=8)
            ax.set_axis_off()
        fig.colorbar(shown, ax=axes[i][-1], fraction=0.046, pad=0.02)
    fig.suptitle(title or "textures: image, mask and patch score map (colour scale: whole test set)", fontsize=9)
    return _save(fig, png)


def plot_tsne(run_dir: Path, png: Path, title: str | None = None) -> Path:
    """t-SNE (scikit-learn) of each layer's embeddings: normal vs anomalous test samples and the centroid."""
    from sklearn.manifold import TSNE

    data = _figure_data(run_dir)
    layers = sorted(int(k.split("_")[1]) for k in data if k.startswith("embedding_") and k != "embedding_label")
    if not layers:
        raise ValueError(f"{run_dir} holds no embeddings")
    labels = data["embedding_label"]
    fig = Figure(figsize=(3.4 * len(layers), 3.4), layout="constrained")
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for ax, j in zip(axes, layers):
        x = np.vstack([data[f"embedding_{j}"].astype(np.float64), data[f"center_{j}"][None].astype(np.float64)])
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        y = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(x)
        pts, center = y[:-1], y[-1]
        ax.scatter(*pts[labels == 0].T, s=6, color=NORMAL_COLOR, alpha=0.7, label="normal")
        ax.scatter(*pts[labels == 1].T, s=6, color=ANOMALY_COLOR, alpha=0.7, label="anomalous")
        ax.scatter(*center, s=120, marker="*", color="black", label="centroid")
        ax.set_title(f"layer {j}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title or f"t-SNE of the per-layer embeddings ({len(labels)} test samples)", fontsize=9)
    return _save(fig, png)


def plot_video_curves(run_dir: Path, png: Path, title: str | None = None, max_videos: int = 4) -> Path:
    """Per test video: the frame score with the ground-truth abnormal frames shaded."""
    path = Path(run_dir) / results.SCORES_FILE
    cols = read_csv_columns(path)
    if "video" not in cols:
        raise ValueError(f"{run_dir} is not a video run")
    with open(path, newline="") as fh:  # the names as written ("01", not 1.0)
        cols["video"] = np.asarray([row["video"] for row in csv.DictReader(fh)], dtype=object)
    videos = list(dict.fromkeys(cols["video"].astype(str)))[:max_videos]
    fig = Figure(figsize=(8, 1.9 * len(videos) + 0.4), layout="constrained")
    axes = fig.subplots(len(videos), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, videos):
        pick = cols["video"].astype(str) == name
        frame, score, label = cols["frame"][pick], cols["score"][pick], cols["label"][pick].astype(bool)
        ax.plot(frame, score, color="black", linewidth=1)
        ax.fill_between(frame, 0, 1, where=label, transform=ax.get_xaxis_transform(), color=ANOMALY_COLOR,
                        alpha=0.25, step="mid", label="abnormal (ground truth)")
        ax.set_ylabel("score", fontsize=8)
        ax.set_title(f"video {name}", fontsize=8)
        ax.margins(x=0)
    axes[-1].set_xlabel("frame")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title or "frame scores (combined) with the abnormal frames shaded", fontsize=9)
    return _save(fig, png)
