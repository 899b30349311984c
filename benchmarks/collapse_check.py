"""Does the one-class objective collapse? Distances of normal and anomalous data after training.

Deep SVDD drops bias terms because a network with biases can map every input to the centroid
(a constant output: distance ~0 for normal *and* anomalous data, AUC ~0.5). MOCCA's MVTec
selector heads and video LSTMs keep their biases, as the authors' code does. This prints, per
layer of a finished run, the squared distance to the centroid relative to the centroid's own
squared norm (the distance of an all-zero feature), for the normal and the anomalous test samples,
and their ratio. Collapse shows as both medians near 0 with a ratio near 1.

    python -m benchmarks.collapse_check <run folder> [<run folder> ...]
        image runs: from scores.csv; video runs: recomputed over every test window (needs -dp's data)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import load_checkpoint
from utils.errors import UserError, exit_on_user_error
from tools.plots import layer_distances, read_metrics


def centroid_norms(run_dir: Path) -> dict[int, float]:
    state = load_checkpoint(run_dir / "model.pt", ("one_class", "end_to_end"))["state"]
    return {int(k.rsplit("_", 1)[1]): float((v.double() ** 2).sum())
            for k, v in state.items() if k.startswith("objective.center_")}


@torch.no_grad()
def video_distances(run_dir: Path, data_path: str) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per test window (stride 1): label of its last frame and the per-head squared distance."""
    import yaml

    from datasets.video import VideoClips, load_test_set
    from trainers.settings import REMOVE_BACKGROUND
    from trainers.video_pipeline import load_trained

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    model = load_trained(run_dir / "model.pt", torch.device("cpu")).eval()
    shape = model.net.input_shape
    names, videos, labels = load_test_set(data_path or config["data_path"], config["dataset"], tuple(shape[2:]),
                                          REMOVE_BACKGROUND[config["remove_background"]], config.get("labels"),
                                          background_recipe=config.get("background_recipe", "lsa"))
    clips = VideoClips(videos, shape[1], names)
    parts: dict[int, list[torch.Tensor]] = {k: [] for k in model.objective.layer_indices}
    window_labels = []
    for v in range(len(names)):
        for x in clips.test_windows(v, 16):
            for k, d in model.objective.distances(model.net(x)[1]).items():
                parts[k].append(d)
        window_labels.append(np.asarray(labels[v])[shape[1] - 1:])
    return np.concatenate(window_labels), {k: torch.cat(v).numpy() for k, v in parts.items()}


def report(run_dir: Path, data_path: str | None) -> list[str]:
    metrics = read_metrics(run_dir)
    video = "frame_auc" in metrics
    labels, d2 = video_distances(run_dir, data_path) if video else layer_distances(run_dir)
    norms = centroid_norms(run_dir)
    lines = [f"{run_dir}  ({metrics['dataset']} {metrics['class']}, {metrics['boundary']}, AUC {metrics['auc']:.3f})",
             f"  {'layer':>5} {'|c|^2':>10} {'normal d^2/|c|^2':>17} {'anomalous':>10} {'ratio':>7}"]
    for k, d in d2.items():
        normal = float(np.median(d[labels == 0])) / norms[k]
        anomalous = float(np.median(d[labels == 1])) / norms[k]
        lines.append(f"  {k:>5} {norms[k]:>10.4g} {normal:>17.4g} {anomalous:>10.4g} {anomalous / normal:>7.3g}")
    return lines


@exit_on_user_error
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("-dp", "--data-path", default=None, help="video runs: the data root (default: the run's config)")
    args = p.parse_args(argv)
    for run in args.runs:
        if not (run / "metrics.json").is_file():
            raise UserError(f"{run} is not a finished run folder (no metrics.json)")
        print("\n".join(report(run, args.data_path)))


if __name__ == "__main__":
    main(sys.argv[1:])
