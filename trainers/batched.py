"""K independent CIFAR-10 MOCCA runs (normal classes x seeds) trained together as one grouped model.

The CIFAR-10 LeNet is far too small to fill a GPU, and the paper's Table I needs 10 classes x 10
seeds x 2 boundaries. This trains K runs in one process as one ``GroupedLeNetAutoencoder``
(run r = channel group r, see ``models.lenet_grouped``) and writes, for every run, the same run
folder ``main_cifar10.py -ptr -tr -tt`` writes (config.yaml, env.json, ae.pt, model.pt,
pretrain_log.csv, train_log.csv, scores.csv, metrics.json; checkpoints in the usual per-run format).

Why the results equal K sequential runs (up to float summation order inside the grouped kernels):
- run r starts from the weights ``LeNetAutoencoder(zl)`` gets right after ``set_seed(seed_r)``, as in
  ``trainers.two_stage``;
- run r sees its own training set in its own batch order (``epoch_generator(seed_r, epoch)``), so
  its mini-batches are the sequential ones; BatchNorm statistics are per channel = per run;
- the loss is the sum of the runs' losses, the runs' parameters are disjoint and Adam / L2 act
  elementwise, so every run gets its sequential gradient and update; all runs share the epoch
  count, hence the MultiStepLR schedule;
- centroids (``push_from_zero`` rule), soft radii ((1 - nu) quantile of the run's own batch after
  the warm-up) and test scores are computed per run with the formulas of ``trainers.objective``.

All runs must have training sets of the same size (true for CIFAR-10: 5,000 images per class):
with unequal sizes the runs would need different numbers of steps per epoch, and a run without a
batch would still be moved by Adam's momentum, so exact equivalence is impossible without
splitting the group. Group runs of equal size instead (e.g. one invocation per class).

    python -m trainers.batched --classes 0 1 2 --seeds 0 1 2 -bd soft -dp ../shared/data/cifar10 \\
        --out results/batched --device cuda --amp --channels-last
"""
from __future__ import annotations

import copy
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from datasets.cifar10 import CIFAR10_CLASSES, check_class, load_one_class
from models.lenet import LAYER_INDICES, LeNetAutoencoder, PooledFeatureNet
from models.lenet_grouped import GroupedLeNetAutoencoder, GroupedPooledFeatureNet, stack_runs
from trainers.engine import StageSettings, make_optimizer
from trainers.evaluate import score_and_evaluate
from trainers.objective import BOUNDARIES, MultiLayerObjective, push_from_zero, recalibrate_batchnorm
from trainers.one_class import ONE_CLASS_KIND, OneClassModel
from trainers.pretrain import AE_KIND, epoch_generator
from trainers.two_stage import DEBUG_BATCHES, _stage, choose_layers, debug_subset
from utils import results
from utils.batching import batch_slices
from utils.checkpoint import load_checkpoint, replace_state, save_checkpoint
from utils.cli import CONFIG_DIR, cifar10_parser, resolve_config
from utils.errors import UserError, exit_on_user_error
from utils.runtime import batch_placer, environment, pick_device, set_seed

DATASET = "cifar10"
DEFAULT_CONFIG = CONFIG_DIR / "cifar10.yaml"
# Per-run checkpoints (K files of ~10 MB each) are written at the end of every stage and, during a
# stage, after an epoch only when this many seconds have passed since the last write: with K = 100
# runs an every-epoch write would cost more I/O than a GPU epoch. --resume continues from them.
CHECKPOINT_INTERVAL_S = 600.0


@dataclass(frozen=True)
class RunSpec:
    """One of the K runs: the normal class and the seed (everything else comes from the shared config)."""

    normal_class: int
    seed: int

    @property
    def class_name(self) -> str:
        return f"{self.normal_class}_{CIFAR10_CLASSES[self.normal_class]}"


# ------------------------------------------------------------------------------------------------
# data: per-class resident tensors, per-run batch order, stacked into the grouped layout
# ------------------------------------------------------------------------------------------------

