"""Stage 2: the multi-layer one-class training of the encoder (paper eqs. 2-4): the model and its step.

The stage itself is ``trainers.mocca.MOCCA.train``; the loop is ``trainers.engine.fit_runs``.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from trainers.objective import MultiLayerObjective

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
