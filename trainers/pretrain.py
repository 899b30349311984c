"""Stage 1 (autoencoder pretraining on reconstruction): its checkpoint kind and the data order of its epochs.

The stage itself is ``trainers.mocca.MOCCA.pretrain``; the loop is ``trainers.engine.fit_runs``.
"""
from __future__ import annotations

import torch

AE_KIND = "autoencoder"


def epoch_generator(seed: int, epoch: int) -> torch.Generator | None:
    """The data-order generator of one epoch: a resumed run sees exactly the batches it would have seen."""
    return None if seed < 0 else torch.Generator().manual_seed(seed * 100_003 + epoch)