class StackedSource:
    """Resident per-class images ``(U, N, C, H, W)``; run r reads class ``run_index[r]``.

    Every batch is one gather returning ``(B, K*C, H, W)``: run r's images in channel group r.
    Runs of the same class share one copy of the data.
    """

    def __init__(self, data: Tensor, run_index: Tensor):
        self.data = data
        self.run_index = run_index.to(data.device)
        self.k = int(run_index.numel())

    def __len__(self) -> int:
        return int(self.data.shape[1])

    def n_batches(self, batch_size: int, limit: int | None = None) -> int:
        n = -(-len(self) // batch_size)
        return min(n, limit) if limit else n

    def batches(self, batch_size: int, *, orders: Tensor | None = None, limit: int | None = None,
                drop_singleton: bool = False) -> Iterator[Tensor]:
        """``orders`` (K, n): run r's sample indices in order (its epoch permutation, or a subset); None = all, in order."""
        n = len(self) if orders is None else int(orders.shape[1])
        if orders is not None:
            orders = orders.to(self.data.device)
        for start, stop in batch_slices(n, batch_size, limit, drop_singleton):
            if orders is None:
                x = self.data[self.run_index, start:stop]  # (K, b, C, H, W)
            else:
                x = self.data[self.run_index[:, None], orders[:, start:stop]]
            yield stack_runs(x)


def epoch_orders(seeds: Sequence[int], n: int, epoch: int) -> Tensor:
    """(K, n): each run's data order of ``epoch``, drawn exactly as the sequential pipeline draws it."""
    return torch.stack([torch.randperm(n, generator=epoch_generator(s, epoch)) for s in seeds])


@dataclass
class RunData:
    train: StackedSource
    test: StackedSource
    test_labels: list[np.ndarray]  # per run
    test_classes: list[np.ndarray]


def load_data(runs: Sequence[RunSpec], config: dict[str, Any], device: torch.device) -> RunData:
    classes = list(dict.fromkeys(r.normal_class for r in runs))
    per_class = {c: load_one_class(config["data_path"], c, download=config["download"]) for c in classes}
    sizes = {c: len(d.train) for c, d in per_class.items()}
    if len(set(sizes.values())) > 1:
        text = ", ".join(f"class {c}: {n}" for c, n in sizes.items())
        raise UserError(f"batched runs need training sets of equal size ({text}); run classes with different "
                        "sizes in separate invocations of trainers.batched")
    tests = {c: len(d.test) for c, d in per_class.items()}
    if len(set(tests.values())) > 1:
        raise UserError(f"test sets differ in size between classes ({tests}): the data folder is inconsistent")
    index = torch.tensor([classes.index(r.normal_class) for r in runs])
    train = torch.stack([per_class[c].train for c in classes]).to(device)
    test = torch.stack([per_class[c].test for c in classes]).to(device)
    return RunData(StackedSource(train, index), StackedSource(test, index),
                   [per_class[r.normal_class].test_labels for r in runs],
                   [per_class[r.normal_class].test_classes for r in runs])


# ------------------------------------------------------------------------------------------------
# optimizer states: one grouped state <-> K per-run states (the format a sequential run saves)
# ------------------------------------------------------------------------------------------------

def split_optimizer_state(state: dict[str, Any], k: int, single_shapes: Sequence[torch.Size]) -> list[dict[str, Any]]:
    """Cut a grouped optimizer state dict into K state dicts of the per-run model (same param order)."""
    out = []
    for r in range(k):
        per_param = {}
        for i, st in state["state"].items():
            per_param[i] = {name: (v.reshape(k, *single_shapes[i])[r].clone() if torch.is_tensor(v) and v.dim() > 0
                                   else (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)))
                            for name, v in st.items()}
        out.append({"state": per_param, "param_groups": copy.deepcopy(state["param_groups"])})
    return out


