"""Stage 1: autoencoder pretraining on reconstruction (shared by CIFAR-10 and MVTec AD)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from trainers.engine import StageSettings, fit
from trainers.objective import reconstruction_loss
from utils.batching import TensorSource

AE_KIND = "autoencoder"


def epoch_generator(seed: int, epoch: int) -> torch.Generator | None:
    """The data-order generator of one epoch: a resumed run sees exactly the batches it would have seen."""
    return None if seed < 0 else torch.Generator().manual_seed(seed * 100_003 + epoch)


def pretrain_autoencoder(
    autoencoder: nn.Module,
    source: TensorSource,
    settings: StageSettings,
    batch_size: int,
    checkpoint: Path,
    arch: dict[str, Any],
    seed: int,
    *,
    resume: bool = False,
    limit: int | None = None,
    prepare: Callable[[Tensor], Tensor] = lambda x: x,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train the whole AE to reconstruct the normal training images; ``prepare`` moves/lays out a batch."""

    def step(x: Tensor, epoch: int):
        x = prepare(x)
        return reconstruction_loss(x, autoencoder(x)), None, None

    def batches(epoch: int):
        return source.batches(batch_size, shuffle=True, generator=epoch_generator(seed, epoch), limit=limit,
                              drop_singleton=True)

    return fit(autoencoder, autoencoder.parameters(), step, batches, source.n_batches(batch_size, limit),
               settings, checkpoint, AE_KIND, arch, resume=resume, log=log)
