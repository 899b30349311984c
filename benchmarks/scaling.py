"""Scaling: how the time of a training step or epoch grows with the work it is given.

- ``cifar10``: (1) seconds per epoch of the one-class pipeline (``MOCCA.train``: batching,
  radius updates, NaN checks; the checkpoint write after each epoch is outside ``seconds``) over
  synthetic images for several epoch sizes and a few epochs each; (3) bare one-class step of the
  LeNet ``PooledFeatureNet`` for several layer sets.
- ``mvtec``: (2) bare pretraining step of the residual AE (``ResidualAutoencoder``) at several
  image sizes; (3) bare one-class step of ``ResidualFeatureNet`` per layer set, with and without
  selectors.
- ``batched``: (4) bare AE-pretraining and one-class steps of the grouped LeNet
  (``models.lenet_grouped``, as ``main_cifar10.py --classes`` builds it) for K runs vs K single runs one
  after another.

A bare step is forward + backward + Adam on one resident synthetic batch (``benchmarks.throughput.
bare_steps``: 2 untimed warm-up steps, then --batches timed steps). Every number is measured.

    .venv/bin/python -m benchmarks.scaling cifar10 mvtec batched [--device cpu|cuda] [--channels-last]
        [--batches 3] [--images 1280 2560 5120] [--epochs 3] [--sizes 32 64 128] [--k 1 2 4 8]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from benchmarks.throughput import bare_steps
from trainers.engine import StageSettings
from trainers.objective import MultiLayerObjective, compute_centroids
from trainers.objective import reconstruction_loss

CIFAR_LAYER_SETS = ([0], [3], [2, 3], [0, 1, 2, 3])
MVTEC_LAYER_SETS = ([6], [4, 5, 6], [0, 1, 2, 3, 4, 5, 6])
CODE_LENGTH = 128  # configs/cifar10.yaml and configs/mvtec.yaml


class Table(NamedTuple):
    """One markdown table: a title line, the column names and the formatted rows."""

    title: str
    header: list[str]
    rows: list[list[str]]


def markdown(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.header) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines)


def _rate(per_s: float) -> str:
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.1f}"


def _params_m(module: nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}"


def _layers(layers: Sequence[int]) -> str:
    return "[" + ",".join(str(i) for i in layers) + "]"


def _one_class_loss(net: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
    """Soft-boundary loss of ``net`` with centroids from one no-grad pass over ``x`` (radii 0)."""
    obj = MultiLayerObjective(compute_centroids(net, [x]), "soft", 0.1).to(x.device)
    return lambda b: obj.loss(obj.distances(net(b)))


def _formatter(args: argparse.Namespace) -> Callable[[Tensor], Tensor]:
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    return lambda x: x.contiguous(memory_format=fmt)


# ------------------------------------------------------------------------------------------------
# (1) images per epoch and epochs, (3) layers: CIFAR-10 LeNet
# ------------------------------------------------------------------------------------------------

def cifar10_epochs(args: argparse.Namespace, device: torch.device) -> Table:
    """Seconds per one-class epoch of the pipeline for each epoch size, every epoch listed."""
    from models.lenet import LeNetAutoencoder, PooledFeatureNet
    from trainers.mocca import MOCCA, MethodSettings
    from trainers.pretrain import AE_KIND
    from utils.batching import TensorSource
    from utils.checkpoint import save_checkpoint

    bs, layers = args.cifar_batch, [0, 1, 2, 3]
    settings = StageSettings("train", epochs=args.epochs, learning_rate=1e-4, weight_decay=5e-7, progress=False)
    rows, base = [], None
    for n in args.images:
        torch.manual_seed(0)
        source = TensorSource(torch.rand(n, 3, 32, 32, device=device))
        arch = {"model": "lenet", "code_length": CODE_LENGTH}
        mocca = MOCCA(lambda: LeNetAutoencoder(CODE_LENGTH), PooledFeatureNet, arch,
                      MethodSettings(layers, batch_size=bs, warm_up_epochs=0, train=settings), device=device,
                      channels_last=args.channels_last)
        with tempfile.TemporaryDirectory() as tmp:  # the one-class stage of the pipeline from a fresh encoder
            save_checkpoint(Path(tmp) / "ae.pt", AE_KIND, arch, state=LeNetAutoencoder(CODE_LENGTH).state_dict())
            history = mocca.train(source, Path(tmp) / "ae.pt", Path(tmp) / "model.pt", log=lambda s: None)
        seconds = [h["seconds"] for h in history]
        steady = seconds[1:] if len(seconds) > 1 else seconds  # epoch 1 includes the allocator's warm-up
        mean = sum(steady) / len(steady)
        base = base if base is not None else (n, mean)
        rows.append([f"{n:,}", str(source.n_batches(bs))] + [f"{s:.2f}" for s in seconds]
                    + [f"{mean:.2f}", f"{mean / n * 1000:.3f}", f"{(mean / base[1]) / (n / base[0]):.2f}",
                       _rate(n / mean)])
    steady_name = "epochs 2+" if args.epochs > 1 else "epoch 1"
    header = (["images / epoch", "batches"] + [f"epoch {e + 1} s" for e in range(args.epochs)]
              + [f"mean s ({steady_name})", "s per 1,000 images", "time / images vs first row", "images/s"])
    return Table(f"CIFAR-10 one-class pipeline epoch (LeNet, layers [0,1,2,3], batch {bs}, synthetic images)",
                 header, rows)


def cifar10_layers(args: argparse.Namespace, device: torch.device) -> Table:
    from models.lenet import LeNetAutoencoder, PooledFeatureNet

    prep, bs = _formatter(args), args.cifar_batch
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = prep(torch.rand(bs, 3, 32, 32, device=device))
    rows, first = [], None
    for layers in CIFAR_LAYER_SETS:
        torch.manual_seed(0)
        net = PooledFeatureNet(LeNetAutoencoder(CODE_LENGTH).encoder, layers).to(device, memory_format=fmt)
        bare = bare_steps(net, _one_class_loss(net, x), x, args.batches)
        first = first or bare.per_s
        rows.append([_layers(layers), str(max(layers)), _rate(bare.per_s), f"{1000 * bs / bare.per_s:.0f}",
                     f"{first / bare.per_s:.2f}"])
    return Table(f"CIFAR-10 one-class bare step by layers (LeNet PooledFeatureNet, batch {bs})",
                 ["layers", "deepest", "img/s", "ms / step", f"time vs {_layers(CIFAR_LAYER_SETS[0])}"], rows)


def cifar10(args: argparse.Namespace, device: torch.device) -> list[Table]:
    return [cifar10_epochs(args, device), cifar10_layers(args, device)]


# ------------------------------------------------------------------------------------------------
# (2) image size, (3) layers and selectors: MVTec residual AE
# ------------------------------------------------------------------------------------------------

def mvtec_sizes(args: argparse.Namespace, device: torch.device) -> Table:
    from models.residual2d import ResidualAutoencoder

    prep, bs = _formatter(args), args.mvtec_batch
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    rows, first = [], None
    for size in args.sizes:
        torch.manual_seed(0)
        ae = ResidualAutoencoder(size, CODE_LENGTH).to(device, memory_format=fmt)
        x = prep(torch.rand(bs, 3, size, size, device=device) * 2 - 1)
        bare = bare_steps(ae, lambda b: reconstruction_loss(b, ae(b)), x, args.batches)
        first = first or (size, bare.per_s)
        rows.append([str(size), f"{(size / first[0]) ** 2:.3g}", _params_m(ae), _rate(bare.per_s),
                     f"{bs / bare.per_s:.2f}", f"{first[1] / bare.per_s:.1f}"])
    return Table(f"MVTec residual AE pretraining bare step by image size (batch {bs}, code {CODE_LENGTH})",
                 ["px", f"pixels vs {args.sizes[0]} px", "params M", "img/s", "s / step",
                  f"time / image vs {args.sizes[0]} px"], rows)


def mvtec_layers(args: argparse.Namespace, device: torch.device) -> Table:
    from models.residual2d import ResidualEncoder, ResidualFeatureNet

    prep, bs, size = _formatter(args), args.mvtec_batch, args.layer_size
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = prep(torch.rand(bs, 3, size, size, device=device) * 2 - 1)
    rows, first = [], None
    for selectors in (False, True):
        for layers in MVTEC_LAYER_SETS:
            torch.manual_seed(0)
            net = ResidualFeatureNet(ResidualEncoder(size, CODE_LENGTH), layers, selectors).to(device, memory_format=fmt)
            bare = bare_steps(net, _one_class_loss(net, x), x, args.batches)
            first = first or bare.per_s
            rows.append([_layers(layers), "yes" if selectors else "no", _params_m(net), _rate(bare.per_s),
                         f"{bs / bare.per_s:.2f}", f"{first / bare.per_s:.2f}"])
    return Table(f"MVTec one-class bare step by layers (ResidualFeatureNet, {size} px, batch {bs})",
                 ["layers", "selectors", "params M", "img/s", "s / step",
                  f"time vs {_layers(MVTEC_LAYER_SETS[0])} without"], rows)


def mvtec(args: argparse.Namespace, device: torch.device) -> list[Table]:
    return [mvtec_sizes(args, device), mvtec_layers(args, device)]


# ------------------------------------------------------------------------------------------------
# (4) K runs at once: the grouped LeNet (main_cifar10 --classes) vs K single runs one after another
# ------------------------------------------------------------------------------------------------

def grouped_ae_loss(ae: nn.Module, k: int) -> Callable[[Tensor], Tensor]:
    """The grouped pretraining loss: the sum over runs of each run's reconstruction loss."""
    def loss(x: Tensor) -> Tensor:
        b = x.shape[0]
        return ((ae(x).float() - x.float()) ** 2).reshape(b, k, -1).sum(dim=2).mean(dim=0).sum()
    return loss


