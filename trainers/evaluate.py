"""Test-time scoring (eq. 6, eq. 7 for patches) and metrics, per layer and combined."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from trainers.objective import MultiLayerObjective, max_over_patches
from utils.metrics import detection_metrics


@dataclass
class ScoreResult:
    """Per-sample scores (one column per layer plus the combined score) and their metrics."""

    labels: np.ndarray
    layer_scores: dict[int, np.ndarray]
    scores: np.ndarray
    metrics: dict


@torch.no_grad()
def test_distances(net: nn.Module, objective: MultiLayerObjective, batches: Iterable[Tensor],
                   prepare: Callable[[Tensor], Tensor] = lambda x: x) -> dict[int, Tensor]:
    """Squared distances per layer for every test sample, in one batched pass (net in eval mode):
    {j: (N,)}, or {j: (K, N)} for a grouped model.

    They stay on the model's device, next to the objective's radii; ``to_numpy`` is the only way
    out to the host, once, after scoring (eq. 6 subtracts R^2 from them).
    """
    net.eval()
    parts: dict[int, list[Tensor]] = {k: [] for k in objective.layer_indices}
    for x in batches:
        for k, d in objective.distances(net(prepare(x))).items():
            parts[k].append(d.float())
    return {k: torch.cat(v, dim=-1) for k, v in parts.items()}  # samples are the last axis (one or K runs)


def score_tensors(objective: MultiLayerObjective, distances: dict[int, Tensor],
                  patches_per_image: int | None = None) -> tuple[dict[int, Tensor], Tensor]:
    """Eq. 6 per layer and combined (eq. 7 max over patches if given), on the objective's device."""
    per_layer = objective.layer_scores(distances)
    combined = objective.combined_score(per_layer)
    if patches_per_image:
        per_layer = {k: max_over_patches(v, patches_per_image) for k, v in per_layer.items()}
        combined = max_over_patches(combined, patches_per_image)
    return per_layer, combined


def to_numpy(t: Tensor) -> np.ndarray:
    """The single device-to-host step of scoring: float64 NumPy for the metrics."""
    return t.detach().cpu().numpy().astype(np.float64)


def score_and_evaluate(objective: MultiLayerObjective, distances: dict[int, Tensor], labels: np.ndarray,
                       patches_per_image: int | None = None) -> ScoreResult:
    """Turn distances into eq. 6 scores (eq. 7 max over patches if given) and compute AUC / maxBA."""
    per_layer, combined = score_tensors(objective, distances, patches_per_image)
    layer_np = {k: to_numpy(v) for k, v in per_layer.items()}
    combined_np = to_numpy(combined)
    if not np.isfinite(combined_np).all():
        raise ValueError("test scores contain NaN or inf: the model diverged")
    metrics = detection_metrics(labels, combined_np)
    metrics["per_layer"] = {str(k): detection_metrics(labels, v) for k, v in layer_np.items()}
    metrics["score_std"] = float(np.std(combined_np))
    return ScoreResult(labels=np.asarray(labels), layer_scores=layer_np, scores=combined_np, metrics=metrics)