def merge_optimizer_states(states: Sequence[dict[str, Any]], grouped_shapes: Sequence[torch.Size]) -> dict[str, Any]:
    """Inverse of ``split_optimizer_state``: K per-run optimizer state dicts -> one grouped state dict."""
    first = states[0]
    merged = {}
    for i, st in first["state"].items():
        if any(set(s["state"].get(i, {})) != set(st) for s in states):
            raise UserError("the runs' optimizer checkpoints do not match (different stages or settings); "
                            "rerun without --resume")
        merged[i] = {}
        for name, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                merged[i][name] = torch.stack([s["state"][i][name] for s in states]).reshape(grouped_shapes[i])
            else:
                if any(float(s["state"][i][name]) != float(v) for s in states):
                    raise UserError("the runs' checkpoints are at different optimizer steps; rerun without --resume")
                merged[i][name] = v.clone() if torch.is_tensor(v) else v
    return {"state": merged, "param_groups": copy.deepcopy(first["param_groups"])}


# ------------------------------------------------------------------------------------------------
# the batched training loop (mirrors trainers.engine.fit, with a loss per run)
# ------------------------------------------------------------------------------------------------

# step(batch, epoch) -> (losses (K,), hook after optimizer.step() or None, {name: (K,) scalars to log})
BatchedStep = Callable[[Tensor, int], "tuple[Tensor, Callable[[], None] | None, dict[str, Tensor]]"]


@dataclass
class Resume:
    """What per-run checkpoints of a stage hold, merged: where the stage continues."""

    epoch: int
    optimizer: list[dict[str, Any]]
    scheduler: dict[str, Any]
    histories: list[list[dict[str, float]]]


def fit_batched(
    params: Sequence[nn.Parameter],
    step: BatchedStep,
    batches: Callable[[int], Iterator[Tensor]],
    settings: StageSettings,
    labels: Sequence[str],
    save: Callable[[int, torch.optim.Optimizer, Any, list[list[dict[str, float]]]], None],
    *,
    train_modules: Sequence[nn.Module],
    resume: Resume | None = None,
    extra_payload: Callable[[], list[dict[str, float]]] | None = None,
    log: Callable[[str], None] = print,
) -> list[list[dict[str, float]]]:
    """Train K runs for ``settings.epochs`` epochs; return each run's per-epoch history.

    ``save(epoch, optimizer, scheduler, histories)`` writes the per-run checkpoints: after the last
    epoch and whenever ``CHECKPOINT_INTERVAL_S`` has passed. The loss is synchronised with the host
    once per epoch, never per batch.
    """
    params = list(params)
    device = params[0].device  # the loop's tensors live with the parameters (one device, decided by the caller)
    k = len(labels)
    optimizer = make_optimizer(params, settings)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, settings.milestones, gamma=settings.gamma)
    histories: list[list[dict[str, float]]] = [[] for _ in range(k)]
    start_epoch = 0
    if resume is not None:
        optimizer.load_state_dict(merge_optimizer_states(resume.optimizer, [p.shape for p in params]))
        scheduler.load_state_dict(resume.scheduler)
        histories = [list(h) for h in resume.histories]
        start_epoch = resume.epoch
        log(f"[{settings.name}] resuming {k} runs after epoch {start_epoch}")
    if start_epoch >= settings.epochs:
        log(f"[{settings.name}] already complete ({start_epoch} epochs)")
        return histories

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if settings.amp and device.type == "cuda"
                else nullcontext())
    last_save = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        for m in train_modules:
            m.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros(k, device=device)
        extra_sum: dict[str, Tensor] = {}
        seen = 0
        for x in batches(epoch):
            with autocast:
                losses, after_step, extra = step(x, epoch)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # disjoint parameters: each run gets its own gradient
            optimizer.step()
            if after_step is not None:
                after_step()
            loss_sum += losses.detach().float()
            for name, v in extra.items():
                extra_sum[name] = extra_sum[name] + v.detach() if name in extra_sum else v.detach().clone()
            seen += 1
        if seen == 0:
            raise UserError(f"[{settings.name}] the training set produced no batch: check the data path and batch size")
        losses_host = [v / seen for v in loss_sum.tolist()]  # as engine.fit: float(sum) / count
        extra_host = {name: [v / seen for v in t.float().tolist()] for name, t in extra_sum.items()}
        bad = [labels[r] for r, v in enumerate(losses_host) if not math.isfinite(v)]
        if bad:
            raise UserError(f"[{settings.name}] loss became non-finite at epoch {epoch + 1} in run(s) {', '.join(bad)}: "
                            "lower the learning rate (-lr/-alr) or check the input data")
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        seconds = time.perf_counter() - t0
        payload = extra_payload() if extra_payload is not None else [{} for _ in range(k)]
        for r in range(k):
            row = {"epoch": epoch + 1, "loss": losses_host[r], "lr": lr, "seconds": seconds}
            row.update({name: v[r] for name, v in extra_host.items()})
            row.update(payload[r])
            histories[r].append(row)
        log(f"[{settings.name}] epoch {epoch + 1}/{settings.epochs}  lr {lr:.4g}  time {seconds:.1f}s  "
            f"loss per run " + " ".join(f"{v:.4g}" for v in losses_host))
        if epoch + 1 == settings.epochs or time.perf_counter() - last_save >= CHECKPOINT_INTERVAL_S:
            save(epoch + 1, optimizer, scheduler, histories)
            last_save = time.perf_counter()
    return histories


