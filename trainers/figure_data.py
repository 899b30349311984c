"""What the report's figures need from a model, saved at test time (``figures.npz`` in the run folder).

The report draws from run folders only and never re-runs a model, so the test stage keeps:
- the most normal and the most anomalous test images (thumbnails, with scores and labels);
- textures: a few anomalous images with their ground-truth mask and patch score map;
- per-layer embeddings of a capped random sample of normal and anomalous test samples, with the
  centroids (for t-SNE).
Everything is small (thumbnails of at most 128 px, at most ``EMBEDDING_CAP`` float16 embeddings):
tens to hundreds of kB per run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.one_class import OneClassModel
from utils.batching import TensorSource
from utils.io import atomic_path

FIGURE_DATA_FILE = "figures.npz"
N_EXAMPLES = 8  # most normal and most anomalous images each
N_MAPS = 4  # texture images shown with mask and score map
EMBEDDING_CAP = 300  # samples per run for t-SNE (half normal, half anomalous where possible)
THUMBNAIL = 128


def to_thumbnails(images: Tensor, size: int = THUMBNAIL) -> np.ndarray:
    """(N, C, H, W) model or uint8 images -> (N, h, w, 3) uint8 for display, at most ``size`` px.

    uint8 images are shown as they are; float images (e.g. CIFAR-10 after GCN) are min-max
    scaled per image, which is only for looking at them.
    """
    x = images.detach().cpu()
    if x.dtype != torch.uint8:
        x = x.float()
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)
    if x.shape[-1] > size:
        x = F.interpolate(x.float(), size=(size, size), mode="area").round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def examples(images: Tensor, scores: np.ndarray, labels: np.ndarray, k: int = N_EXAMPLES) -> dict[str, np.ndarray]:
    """The k lowest- and k highest-scoring test images (most normal first, most anomalous last)."""
    order = np.argsort(scores, kind="stable")
    pick = np.r_[order[:k], order[-k:]] if len(order) > 2 * k else order
    return {"example_index": pick, "example_image": to_thumbnails(images[torch.from_numpy(pick)]),
            "example_score": scores[pick].astype(np.float32), "example_label": labels[pick].astype(np.int8)}


def texture_maps(images: Tensor, masks: Tensor | None, patch_scores: np.ndarray, labels: np.ndarray,
                 n: int = N_MAPS, seed: int = 0) -> dict[str, np.ndarray]:
    """A few anomalous texture images with mask and 8x8 score map; the map's dataset-wide range for
    its colour scale (never per image)."""
    anomalous = np.flatnonzero(labels == 1)
    rng = np.random.default_rng(max(seed, 0))
    pick = np.sort(rng.permutation(anomalous)[:n]) if len(anomalous) else np.arange(min(n, len(labels)))
    g = int(round(np.sqrt(patch_scores.shape[1])))
    out = {"map_index": pick, "map_image": to_thumbnails(images[torch.from_numpy(pick)], 256),
           "map_scores": patch_scores[pick].reshape(-1, g, g).astype(np.float32),
           "map_range": np.array([patch_scores.min(), patch_scores.max()], dtype=np.float32),
           "map_label": labels[pick].astype(np.int8)}
    if masks is not None:
        m = masks[torch.from_numpy(pick)].float()
        out["map_mask"] = (F.interpolate(m, size=(256, 256), mode="area")[:, 0] >= 0.5).numpy().astype(np.uint8)
    return out


@torch.no_grad()
def embeddings(model: OneClassModel, test: TensorSource, labels: np.ndarray, prepare: Callable[[Tensor], Tensor],
               batch_size: int, patches_per_image: int | None = None, cap: int = EMBEDDING_CAP,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Per-layer features (eval mode, as scored) of up to ``cap`` test samples, half normal and half
    anomalous where the test set allows, and each layer's centroid. Texture samples are patches."""
    rng = np.random.default_rng(max(seed, 0))
    per_image = patches_per_image or 1
    images_wanted = -(-cap // (2 * per_image))  # images per label, enough for cap / 2 samples
    pick = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == v))[:images_wanted] for v in (0, 1)]))
    model.eval()
    feats: dict[int, list[Tensor]] = {}
    source = TensorSource(test.data[torch.from_numpy(pick).to(test.data.device)], test.transform)
    for x in source.batches(batch_size):
        for j, f in model.net(prepare(x)).items():
            feats.setdefault(j, []).append(f.float().cpu())
    sample_labels = np.repeat(labels[pick], per_image)
    keep = np.sort(rng.permutation(len(sample_labels))[:cap])
    out = {"embedding_label": sample_labels[keep].astype(np.int8)}
    for j, parts in feats.items():
        out[f"embedding_{j}"] = torch.cat(parts)[torch.from_numpy(keep)].numpy().astype(np.float16)
        out[f"center_{j}"] = model.objective.center(j).detach().float().cpu().numpy()
    return out


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
