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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from datasets.cifar10 import CIFAR10_CLASSES, check_class, load_one_class
from models.lenet import LAYER_INDICES, LeNetAutoencoder, PooledFeatureNet
from models.lenet_grouped import GroupedLeNetAutoencoder, GroupedPooledFeatureNet, stack_runs
from trainers.engine import Resume, fit_runs
from trainers.objective import (BOUNDARIES, MultiLayerObjective, compute_centroids, recalibrate_batchnorm,
                                reconstruction_loss)
from trainers.one_class import ONE_CLASS_KIND, OneClassModel, one_class_step
from trainers.pretrain import AE_KIND, epoch_generator
from trainers.scoring import score_and_evaluate, test_distances
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
# checkpoints: one grouped state <-> K per-run files in the format a sequential run saves
# ------------------------------------------------------------------------------------------------

class PerRunCheckpoints:
    """``engine.Checkpointer`` for K grouped runs: one ordinary checkpoint file per run.

    ``to_states()`` cuts the grouped module into K per-run state dicts, ``from_states`` loads K of
    them back; the optimizer state is cut and merged the same way. Written after the last epoch and
    whenever ``CHECKPOINT_INTERVAL_S`` has passed since the last write.
    """

    def __init__(self, paths: Sequence[Path], kind: str, arch: dict[str, Any],
                 to_states: Callable[[], list[dict[str, Tensor]]], from_states: Callable[[list[dict]], None],
                 single_shapes: Sequence[torch.Size], grouped_shapes: Sequence[torch.Size]):
        self.paths, self.kind, self.arch = list(paths), kind, arch
        self.to_states, self.from_states = to_states, from_states
        self.single_shapes, self.grouped_shapes = list(single_shapes), list(grouped_shapes)
        self.last_write = time.perf_counter()

    def load(self) -> Resume | None:
        ckpts = _load_resume(self.paths, self.kind, self.arch)
        if ckpts is None:
            return None
        self.from_states([c["state"] for c in ckpts])
        return Resume(epoch=int(ckpts[0]["epoch"]),
                      optimizer=merge_optimizer_states([c["optimizer"] for c in ckpts], self.grouped_shapes),
                      scheduler=ckpts[0]["scheduler"], histories=[list(c.get("history", [])) for c in ckpts],
                      torch_rng=ckpts[0].get("torch_rng"))

    def save(self, epoch: int, optimizer: torch.optim.Optimizer, scheduler: Any,
             histories: list[list[dict[str, float]]], final: bool) -> None:
        if not final and time.perf_counter() - self.last_write < CHECKPOINT_INTERVAL_S:
            return
        states = self.to_states()
        opt_states = split_optimizer_state(optimizer.state_dict(), len(self.paths), self.single_shapes)
        for path, state, opt, history in zip(self.paths, states, opt_states, histories):
            save_checkpoint(path, self.kind, self.arch, state=state, optimizer=opt, scheduler=scheduler.state_dict(),
                            epoch=epoch, history=history, torch_rng=torch.get_rng_state())
        self.last_write = time.perf_counter()


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

    def ae_states() -> list[dict[str, Tensor]]:
        return [_cpu_state(m) for m in ae.to_models()]

    def load_ae_states(states: list[dict]) -> None:
        for m, state in zip(singles, states):
            m.load_state_dict(state)
        ae.load_models(singles)

    ae_checkpoints = PerRunCheckpoints([d / results.AE_CHECKPOINT for d in run_dirs], AE_KIND, arch, ae_states,
                                       load_ae_states, [p.shape for p in singles[0].parameters()],
                                       [p.shape for p in ae.parameters()])

    def ae_step(x: Tensor, epoch: int):
        x = prepare(x)
        return reconstruction_loss(x, ae(x), runs=k), None, None  # (K,)

    n = len(data.train)
    order = lambda e: data.train.batches(bs, orders=epoch_orders(seeds, n, e), limit=limit,  # noqa: E731
                                         drop_singleton=True)
    t0 = time.perf_counter()
    pre_hist = fit_runs(ae.parameters(), ae_step, order, data.train.n_batches(bs, limit), _stage(config, "pretrain", "ae"),
                        ae_checkpoints, train_modules=[ae], run_labels=labels, resume=config["resume"], log=log)
    timings["pretrain_s"] = time.perf_counter() - t0
    for d, h in zip(run_dirs, pre_hist):
        results.write_history(d / "pretrain_log.csv", h)

    # ---- centroids: per run, mean feature over its training set, net in eval mode (the shared objective code).
    net = GroupedPooledFeatureNet(ae.encoder, layers)
    t0 = time.perf_counter()
    recalibrate = bool(config.get("recalibrate_bn"))
    calibration = lambda: (prepare(x) for x in data.train.batches(bs, limit=limit, drop_singleton=True))  # noqa: E731
    if recalibrate:  # BatchNorm channels are per run, so this is each run's own re-estimation
        recalibrate_batchnorm(net, calibration())
    centers = compute_centroids(net, (prepare(x) for x in data.train.batches(bs, limit=limit)))  # {j: (K, d)}
    timings["centroids_s"] = time.perf_counter() - t0
    model = OneClassModel(net, MultiLayerObjective(centers, boundary, nu, config["layer_reduction"])).to(device)

    # ---- stage 2: one-class training of the encoders (the shared step: losses and radii per run).
    oc_arch = {**arch, "layers": layers, "boundary": boundary, "nu": nu}
    model_paths = [d / results.MODEL_CHECKPOINT for d in run_dirs]

    def run_models() -> list[OneClassModel]:
        return [OneClassModel(PooledFeatureNet(e, layers), model.objective.run(r))
                for r, e in enumerate(ae.encoder.to_encoders())]

    def load_run_states(states: list[dict]) -> None:
        runs_ = run_models()
        for m, state in zip(runs_, states):
            m.load_state_dict(state)
        ae.encoder.load_encoders([m.net.encoder.to(device) for m in runs_])
        for j in layers:
            model.objective.center(j).copy_(torch.stack([m.objective.center(j) for m in runs_]))
            model.objective.radius(j).copy_(torch.stack([m.objective.radius(j) for m in runs_]))

    oc_checkpoints = PerRunCheckpoints(model_paths, ONE_CLASS_KIND, oc_arch, lambda: [_cpu_state(m) for m in run_models()],
                                       load_run_states, [p.shape for p in singles[0].encoder.parameters()],
                                       [p.shape for p in ae.encoder.parameters()])

    def radii_rows() -> list[dict[str, float]]:
        host = model.objective.radii()
        return [{f"radius_{j}": host[j][r] for j in layers} for r in range(k)]

    t0 = time.perf_counter()
    oc_hist = fit_runs(ae.encoder.parameters(), one_class_step(model, int(config["warm_up_n_epochs"]), prepare), order,
                       data.train.n_batches(bs, limit), _stage(config, "train", "oc"), oc_checkpoints,
                       train_modules=[net], run_labels=labels, resume=config["resume"], log=log,
                       extra_payload=radii_rows)
    if recalibrate:  # as two_stage: the per-run checkpoints then hold the statistics that are tested
        recalibrate_batchnorm(net, calibration())
        for path, m in zip(model_paths, run_models()):
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
    dist = test_distances(net, model.objective, data.test.batches(bs, orders=subsets), prepare)  # {j: (K, N)}
    timings["test_s"] = time.perf_counter() - t0
    all_metrics = []
    for r, (spec, run_dir) in enumerate(zip(runs, run_dirs)):
        objective = model.objective.run(r)  # on the device, with the distances
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