def _load_resume(paths: Sequence[Path], kind: str, arch: dict[str, Any]) -> list[dict[str, Any]] | None:
    """All runs' checkpoints of a stage, or None when there are none; partial / unequal sets are errors."""
    present = [p for p in paths if p.is_file()]
    if not present:
        return None
    if len(present) != len(paths):
        missing = [str(p) for p in paths if not p.is_file()]
        raise UserError(f"--resume: {len(missing)} of {len(paths)} runs have no {paths[0].name} "
                        f"(e.g. {missing[0]}); rerun without --resume")
    ckpts = [load_checkpoint(p, kind, arch) for p in paths]
    epochs = {int(c["epoch"]) for c in ckpts}
    if len(epochs) != 1:
        raise UserError(f"--resume: the runs' {paths[0].name} checkpoints are at different epochs {sorted(epochs)} "
                        "(killed while writing them); rerun without --resume")
    return ckpts


def _resume_of(ckpts: list[dict[str, Any]]) -> Resume:
    return Resume(epoch=int(ckpts[0]["epoch"]), optimizer=[c["optimizer"] for c in ckpts],
                  scheduler=ckpts[0]["scheduler"], histories=[list(c.get("history", [])) for c in ckpts])


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------

def run_config(config: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    """The config a sequential ``main_cifar10.py -ptr -tr -tt`` run of this class and seed would save."""
    cfg = dict(config)
    cfg.update(normal_class=spec.normal_class, seed=spec.seed, pretrain=True, train=True, test=True,
               run_dir=None, model_ckp=None)
    return cfg


def _check(runs: Sequence[RunSpec], config: dict[str, Any]) -> None:
    if not runs:
        raise UserError("no runs: give at least one class and one seed")
    for r in runs:
        check_class(r.normal_class)
        if r.seed < 0:
            raise UserError(f"seed {r.seed}: batched runs need seeds >= 0 (an unseeded run's data order "
                            "cannot be reproduced per run)")
    if len(set(runs)) != len(runs):
        raise UserError("the same (class, seed) run is listed twice")
    if config.get("run_dir"):
        raise UserError("--run-dir names one run folder; batched runs go to <--out>/cifar10/<class>/<run name>")
    if config.get("model_ckp"):
        raise UserError("-ck is not supported by trainers.batched: it always runs all stages")
    if config.get("compile"):
        raise UserError("--compile is not supported by trainers.batched (its grouped model has its own loop); "
                        "drop --compile or run main_cifar10.py")
    if config["test_checkpoint"] != "last":
        raise UserError("--test-checkpoint best-loss is not supported by trainers.batched (its runs share one "
                        "loop); drop it or run main_cifar10.py")
    zl = int(config["code_length"])
    if zl <= 0 or zl % 16:
        raise UserError(f"-zl {zl}: the CIFAR-10 code length must be a positive multiple of 16")
    if config["boundary"] not in BOUNDARIES:
        raise UserError(f"-bd {config['boundary']}: use one of {', '.join(BOUNDARIES)}")


def train_batched(runs: Sequence[RunSpec], config: dict[str, Any], device: torch.device | str | None = None,
                  log: Callable[[str], None] = print, run_dirs: Sequence[str | Path] | None = None
                  ) -> list[dict[str, Any]]:
    """Pretrain, compute centroids, train and test K runs together; return each run's metrics.

    ``config`` is a resolved ``main_cifar10`` config (``utils.cli.resolve_config``); the runs' own
    class and seed replace ``normal_class`` / ``seed``. Each run's folder is ``run_dirs[r]`` when
    given (e.g. a sweep's own names; saved as ``run_dir`` in that run's config), else
    ``results.run_dir_for(run config, "cifar10", class name, layers)`` = <output_path>/cifar10/<class>/<name>.
    """
    runs = list(runs)
    _check(runs, config)
    if run_dirs is not None and len(run_dirs) != len(runs):
        raise UserError(f"{len(run_dirs)} run folders for {len(runs)} runs")
    device = pick_device(config["device"]) if device is None else torch.device(device)
    k = len(runs)
    zl = int(config["code_length"])
    layers = choose_layers(config, LAYER_INDICES)
    boundary, nu = str(config["boundary"]), float(config["nu"])
    configs = [run_config(config, r) for r in runs]
    if run_dirs is not None:
        for c, d in zip(configs, run_dirs):
            c["run_dir"] = str(d)
    labels = [f"{r.normal_class}/s{r.seed}" for r in runs]
    run_dirs = [results.run_dir_for(c, DATASET, r.class_name, layers) for c, r in zip(configs, runs)]
    if len(set(run_dirs)) != len(run_dirs):
        raise UserError("two runs would share one run folder")
    limit = DEBUG_BATCHES if config["debug"] else None
    bs = int(config["batch_size"])
    fmt = torch.channels_last if config.get("channels_last") else torch.contiguous_format
    prepare = batch_placer(device, bool(config.get("channels_last")))
    seeds = [r.seed for r in runs]

    data = load_data(runs, config, device)
    env = environment(device)
    for r, (run_dir, cfg) in enumerate(zip(run_dirs, configs)):
        run_dir.mkdir(parents=True, exist_ok=True)
        results.write_config(run_dir, cfg, {**env, "batched": {"k": k, "index": r}})
    log(f"{k} batched runs ({', '.join(labels)}) on {device}; run folders under "
        f"{Path(config['output_path']) / DATASET}")
    timings: dict[str, float] = {}
    arch = {"model": "lenet", "code_length": zl}

    # ---- stage 1: AE pretraining. Run r starts from LeNetAutoencoder(zl) built right after set_seed(seed_r).
    singles: list[LeNetAutoencoder] = []
    for s in seeds:
        set_seed(s, deterministic=bool(config.get("deterministic")))
        singles.append(LeNetAutoencoder(zl))
    ae = GroupedLeNetAutoencoder.from_models(singles).to(device, memory_format=fmt)
    ae_paths = [d / results.AE_CHECKPOINT for d in run_dirs]
    ae_shapes = [p.shape for p in singles[0].parameters()]

    def save_ae(epoch, optimizer, scheduler, histories):
        models = ae.to_models()
        opt_states = split_optimizer_state(optimizer.state_dict(), k, ae_shapes)
        for r in range(k):
            save_checkpoint(ae_paths[r], AE_KIND, arch, state=_cpu_state(models[r]), optimizer=opt_states[r],
                            scheduler=scheduler.state_dict(), epoch=epoch, history=histories[r],
                            torch_rng=torch.get_rng_state())

    resume = None
    if config["resume"]:
        ckpts = _load_resume(ae_paths, AE_KIND, arch)
        if ckpts is not None:
            for m, c in zip(singles, ckpts):
                m.load_state_dict(c["state"])
            ae.load_models(singles)
            resume = _resume_of(ckpts)

    def ae_step(x: Tensor, epoch: int):
        x = prepare(x)
        rec = ae(x)
        b = x.shape[0]
        losses = ((rec.float() - x.float()) ** 2).reshape(b, k, -1).sum(dim=2).mean(dim=0)  # (K,)
        return losses, None, {}

    n = len(data.train)
    t0 = time.perf_counter()
    pre_hist = fit_batched(
        list(ae.parameters()), ae_step,
        lambda e: data.train.batches(bs, orders=epoch_orders(seeds, n, e), limit=limit, drop_singleton=True),
        _stage(config, "pretrain", "ae"), labels, save_ae, train_modules=[ae], resume=resume, log=log)
    timings["pretrain_s"] = time.perf_counter() - t0
    for d, h in zip(run_dirs, pre_hist):
        results.write_history(d / "pretrain_log.csv", h)

    # ---- centroids: per run, mean feature over its training set, net in eval mode.
    net = GroupedPooledFeatureNet(ae.encoder, layers)
    t0 = time.perf_counter()
    recalibrate = bool(config.get("recalibrate_bn"))
    calibration = lambda: (prepare(x) for x in data.train.batches(bs, limit=limit, drop_singleton=True))  # noqa: E731
    if recalibrate:  # BatchNorm channels are per run, so this is each run's own re-estimation
        recalibrate_batchnorm(net, calibration())
    centers = _centroids(net, (prepare(x) for x in data.train.batches(bs, limit=limit)))
    timings["centroids_s"] = time.perf_counter() - t0
    radii = {j: torch.zeros(k, device=device, dtype=torch.float32) for j in layers}  # as the objective's buffers

    # ---- stage 2: one-class training of the encoders.
    oc_arch = {**arch, "layers": layers, "boundary": boundary, "nu": nu}
    model_paths = [d / results.MODEL_CHECKPOINT for d in run_dirs]
    enc_params = list(ae.encoder.parameters())
    enc_shapes = [p.shape for p in singles[0].encoder.parameters()]

    def one_class_models() -> list[OneClassModel]:
        encoders = ae.encoder.to_encoders()
        out = []
        for r, e in enumerate(encoders):
            obj = MultiLayerObjective({j: centers[j][r] for j in layers}, boundary, nu).to(device)
            for j in layers:
                obj.radius(j).copy_(radii[j][r])
            out.append(OneClassModel(PooledFeatureNet(e, layers), obj))
        return out

    def save_model(epoch, optimizer, scheduler, histories):
        models = one_class_models()
        opt_states = split_optimizer_state(optimizer.state_dict(), k, enc_shapes)
        for r in range(k):
            save_checkpoint(model_paths[r], ONE_CLASS_KIND, oc_arch, state=_cpu_state(models[r]),
                            optimizer=opt_states[r], scheduler=scheduler.state_dict(), epoch=epoch,
                            history=histories[r], torch_rng=torch.get_rng_state())

    resume = None
    if config["resume"]:
        ckpts = _load_resume(model_paths, ONE_CLASS_KIND, oc_arch)
        if ckpts is not None:
            models = one_class_models()
            for m, c in zip(models, ckpts):
                m.load_state_dict(c["state"])
            ae.encoder.load_encoders([m.net.encoder.to(device) for m in models])
            for j in layers:
                centers[j] = torch.stack([m.objective.center(j) for m in models]).to(device)
                radii[j] = torch.stack([m.objective.radius(j) for m in models]).to(device)
            resume = _resume_of(ckpts)

    warm_up = int(config["warm_up_n_epochs"])

    def oc_step(x: Tensor, epoch: int):
        feats = net(prepare(x))
        dist = {j: ((feats[j].float() - centers[j][:, None, :]) ** 2).sum(dim=2) for j in layers}  # (K, B)
        if boundary == "hard":
            per_layer = [d.mean(dim=1) for d in dist.values()]
        else:
            per_layer = []
            for j in layers:
                r2 = (radii[j] ** 2)[:, None]
                per_layer.append(r2[:, 0] + torch.clamp(dist[j] - r2, min=0).mean(dim=1) / nu)
        stacked = torch.stack(per_layer)
        losses = stacked.mean(dim=0) if config["layer_reduction"] == "mean" else stacked.sum(dim=0)

        def update_radii():  # after the step, from this batch (eq. 2), as MultiLayerObjective.update_radii
            with torch.no_grad():
                for j in layers:
                    radii[j].copy_(torch.quantile(dist[j].detach().float().sqrt(), 1.0 - nu, dim=1))

        hook = update_radii if boundary == "soft" and epoch >= warm_up else None
        return losses, hook, {f"dist_{j}": d.detach().mean(dim=1) for j, d in dist.items()}

    def radii_rows() -> list[dict[str, float]]:
        host = {j: radii[j].tolist() for j in layers}
        return [{f"radius_{j}": host[j][r] for j in layers} for r in range(k)]

    t0 = time.perf_counter()
    oc_hist = fit_batched(
        enc_params, oc_step,
        lambda e: data.train.batches(bs, orders=epoch_orders(seeds, n, e), limit=limit, drop_singleton=True),
        _stage(config, "train", "oc"), labels, save_model, train_modules=[net], resume=resume,
        extra_payload=radii_rows, log=log)
    if recalibrate:  # as two_stage: the per-run checkpoints then hold the statistics that are tested
        recalibrate_batchnorm(net, calibration())
        for path, m in zip(model_paths, one_class_models()):
            replace_state(path, ONE_CLASS_KIND, _cpu_state(m))
    timings["train_s"] = time.perf_counter() - t0
    for d, h in zip(run_dirs, oc_hist):
        results.write_history(d / "train_log.csv", h)

    # ---- test: distances of every run in one pass, then the sequential scoring code per run.
    # -db: each run scores its own fixed random subset of the test set (two_stage.debug_subset of its seed).
    n_test = len(data.test)
    keeps = [debug_subset(n_test, limit * bs, s) if limit is not None else np.arange(n_test) for s in seeds]
    t0 = time.perf_counter()
    subsets = None if limit is None else torch.from_numpy(np.stack(keeps))
    dist = _test_distances(net, centers, data.test.batches(bs, orders=subsets), prepare)
    timings["test_s"] = time.perf_counter() - t0
    all_metrics = []
    for r, (spec, run_dir, model) in enumerate(zip(runs, run_dirs, one_class_models())):
        objective = model.objective  # on the device, with the distances
        labels_r = data.test_labels[r][keeps[r]]
        try:
            scored = score_and_evaluate(objective, {j: dist[j][r] for j in layers}, labels_r)
        except ValueError as err:
            raise UserError(f"cannot evaluate run {labels[r]}: {err}") from err
        m = len(labels_r)
        results.write_scores(run_dir / results.SCORES_FILE, labels_r, scored.scores, scored.layer_scores,
                             {"class": data.test_classes[r][keeps[r]].tolist()})
        metrics = {
            "dataset": DATASET, "class": spec.class_name, "boundary": boundary, "layers": list(layers), "nu": nu,
            "seed": spec.seed, "auc": scored.metrics["auc"], "max_ba": scored.metrics["max_ba"],
            "per_layer": scored.metrics["per_layer"], "score_std": scored.metrics["score_std"],
            "radii": objective.radii(), "n_test": m, "n_anomalous": int(np.sum(labels_r)),
            "timings": timings, "device": str(device), "normal_class": spec.normal_class,
            "batched": {"k": k, "index": r},  # timings are for all k runs together
        }
        results.write_metrics(run_dir, metrics)
        all_metrics.append(metrics)
        log(f"[test] {DATASET} {spec.class_name} seed {spec.seed} {boundary} layers {list(layers)}: "
            f"AUC {metrics['auc']:.4f}  maxBA {metrics['max_ba']:.4f}  (n={m}) -> {run_dir / results.METRICS_FILE}")
    return all_metrics


@torch.no_grad()
def _centroids(net: GroupedPooledFeatureNet, batches: Iterator[Tensor]) -> dict[int, Tensor]:
    """Per run and layer, the mean feature over the run's training set (``compute_centroids``): {j: (K, d)}."""
    was_training = net.training
    net.eval()
    sums: dict[int, Tensor] = {}
    count = 0
    for x in batches:
        for j, f in net(x).items():
            s = f.float().sum(dim=1)
            sums[j] = sums[j] + s if j in sums else s
        count += x.shape[0]
    net.train(was_training)
    if count == 0:
        raise UserError("cannot compute centroids from an empty training set")
    return {j: push_from_zero(s / count) for j, s in sums.items()}


@torch.no_grad()
def _test_distances(net: GroupedPooledFeatureNet, centers: dict[int, Tensor], batches: Iterator[Tensor],
                    prepare: Callable[[Tensor], Tensor]) -> dict[int, Tensor]:
    """Squared distances of every test sample, per run and layer: {j: (K, N)}, on the model's device."""
    net.eval()
    parts: dict[int, list[Tensor]] = {j: [] for j in centers}
    for x in batches:
        for j, f in net(prepare(x)).items():
            parts[j].append(((f.float() - centers[j][:, None, :]) ** 2).sum(dim=2).float())
    return {j: torch.cat(v, dim=1) for j, v in parts.items()}


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def batched_parser():
    p = cifar10_parser()
    p.prog = "python -m trainers.batched"
    p.description = ("MOCCA on CIFAR-10: every --classes x --seeds run trained together as one batched model; "
                     "the other flags are main_cifar10.py's and apply to every run")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="normal classes (default: -nc)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: -s)")
    p.add_argument("--out", type=str, default=None,
                   help="root of the run folders <out>/cifar10/<class>/<run name> (default: --output_path)")
    return p


