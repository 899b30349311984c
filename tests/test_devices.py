"""Device placement: every tensor a pipeline makes lives on the model's device.

CPU-only, yet it catches what would break on CUDA: the model and objective are put on PyTorch's
``meta`` device while the data stays on the CPU, as resident data does before the pipeline moves
it. The meta device follows CUDA's rules (a CPU 0-dim tensor may meet a device tensor, nothing
else may; ``.cpu()`` of a device tensor is an explicit copy), but holds no values, so any op that
mixes a CPU tensor into device maths, or a stray ``.cpu()`` before the last scoring step, raises.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.lenet import LeNetAutoencoder, PooledFeatureNet
from models.lenet_grouped import GroupedLeNetAutoencoder, GroupedPooledFeatureNet, stack_runs
from models.residual2d import ResidualAutoencoder, ResidualFeatureNet
from models.video3d import VideoAutoencoder
from trainers import scoring
from trainers.end_to_end import end_to_end_loss, initial_centroids
from trainers.objective import MultiLayerObjective, compute_centroids
from trainers.one_class import OneClassModel, one_class_step
from trainers.runs import StackedSource
from trainers.scoring import score_and_evaluate, score_tensors
from utils.runtime import batch_placer, module_device

META = torch.device("meta")


def cpu_batches(n: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(4, *shape, generator=g) for _ in range(n)]


def assert_on(device: torch.device, *tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.device == device, f"tensor {tuple(t.shape)} on {t.device}, expected {device}"


def run_image_core(net: torch.nn.Module, shape: tuple[int, ...], boundary: str, patches: int | None = None) -> None:
    """Centroids, one soft/hard training step with its radius update, test distances and scores.

    (BatchNorm re-estimation is left out: its cumulative average reads a counter on the host, which
    the meta device cannot do; it creates no tensors of its own.)
    """
    place = batch_placer(module_device(net))
    data = cpu_batches(2, shape)
    centers = compute_centroids(net, (place(x) for x in data))
    assert_on(META, *centers.values())
    model = OneClassModel(net, MultiLayerObjective(centers, boundary, 0.1))
    assert_on(META, *model.objective.buffers())
    step = one_class_step(model, warm_up_epochs=0, prepare=place)
    loss, after_step, extra = step(data[0], 1)
    loss.backward()
    if after_step is not None:
        after_step()  # radius update from the batch's distances (soft boundary)
    assert_on(META, loss, *extra.values(), *model.objective.buffers())
    assert all(p.grad is not None and p.grad.device == META for p in net.parameters() if p.requires_grad)
    dist = scoring.test_distances(net, model.objective, data, prepare=place)
    per_layer, combined = score_tensors(model.objective, dist, patches)
    assert_on(META, *dist.values(), *per_layer.values(), combined)


@pytest.mark.parametrize("boundary", ["soft", "hard"])
def test_cifar10_core_on_one_device(boundary):
    net = PooledFeatureNet(LeNetAutoencoder(16).encoder, [0, 1, 2, 3]).to(META)
    run_image_core(net, (3, 32, 32), boundary)


@pytest.mark.parametrize("boundary", ["soft", "hard"])
def test_mvtec_core_with_selectors_and_patches_on_one_device(boundary):
    net = ResidualFeatureNet(ResidualAutoencoder(32, 16).encoder, [4, 5, 6], use_selectors=True).to(META)
    run_image_core(net, (3, 32, 32), boundary, patches=2)


@pytest.mark.parametrize("boundary", ["soft", "hard"])
def test_video_core_on_one_device(boundary):
    net = VideoAutoencoder((3, 4, 8, 8), 16, hidden_size=8, layer_indices=[4, 6]).to(META)
    clips = cpu_batches(2, (3, 4, 8, 8))
    centers = initial_centroids(net, lambda gen: clips[0], 2, seed=0)
    model = OneClassModel(net, MultiLayerObjective(centers, boundary, 0.1, layer_reduction="sum"))
    out = end_to_end_loss(model, batch_placer(META)(clips[1]))
    out.total.backward()
    model.objective.update_radii(out.distances)
    per_layer, combined = score_tensors(model.objective, out.distances)
    assert_on(META, out.total, *model.objective.buffers(), *per_layer.values(), combined)


@pytest.mark.parametrize("boundary", ["soft", "hard"])
def test_grouped_core_on_one_device(boundary):
    """K = 2 runs as one grouped model go through the same objective code with a run axis."""
    ae = GroupedLeNetAutoencoder.from_models([LeNetAutoencoder(16) for _ in range(2)]).to(META)
    net = GroupedPooledFeatureNet(ae.encoder, [1, 3])
    source = StackedSource(torch.rand(1, 6, 3, 32, 32), torch.tensor([0, 0]), stack_runs)
    place = batch_placer(META)
    centers = compute_centroids(net, (place(x) for x in source.batches(3)))
    model = OneClassModel(net, MultiLayerObjective(centers, boundary, 0.1))
    loss, after_step, extra = one_class_step(model, warm_up_epochs=0, prepare=place)(next(source.batches(3)), 1)
    loss.sum().backward()  # as the training loop: the runs' parameters are disjoint
    if after_step is not None:
        after_step()
    dist = scoring.test_distances(net, model.objective, source.batches(3), place)
    per_layer, combined = score_tensors(model.objective.run(1), {j: d[1] for j, d in dist.items()})
    assert loss.shape == (2,) and all(d.shape == (2, 6) for d in dist.values())
    assert_on(META, *centers.values(), loss, *extra.values(), *model.objective.buffers(), *dist.values(),
              *per_layer.values(), combined)


def test_scoring_leaves_the_device_once_at_the_end():
    """On a real device pair this is the soft-boundary path that used to crash: radii on the model's
    device, distances kept there too; only the final scores come to the host, as float64."""
    objective = MultiLayerObjective({0: torch.zeros(3)}, "soft", 0.5)
    objective.radius(0).fill_(2.0)
    scored = score_and_evaluate(objective, {0: torch.tensor([1.0, 5.0, 9.0, 3.0])}, np.array([0, 1, 1, 0]))
    assert scored.scores.dtype == np.float64
    np.testing.assert_allclose(scored.scores, [-3.0, 1.0, 5.0, -1.0])
    assert scored.metrics["auc"] == 1.0


def test_batch_placer_moves_and_lays_out():
    place = batch_placer(torch.device("cpu"), channels_last=True)
    x = place(torch.rand(2, 3, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert place(torch.rand(2, 5)).shape == (2, 5)  # vectors untouched
    assert batch_placer(META)(torch.rand(2, 3)).device == META
