"""Stage 2: the multi-layer one-class training of the encoder (paper eqs. 2-4)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from trainers.engine import StageSettings, fit
from trainers.objective import MultiLayerObjective
from trainers.pretrain import epoch_generator
from utils.batching import TensorSource

ONE_CLASS_KIND = "one_class"


class OneClassModel(nn.Module):
    """The feature net and its objective (centroids, radii) as one checkpointable module: the trained
    encoder of an image model, or a whole video autoencoder trained end to end."""

    def __init__(self, net: nn.Module, objective: MultiLayerObjective):
        super().__init__()
        self.net = net
        self.objective = objective


def one_class_step(model: OneClassModel, warm_up_epochs: int, prepare: Callable[[Tensor], Tensor]):
    """Build the training step: loss over the chosen layers; after warm-up, soft radii follow each batch.

    The same step trains one run or K grouped runs (losses, distances and radii then carry a run axis).
    """
    objective = model.objective

    def step(x: Tensor, epoch: int):
        dist = objective.distances(model.net(prepare(x)))
        loss = objective.loss(dist)
        hook = None
        if objective.boundary == "soft" and epoch >= warm_up_epochs:
            hook = lambda: objective.update_radii(dist)  # noqa: E731 - R from this batch, as eq. 2
        extra = {f"dist_{k}": d.detach().mean(dim=-1) for k, d in dist.items()}  # () or per run (K,)
        return loss, hook, extra

    return step


def train_one_class(
    model: OneClassModel,
    source: TensorSource,
    settings: StageSettings,
    batch_size: int,
    warm_up_epochs: int,
    checkpoint: Path,
    arch: dict[str, Any],
    seed: int,
    *,
    resume: bool = False,
    best_checkpoint: Path | None = None,
    limit: int | None = None,
    prepare: Callable[[Tensor], Tensor] = lambda x: x,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train the feature net towards the fixed centroids; the net is in train mode (paper, not the authors' eval mode)."""

    def batches(epoch: int):
        return source.batches(batch_size, shuffle=True, generator=epoch_generator(seed, epoch), limit=limit,
                              drop_singleton=True)

    radii = lambda: {f"radius_{k}": r for k, r in model.objective.radii().items()}  # noqa: E731
    return fit(model, model.net.parameters(), one_class_step(model, warm_up_epochs, prepare), batches,
               source.n_batches(batch_size, limit), settings, checkpoint, ONE_CLASS_KIND, arch,
               resume=resume, log=log, extra_payload=radii, forward_module=model.net,
               best_checkpoint=best_checkpoint)