def parse(argv: Sequence[str] | None = None) -> tuple[list[RunSpec], dict[str, Any]]:
    """The runs (--classes x --seeds) and the config every run shares (as main_cifar10 resolves it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG)] + argv
    parser = batched_parser()
    config = resolve_config(parser, argv)
    classes = config.pop("classes") or [int(config["normal_class"])]
    seeds = config.pop("seeds") or [int(config["seed"])]
    out = config.pop("out")
    # a YAML ``per_class`` section may change settings per class: resolve as ``main_cifar10 -nc <c>`` would
    for c in classes:
        other = resolve_config(parser, [*argv, "-nc", str(c)])
        diff = sorted(key for key in config if key not in ("normal_class", "classes", "seeds", "out")
                      and other[key] != config[key])
        if diff:
            raise UserError(f"class {c} has its own settings in {config['config_file']} ({', '.join(diff)}): "
                            "runs batched together must share every setting; run that class separately")
    if out is not None:
        config["output_path"] = out
    stages = [config["pretrain"], config["train"], config["test"]]
    if any(stages) and not all(stages):
        raise UserError("trainers.batched always runs all stages: give -ptr -tr -tt together or none of them")
    return [RunSpec(int(c), int(s)) for c in classes for s in seeds], config


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    runs, config = parse(argv)
    return train_batched(runs, config)


if __name__ == "__main__":
    main()
