"""Throughput: the bare model step on synthetic tensors vs the real pipeline on real data.

For each dataset model and stage (AE pretraining, one-class training, scoring) this prints
images/s of (a) the bare step (a fixed synthetic batch, forward + backward + Adam, nothing else)
and (b) the project's pipeline on the shared data (batching, augmentation, logging, checkpointing
included), and their ratio. Target: ratio <= 1.2.

    .venv/bin/python -m benchmarks.throughput cifar10 [--device cpu|cuda] [--channels-last] [--batches 20]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from trainers.engine import StageSettings
from trainers.evaluate import test_distances
from trainers.objective import MultiLayerObjective, compute_centroids
from trainers.one_class import OneClassModel, train_one_class
from trainers.pretrain import pretrain_autoencoder, reconstruction_loss
from utils.batching import TensorSource

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_steps(model: nn.Module, loss_fn: Callable[[Tensor], Tensor], x: Tensor, n: int, train: bool = True) -> float:
    """images/s of n identical steps on one resident batch (2 warm-up steps not timed)."""
    opt = torch.optim.Adam(model.parameters(), 1e-4) if train else None
    model.train(train)
    for i in range(n + 2):
        if i == 2:
            _sync(x.device)
            t0 = time.perf_counter()
        if train:
            loss = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
                loss_fn(x)
    _sync(x.device)
    return n * x.shape[0] / (time.perf_counter() - t0)


def pipeline_epoch(run: Callable[[Path], list], n_images: int, device: torch.device) -> float:
    """images/s of the pipeline's own epoch loop (second epoch, so warm-up is excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        history = run(Path(tmp) / "ckpt.pt")
    return n_images / history[-1]["seconds"]


def cifar10(args: argparse.Namespace, device: torch.device) -> list[tuple[str, float, float]]:
    from datasets.cifar10 import load_one_class
    from models.lenet import LeNetAutoencoder, PooledFeatureNet

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    prep = lambda x: x.contiguous(memory_format=fmt)  # noqa: E731
    bs, n_b = 256, args.batches
    data = load_one_class(SHARED / "cifar10", 1)
    train = TensorSource(data.train[: bs * n_b].to(device))
    n = len(train)
    x = prep(torch.rand(bs, 3, 32, 32, device=device))
    settings = lambda name: StageSettings(name, epochs=2, learning_rate=1e-4, weight_decay=5e-7, progress=False)  # noqa: E731
    rows = []

    torch.manual_seed(0)
    ae = LeNetAutoencoder(128).to(device, memory_format=fmt)
    bare = bare_steps(ae, lambda b: reconstruction_loss(b, ae(b)), x, n_b)
    ae = LeNetAutoencoder(128).to(device, memory_format=fmt)
    pipe = pipeline_epoch(lambda p: pretrain_autoencoder(ae, train, settings("pretrain"), bs, p, {}, 0, device=device,
                                                         prepare=prep, log=lambda s: None), n, device)
    rows.append(("cifar10 AE pretraining", bare, pipe))

    layers = [0, 1, 2, 3]
    net = PooledFeatureNet(ae.encoder, layers)
    centers = compute_centroids(net, (prep(b) for b in train.batches(bs)))
    obj = MultiLayerObjective(centers, "soft", 0.1).to(device)
    bare = bare_steps(net, lambda b: obj.loss(obj.distances(net(b))), x, n_b)
    model = OneClassModel(net, obj)
    pipe = pipeline_epoch(lambda p: train_one_class(model, train, settings("train"), bs, 0, p, {}, 0, device=device,
                                                    prepare=prep, log=lambda s: None), n, device)
    rows.append(("cifar10 one-class training", bare, pipe))

    bare = bare_steps(net, lambda b: obj.distances(net(b)), x, n_b, train=False)
    test = TensorSource(data.test.to(device))
    _sync(device)
    t0 = time.perf_counter()
    test_distances(net, obj, test.batches(bs), prepare=prep)
    _sync(device)
    rows.append(("cifar10 scoring", bare, len(test) / (time.perf_counter() - t0)))
    return rows


def mvtec(args: argparse.Namespace, device: torch.device) -> list[tuple[str, float, float]]:
    """bottle at 128x128: resident uint8 images, batched rotation and scaling inside the pipeline."""
    from datasets.mvtec import load_mvtec, to_model_range, train_batch_transform
    from models.residual2d import ResidualAutoencoder

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    prep = lambda x: x.contiguous(memory_format=fmt)  # noqa: E731
    bs, n_b = 32, args.batches
    data = load_mvtec(SHARED / "mvtec", "bottle")
    augment = train_batch_transform("bottle")
    train = TensorSource(data.train.to(device), lambda b, g: to_model_range(augment(b, g)), samples_per_epoch=bs * n_b)
    x = prep(torch.rand(bs, 3, 128, 128, device=device) * 2 - 1)
    settings = StageSettings("pretrain", epochs=2, learning_rate=1e-4, weight_decay=5e-7, progress=False)
    torch.manual_seed(0)
    ae = ResidualAutoencoder(128, 128).to(device, memory_format=fmt)
    bare = bare_steps(ae, lambda b: reconstruction_loss(b, ae(b)), x, n_b)
    ae = ResidualAutoencoder(128, 128).to(device, memory_format=fmt)
    pipe = pipeline_epoch(lambda p: pretrain_autoencoder(ae, train, settings, bs, p, {}, 0, device=device,
                                                         prepare=prep, log=lambda s: None), bs * n_b, device)
    return [("mvtec bottle AE pretraining (128 px)", bare, pipe)]


DATASETS = {"cifar10": cifar10, "mvtec": mvtec}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="*", default=["cifar10"], choices=sorted(DATASETS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--batches", type=int, default=20, help="batches per timed epoch")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device}, threads {torch.get_num_threads()}, channels_last {args.channels_last}")
    print("| stage | bare img/s | pipeline img/s | bare/pipeline |")
    print("|---|---|---|---|")
    for name in args.datasets:
        for stage, bare, pipe in DATASETS[name](args, device):
            print(f"| {stage} | {bare:.0f} | {pipe:.0f} | {bare / pipe:.2f} |", flush=True)


if __name__ == "__main__":
    main()
