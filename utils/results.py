"""Run folders: resolved config, environment, training logs, metrics and per-sample scores.

One run = one folder; the sweep and report tools read nothing else. Every file is written
atomically, so a folder with a ``metrics.json`` is a finished run.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from utils.io import write_json, write_text

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
SCORES_FILE = "scores.csv"
ENV_FILE = "env.json"
AE_CHECKPOINT = "ae.pt"
MODEL_CHECKPOINT = "model.pt"


def layers_tag(layers: Sequence[int]) -> str:
    return ".".join(str(k) for k in layers)


def default_run_name(config: Mapping[str, Any], layers: Sequence[int]) -> str:
    """A deterministic name, so rerunning the same command with --resume finds the same folder."""
    return (f"{config['boundary']}-ile_{layers_tag(layers)}-zl_{config['code_length']}-nu_{config['nu']}"
            f"-seed_{config['seed']}")


def run_dir_for(config: Mapping[str, Any], dataset: str, class_name: str, layers: Sequence[int]) -> Path:
    if config.get("run_dir"):
        return Path(config["run_dir"])
    return Path(config["output_path"]) / dataset / class_name / default_run_name(config, layers)


def write_config(run_dir: Path, config: Mapping[str, Any], env: Mapping[str, Any]) -> None:
    write_text(run_dir / CONFIG_FILE, yaml.safe_dump(dict(config), sort_keys=True))
    write_json(run_dir / ENV_FILE, dict(env))


def write_history(path: Path, history: Sequence[Mapping[str, float]]) -> None:
    """Per-epoch training log as CSV (columns: the union of keys, in first-seen order)."""
    if not history:
        return
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())


def write_scores(path: Path, labels: np.ndarray, scores: np.ndarray, layer_scores: Mapping[int, np.ndarray],
                 extra: Mapping[str, Sequence[Any]] | None = None) -> None:
    """scores.csv: index, label, score (combined), score_layer_<j> per layer, then any extra columns."""
    extra = dict(extra or {})
    columns = ["index", "label", "score"] + [f"score_layer_{k}" for k in layer_scores] + list(extra)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for i in range(len(scores)):
        row = [i, int(labels[i]), repr(float(scores[i]))]
        row += [repr(float(v[i])) for v in layer_scores.values()]
        row += [e[i] for e in extra.values()]
        writer.writerow(row)
    write_text(path, buf.getvalue())


def write_metrics(run_dir: Path, metrics: Mapping[str, Any]) -> None:
    write_json(run_dir / METRICS_FILE, dict(metrics))
