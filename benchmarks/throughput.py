"""Throughput: the bare model step on synthetic tensors vs the real pipeline on real data.

For each dataset model and stage (AE pretraining, one-class training, end-to-end video training,
scoring) this prints images/s (clips/s for video) of (a) the bare step (a fixed synthetic batch,
forward + backward + Adam, nothing else) and (b) the project's pipeline on the shared data
(batching, augmentation, logging, checkpointing included), and their ratio. Target: ratio <= 1.2.

With --compile both are measured with the model compiled (torch.compile, inductor): the bare step
through ``trainers.engine.compile_in_place``, the pipeline through its own ``--compile`` setting.
The compilation happens in the untimed warm-up (bare: first two steps; pipeline: first epoch or
scoring pass) and is printed as its own column: the seconds of the bare step's two warm-up steps.

    .venv/bin/python -m benchmarks.throughput cifar10 mvtec video [--device cpu|cuda] [--channels-last]
        [--compile] [--batches 20]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from trainers.engine import StageSettings, compile_in_place
from trainers.mocca import MOCCA, MethodSettings
from trainers.objective import MultiLayerObjective, reconstruction_loss
from trainers.one_class import OneClassModel
from trainers.scoring import test_distances
from utils.batching import TensorSource

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Bare(NamedTuple):
    """Throughput of the bare step, the time of its untimed warm-up (the compilation with --compile) and the
    FLOPs one item costs in that step (PyTorch's FlopCounterMode: matmuls and convolutions, forward + backward)."""

    per_s: float
    warm_up_s: float
    flops_per_item: float = float("nan")


def cpu_peak_gflops(threads: int) -> tuple[float, str]:
    """FP32 peak of ``threads`` cores from /proc/cpuinfo: clock x FP32 lanes x 2 (FMA) x 2 FMA units per core.

    The clock is the highest "cpu MHz" the kernel reports (the boost clock may be higher: then the % of peak is
    an upper bound); 2 FMA units per core holds for Zen 2-4 and most server Intel cores. Pass --peak-gflops
    for a known value.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return float("nan"), "unknown CPU"
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    mhz = max((float(ln.split(":", 1)[1]) for ln in info.splitlines() if ln.startswith("cpu MHz")), default=float("nan"))
    amd = "AuthenticAMD" in info
    # AMD Zen 4 runs AVX-512 on 256-bit units (two passes per instruction): its datapath is AVX2-wide
    lanes = 16 if "avx512f" in flags and not amd else 8 if "avx2" in flags else 4
    fma = 2 if "fma" in flags else 1
    per_core = mhz / 1000 * lanes * fma * 2
    isa = "AVX-512" if lanes == 16 else ("AVX2-wide" + (" (AVX-512 double-pumped)" if "avx512f" in flags else "")
                                          if lanes == 8 else "SSE")
    what = f"{mhz:.0f} MHz x {lanes} FP32 lanes ({isa}) x {fma} (FMA) x 2 FMA units = {per_core:.1f} GFLOP/s per core"
    return per_core * threads, what


def step_flops(model: nn.Module, loss_fn: Callable[[Tensor], Tensor], x: Tensor, train: bool) -> float:
    """FLOPs of one step on ``x`` per item (forward, plus backward when training)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train(train)
    with FlopCounterMode(display=False) as counter:
        if train:
            loss_fn(x).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                loss_fn(x)
    return counter.get_total_flops() / x.shape[0]


class Row(NamedTuple):
    """One line of the table."""

    stage: str
    bare: Bare
    pipeline: float


def bare_steps(model: nn.Module, loss_fn: Callable[[Tensor], Tensor], x: Tensor, n: int, train: bool = True,
               compile: bool = False) -> Bare:
    """items/s of n identical steps on one resident batch (2 warm-up steps, timed apart, not counted).

    With ``compile`` the model is compiled in place first, so ``loss_fn``'s calls of it run compiled.
    """
    flops = step_flops(model, loss_fn, x, train) if not compile else float("nan")
    if compile:
        compile_in_place(model)
    opt = torch.optim.Adam(model.parameters(), 1e-4) if train else None
    model.train(train)
    t0 = time.perf_counter()
    for i in range(n + 2):
        if i == 2:
            _sync(x.device)
            warm_up = time.perf_counter() - t0
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
    return Bare(n * x.shape[0] / (time.perf_counter() - t0), warm_up, flops)


def pipeline_epoch(run: Callable[[Path], list], n_images: int, device: torch.device) -> float:
    """images/s of the pipeline's own epoch loop (second epoch, so warm-up is excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        history = run(Path(tmp) / "ckpt.pt")
    return n_images / history[-1]["seconds"]


def second_pass(run: Callable[[], object], n_items: int, device: torch.device) -> float:
    """items/s of the second of two identical scoring passes (warm-up and compilation excluded, as
    the training rows time the second epoch)."""
    run()
    _sync(device)
    t0 = time.perf_counter()
    run()
    _sync(device)
    return n_items / (time.perf_counter() - t0)


def cifar10(args: argparse.Namespace, device: torch.device) -> list[Row]:
    from datasets.cifar10 import load_one_class
    from models.lenet import LeNetAutoencoder, PooledFeatureNet

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    prep = lambda x: x.contiguous(memory_format=fmt)  # noqa: E731
    bs, n_b = 256, args.batches
    data = load_one_class(SHARED / "cifar10", 1)
    train = TensorSource(data.train[: bs * n_b].to(device))
    n = len(train)
    x = prep(torch.rand(bs, 3, 32, 32, device=device))
    settings = lambda name: StageSettings(name, epochs=2, learning_rate=1e-4, weight_decay=5e-7,  # noqa: E731
                                          progress=False, compile=args.compile)
    rows = []

    torch.manual_seed(0)
    ae = LeNetAutoencoder(128).to(device, memory_format=fmt)
    bare = bare_steps(ae, lambda b: reconstruction_loss(b, ae(b)), x, n_b, compile=args.compile)
    layers = [0, 1, 2, 3]
    mocca = MOCCA(lambda: LeNetAutoencoder(128), PooledFeatureNet, {"model": "lenet", "code_length": 128},
                  MethodSettings(layers, batch_size=bs, warm_up_epochs=0, pretrain=settings("pretrain"),
                                 train=settings("train")), device=device, channels_last=args.channels_last)
    with tempfile.TemporaryDirectory() as tmp:  # the pipeline's stages, as main_cifar10 runs them
        pretrain = mocca.pretrain(train, Path(tmp) / "ae.pt", log=lambda s: None)
        one_class = mocca.train(train, Path(tmp) / "ae.pt", Path(tmp) / "model.pt", log=lambda s: None)
    rows.append(Row("cifar10 AE pretraining", bare, n / pretrain[-1]["seconds"]))  # second epoch: warm-up excluded

    net, obj = mocca.model.net, mocca.model.objective
    bare = bare_steps(net, lambda b: obj.loss(obj.distances(net(b))), x, n_b, compile=args.compile)
    rows.append(Row("cifar10 one-class training", bare, n / one_class[-1]["seconds"]))

    bare = bare_steps(net, lambda b: obj.distances(net(b)), x, n_b, train=False, compile=args.compile)
    test = TensorSource(data.test.to(device))
    pipe = second_pass(lambda: test_distances(net, obj, test.batches(bs), prepare=prep), len(test), device)
    rows.append(Row("cifar10 scoring", bare, pipe))
    return rows


def mvtec(args: argparse.Namespace, device: torch.device) -> list[Row]:
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
    settings = StageSettings("pretrain", epochs=2, learning_rate=1e-4, weight_decay=5e-7, progress=False,
                             compile=args.compile)
    torch.manual_seed(0)
    ae = ResidualAutoencoder(128, 128).to(device, memory_format=fmt)
    bare = bare_steps(ae, lambda b: reconstruction_loss(b, ae(b)), x, n_b, compile=args.compile)
    mocca = MOCCA(lambda: ResidualAutoencoder(128, 128), None, {}, MethodSettings([4], batch_size=bs, pretrain=settings),
                  device=device, channels_last=args.channels_last)
    pipe = pipeline_epoch(lambda p: mocca.pretrain(train, p, log=lambda s: None), bs * n_b, device)
    return [Row("mvtec bottle AE pretraining (128 px)", bare, pipe)]


def video(args: argparse.Namespace, device: torch.device) -> list[Row]:
    """Ped2 end to end at the configs/ped2.yaml clip size and batch size (16 frames at 32x48, 4 clips).

    The pipeline is ``train_end_to_end`` on clips drawn from the real training videos (decoded and
    cached once, outside the timing); one epoch = --batches batches. Radii are re-estimated after
    every step (warm-up 0), as in all epochs of a real run but the first ones. Scoring is
    ``score_videos`` over every stride-1 window of test video 01 (165 clips).
    """
    from datasets.video import VideoClips, load_split, load_test_set
    from trainers.end_to_end import end_to_end_loss, initial_centroids, score_videos, train_end_to_end
    from trainers.settings import video_settings
    from trainers.video_pipeline import build_model, model_arch
    from utils.cli import video_config

    config = video_config(["--dataset", "ped2"])
    layers = [int(i) for i in config["idx_list_enc"]]
    vs = video_settings(config, layers)
    root, size, seed = SHARED / "ped2", vs.frame_size, vs.seed
    bs, n_b, w = vs.batch_size, args.batches, vs.recon_weight
    names, videos = load_split(root, "ped2", "training", size, vs.remove_background,
                               background_recipe=vs.background_recipe)
    clips = VideoClips(videos, vs.clip_length, names)
    arch = model_arch(vs, (3, clips.clip_length, *clips.frame_shape))
    sample = lambda gen: clips.sample_batch(bs, gen).to(device)  # noqa: E731

    def fresh_model() -> OneClassModel:
        torch.manual_seed(seed)
        net = build_model(arch, layers, vs.dropout).to(device)
        centers = initial_centroids(net, sample, n_b, seed)
        return OneClassModel(net, MultiLayerObjective(centers, vs.boundary, vs.nu, vs.layer_reduction)).to(device)

    x = torch.rand(bs, *arch["input_shape"], device=device)
    model = fresh_model()
    bare = bare_steps(model.net, lambda b: end_to_end_loss(model, b, w).total, x, n_b, compile=args.compile)
    settings = StageSettings("train", epochs=2, learning_rate=vs.stage.learning_rate,
                             weight_decay=vs.stage.weight_decay, optimizer=vs.stage.optimizer,
                             progress=False, compile=args.compile)
    model = fresh_model()
    full_arch = {**arch, "layers": layers, "boundary": vs.boundary, "nu": vs.nu}
    run = lambda p: train_end_to_end(model, sample, n_b, settings, 0, p, full_arch, seed,  # noqa: E731
                                     recon_weight=w, log=lambda s: None)
    pipe = pipeline_epoch(run, bs * n_b, device)
    rows = [Row(f"ped2 end-to-end training, clips/s ({bs} x 3x{clips.clip_length}x{size[0]}x{size[1]})", bare, pipe)]

    tbs = vs.test_batch_size
    bare = bare_steps(model.net, lambda b: model.objective.distances(model.net(b)[1]),
                      torch.rand(tbs, *arch["input_shape"], device=device), n_b, train=False, compile=args.compile)
    t_names, t_videos, t_labels = load_test_set(root, "ped2", size, vs.remove_background, vs.labels,
                                                background_recipe=vs.background_recipe)
    test = VideoClips(t_videos, clips.clip_length, t_names)
    pipe = second_pass(lambda: score_videos(model, test, t_labels, tbs, progress=False, max_videos=1),
                       test.n_windows(0), device)
    rows.append(Row(f"ped2 scoring, clips/s (test video {t_names[0]}, batch {tbs})", bare, pipe))
    return rows


DATASETS = {"cifar10": cifar10, "mvtec": mvtec, "video": video}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="*", default=["cifar10"], choices=sorted(DATASETS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (bare step and pipeline)")
    p.add_argument("--batches", type=int, default=20, help="batches per timed epoch")
    p.add_argument("--peak-gflops", type=float, default=None, help="FP32 peak of the threads used (default: from "
                                                                  "/proc/cpuinfo, see cpu_peak_gflops)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    print(f"device {device}, threads {threads}, channels_last {args.channels_last}, compile {args.compile}")
    peak, how = (args.peak_gflops, "given") if args.peak_gflops else cpu_peak_gflops(threads)
    if device.type == "cpu":
        print(f"FP32 peak of {threads} thread(s): {peak:.0f} GFLOP/s ({how}); GFLOP/s = bare img/s x FLOPs per "
              "image of the step (FlopCounterMode: convolutions and matmuls, forward + backward)")
    extra = " bare compile s (2 warm-up steps) |" if args.compile else ""
    print("| stage | bare img/s | pipeline img/s | bare/pipeline | MFLOP/img | bare GFLOP/s | % of peak |" + extra)
    print("|---|---|---|---|---|---|---|" + ("---|" if args.compile else ""))
    for name in args.datasets:
        for stage, bare, pipe in DATASETS[name](args, device):
            warm = f" {bare.warm_up_s:.1f} |" if args.compile else ""
            gflops = bare.per_s * bare.flops_per_item / 1e9
            share = f"{100 * gflops / peak:.0f} %" if device.type == "cpu" and peak == peak else "—"
            print(f"| {stage} | {_rate(bare.per_s)} | {_rate(pipe)} | {bare.per_s / pipe:.2f} | "
                  f"{bare.flops_per_item / 1e6:.0f} | {gflops:.1f} | {share} |" + warm, flush=True)


def _rate(per_s: float) -> str:
    """Whole numbers for images/s; one decimal where a rate is small (video clips/s)."""
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.1f}"


if __name__ == "__main__":
    main()