def grouped_one_class_loss(net: nn.Module, x: Tensor, nu: float = 0.1) -> Callable[[Tensor], Tensor]:
    """The grouped soft-boundary one-class loss summed over runs (per-run centroids from ``x``, radii 0)."""
    with torch.no_grad():
        net.eval()
        centers = {j: f.float().mean(dim=1) for j, f in net(x).items()}  # {j: (K, d)}
        net.train()
    k = next(iter(centers.values())).shape[0]
    radii = {j: torch.zeros(k, device=x.device) for j in centers}

    def loss(b: Tensor) -> Tensor:
        feats = net(b)
        per_layer = []
        for j, c in centers.items():
            dist = ((feats[j].float() - c[:, None, :]) ** 2).sum(dim=2)  # (K, B)
            r2 = (radii[j] ** 2)[:, None]
            per_layer.append(r2[:, 0] + torch.clamp(dist - r2, min=0).mean(dim=1) / nu)
        return torch.stack(per_layer).mean(dim=0).sum()
    return loss


def batched(args: argparse.Namespace, device: torch.device) -> list[Table]:
    from models.lenet import LeNetAutoencoder, PooledFeatureNet
    from models.lenet_grouped import GroupedLeNetAutoencoder, GroupedPooledFeatureNet

    prep, bs, layers = _formatter(args), args.cifar_batch, [0, 1, 2, 3]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    def single(stage: str) -> float:
        """images/s of one single run's bare step (a fresh model each call)."""
        ae = LeNetAutoencoder(CODE_LENGTH).to(device, memory_format=fmt)
        x = prep(torch.rand(bs, 3, 32, 32, device=device))
        if stage == "pretraining":
            return bare_steps(ae, lambda b: reconstruction_loss(b, ae(b)), x, args.batches).per_s
        net = PooledFeatureNet(ae.encoder, layers)
        return bare_steps(net, _one_class_loss(net, x), x, args.batches).per_s

    def grouped(stage: str, k: int) -> float:
        """images/s over all K runs of the grouped model's bare step (K x bs images per step)."""
        ae = GroupedLeNetAutoencoder(k, CODE_LENGTH).to(device, memory_format=fmt)
        x = prep(torch.rand(bs, k * 3, 32, 32, device=device))
        if stage == "pretraining":
            return k * bare_steps(ae, grouped_ae_loss(ae, k), x, args.batches).per_s
        net = GroupedPooledFeatureNet(ae.encoder, layers)
        return k * bare_steps(net, grouped_one_class_loss(net, x), x, args.batches).per_s

    rows = []
    for stage in ("pretraining", "one-class"):
        for k in args.k:
            torch.manual_seed(0)
            g = grouped(stage, k)
            # K single runs one after another: total images over total time of the K measurements
            seq = k / sum(1.0 / single(stage) for _ in range(k))
            rows.append([stage, str(k), _rate(g), _rate(g / k), _rate(seq), _rate(seq / k), f"{g / seq:.2f}"])
    return [Table(f"K runs: grouped LeNet (main_cifar10 --classes) vs K single runs one after another (batch {bs} per run, "
                  f"one-class layers [0,1,2,3])",
                  ["stage", "K", "grouped img/s (all runs)", "grouped img/s per run", "sequential img/s (all runs)",
                   "sequential img/s per run", "grouped / sequential"], rows)]


DATASETS = {"cifar10": cifar10, "mvtec": mvtec, "batched": batched}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="*", default=["cifar10"], choices=sorted(DATASETS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--batches", type=int, default=3, help="timed steps per bare measurement (after 2 warm-up steps)")
    p.add_argument("--images", type=int, nargs="+", default=[1280, 2560, 5120], help="CIFAR-10 images per epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs per CIFAR-10 epoch-size row")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="MVTec image sizes (multiples of 8)")
    p.add_argument("--layer-size", type=int, default=64, help="MVTec image size of the layer rows")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="runs per grouped model")
    p.add_argument("--cifar-batch", type=int, default=256)
    p.add_argument("--mvtec-batch", type=int, default=32)
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device}, threads {torch.get_num_threads()}, channels_last {args.channels_last}, "
          f"timed steps {args.batches} after 2 warm-up steps", flush=True)
    for name in args.datasets:
        for table in DATASETS[name](args, device):
            print("\n" + markdown(table), flush=True)


if __name__ == "__main__":
    main()
