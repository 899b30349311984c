"""Single-stage end-to-end training for video (paper IV-C, Fig. 2 right) and frame-level testing.

The whole autoencoder (with its LSTM heads) minimises reconstruction + the multi-layer one-class
objective; centroids come from the untrained model, as the paper says. Testing scores every
stride-1 clip, turns clip scores into frame scores (mean over the clips holding a frame),
normalises them per video (eq. 8) and adds the normalised reconstruction score.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from trainers.engine import StageSettings, fit
from trainers.objective import compute_centroids, reconstruction_errors, reconstruction_loss
from trainers.one_class import OneClassModel
from trainers.pretrain import epoch_generator
from trainers.scoring import clip_scores_to_frame_scores, combine_scores, frame_auc, minmax_normalise
from utils.runtime import batch_placer, module_device

END_TO_END_KIND = "end_to_end"


class HeadFeatures(nn.Module):
    """The feature-net view of a video model: clip -> {head index: (B, d)} (drops the reconstruction)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        return self.model(x)[1]


class EndToEndLoss(NamedTuple):
    """The training loss of one clip batch, its two parts, and the per-head distances (for the radii)."""

    total: Tensor
    one_class: Tensor
    recon: Tensor
    distances: dict[int, Tensor]


def end_to_end_loss(model: OneClassModel, x: Tensor, recon_weight: float = 1.0) -> EndToEndLoss:
    """Multi-layer one-class loss + ``recon_weight`` x reconstruction loss (shared with the benchmarks)."""
    x_rec, feats = model.net(x)
    dist = model.objective.distances(feats)
    one_class = model.objective.loss(dist)
    recon = reconstruction_loss(x, x_rec)
    return EndToEndLoss(one_class + recon_weight * recon, one_class, recon, dist)


def initial_centroids(net: nn.Module, sample: Callable[[torch.Generator | None], Tensor], n_batches: int,
                      seed: int) -> dict[int, Tensor]:
    """Centroids of the untrained model over ``n_batches`` random training clips (eval mode)."""
    gen = epoch_generator(seed, -1)
    place = batch_placer(module_device(net))
    return compute_centroids(HeadFeatures(net), (place(sample(gen)) for _ in range(n_batches)))


def train_end_to_end(
    model: OneClassModel,
    sample: Callable[[torch.Generator | None], Tensor],
    n_batches: int,
    settings: StageSettings,
    warm_up_epochs: int,
    checkpoint: Path,
    arch: dict[str, Any],
    seed: int,
    *,
    recon_weight: float = 1.0,
    resume: bool = False,
    log: Callable[[str], None] = print,
    best_checkpoint: Path | None = None,
) -> list[dict[str, float]]:
    """One "epoch" = ``n_batches`` batches of clips drawn uniformly with replacement (the authors' scheme)."""
    objective = model.objective
    place = batch_placer(module_device(model))

    def step(x: Tensor, epoch: int):
        out = end_to_end_loss(model, place(x), recon_weight)
        hook = None
        if objective.boundary == "soft" and epoch >= warm_up_epochs:
            hook = lambda: objective.update_radii(out.distances)  # noqa: E731
        return out.total, hook, {"one_class": out.one_class.detach(), "recon": out.recon.detach()}

    def batches(epoch: int):
        gen = epoch_generator(seed, epoch)
        return (sample(gen) for _ in range(n_batches))

    radii = lambda: {f"radius_{k}": r for k, r in objective.radii().items()}  # noqa: E731
    return fit(model, model.net.parameters(), step, batches, n_batches, settings, checkpoint, END_TO_END_KIND,
               arch, resume=resume, log=log, extra_payload=radii, forward_module=model.net,
               best_checkpoint=best_checkpoint)


@dataclass
class VideoScores:
    """Per-video frame scores (combined, one-class only, reconstruction only) and their AUCs."""

    names: list[str]
    labels: list[np.ndarray]
    combined: list[np.ndarray]
    one_class: list[np.ndarray]
    recon: list[np.ndarray]
    metrics: dict


@torch.no_grad()
def score_videos(model: OneClassModel, clips, labels: list[np.ndarray], batch_size: int,
                 progress: bool = True, max_videos: int | None = None) -> VideoScores:
    """Score every stride-1 window of each test video and evaluate frame-level AUC.

    ``clips`` is a ``datasets.video.VideoClips`` of the test videos; ``labels`` one 0/1 array per video.
    """
    model.eval()
    objective = model.objective
    place = batch_placer(module_device(model))
    n_videos = len(clips.videos) if max_videos is None else min(max_videos, len(clips.videos))
    out = VideoScores([], [], [], [], [], {})
    for v in tqdm(range(n_videos), desc="test videos", disable=not progress, leave=False):
        oc_parts, rec_parts = [], []
        for x in clips.test_windows(v, batch_size):
            x = place(x)
            x_rec, feats = model.net(x)
            oc_parts.append(objective.combined_score(objective.layer_scores(objective.distances(feats))).cpu())
            rec_parts.append(reconstruction_errors(x, x_rec).cpu())
        n = clips.n_frames(v)
        oc = clip_scores_to_frame_scores(torch.cat(oc_parts).numpy(), n, clips.clip_length)
        rec = clip_scores_to_frame_scores(torch.cat(rec_parts).numpy(), n, clips.clip_length)
        out.names.append(clips.names[v])
        out.labels.append(np.asarray(labels[v]))
        out.one_class.append(minmax_normalise(oc))
        out.recon.append(minmax_normalise(rec))
        out.combined.append(combine_scores(oc, rec))
    out.metrics = {
        "combined": frame_auc(out.combined, out.labels),
        "one_class": frame_auc(out.one_class, out.labels),
        "reconstruction": frame_auc(out.recon, out.labels),
    }
    return out
