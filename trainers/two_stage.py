"""The two-stage image pipeline (CIFAR-10, MVTec AD): pretrain -> centroids -> one-class -> test.

An entry script describes its data and model in an ``ImageExperiment``; this module runs the
stages the flags ask for (-ptr, -tr, -tt) through the method object (``trainers.mocca.MOCCA``),
hands checkpoints from one stage to the next, and writes the run folder.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.layers import check_layer_indices
from trainers.engine import StageSettings
from trainers.mocca import MOCCA, MethodSettings
from trainers.scoring import score_and_evaluate
from utils import results
from utils.batching import TensorSource
from utils.errors import UserError
from utils.runtime import environment, pick_device, set_seed

DEBUG_BATCHES = 5


@dataclass
class ImageExperiment:
    """What an entry script supplies: data (resident tensors) and how to build the models."""

    dataset: str
    class_name: str
    train: TensorSource
    test: TensorSource
    test_labels: np.ndarray
    make_autoencoder: Callable[[], nn.Module]  # the AE must expose ``.encoder``
    make_feature_net: Callable[[nn.Module, list[int]], nn.Module]  # (encoder, layers) -> feature net
    arch: dict[str, Any]  # settings that fix the AE's weight shapes (checked when loading checkpoints)
    valid_layers: Sequence[int]
    patches_per_image: int | None = None  # MVTec textures: image score = max over patches
    test_columns: dict[str, Sequence[Any]] = field(default_factory=dict)  # extra columns for scores.csv
    summary: dict[str, Any] = field(default_factory=dict)  # extra fields for metrics.json
    net_arch: dict[str, Any] = field(default_factory=dict)  # stage-2-only shape settings (e.g. selectors)


def choose_layers(config: dict[str, Any], valid: Sequence[int]) -> list[int]:
    """-ile as given (any order, no repeats); an empty list means the last layer only (the authors' default)."""
    layers = [int(k) for k in config["idx_list_enc"]] or [int(valid[-1])]
    try:
        return list(check_layer_indices(layers, {int(k): str(k) for k in valid}))
    except ValueError as err:
        raise UserError(f"-ile {' '.join(map(str, layers))}: {err}") from err


def _stage(config: dict[str, Any], name: str, prefix: str) -> StageSettings:
    p = "ae_" if prefix == "ae" else ""
    return StageSettings(
        name=name,
        epochs=int(config[f"{p}epochs"]),
        learning_rate=float(config[f"{p}learning_rate"]),
        weight_decay=float(config[f"{p}weight_decay"]),
        milestones=[int(m) for m in config[f"{p}lr_milestones"]],
        progress=not config.get("no_progress", False),
        amp=bool(config.get("amp", False)),
        compile=bool(config.get("compile", False)),
    )


def method_settings(config: dict[str, Any], layers: list[int]) -> MethodSettings:
    """The typed settings of the method, read once from the resolved config (trainers never see CLI keys)."""
    return MethodSettings(
        layers=layers, boundary=config["boundary"], nu=float(config["nu"]), layer_reduction=config["layer_reduction"],
        batch_size=int(config["batch_size"]), warm_up_epochs=int(config["warm_up_n_epochs"]),
        pretrain=_stage(config, "pretrain", "ae"), train=_stage(config, "train", "oc"),
        recalibrate_bn=bool(config.get("recalibrate_bn")), seed=int(config["seed"]),
        debug_batches=DEBUG_BATCHES if config["debug"] else None)


def run_two_stage(exp: ImageExperiment, config: dict[str, Any], log: Callable[[str], None] = print) -> dict | None:
    """Run the stages chosen by -ptr/-tr/-tt; return the metrics when the test stage ran."""
    if not (config["pretrain"] or config["train"] or config["test"]):
        raise UserError("nothing to do: add -ptr (pretrain), -tr (train) and/or -tt (test)")
    device = pick_device(config["device"])
    seed = int(config["seed"])
    set_seed(seed, deterministic=bool(config.get("deterministic")))
    layers = choose_layers(config, exp.valid_layers)
    run_dir = results.run_dir_for(config, exp.dataset, exp.class_name, layers)
    run_dir.mkdir(parents=True, exist_ok=True)
    results.write_config(run_dir, config, environment(device))
    log(f"run folder: {run_dir}")
    settings = method_settings(config, layers)
    mocca = MOCCA(exp.make_autoencoder, exp.make_feature_net, exp.arch, settings, net_arch=exp.net_arch,
                  device=device, channels_last=bool(config.get("channels_last")) and exp.train.data.dim() == 4)
    train = dataclasses.replace(exp.train, data=exp.train.data.to(device))  # resident once for both stages
    timings: dict[str, float] = {}

    ae_path = run_dir / results.AE_CHECKPOINT
    if config["pretrain"]:
        t0 = time.perf_counter()
        history = mocca.pretrain(train, ae_path, resume=config["resume"], log=log)
        timings["pretrain_s"] = time.perf_counter() - t0
        results.write_history(run_dir / "pretrain_log.csv", history)
    elif config["train"]:
        if not config["model_ckp"]:
            raise UserError("-tr without -ptr needs -ck <AE checkpoint (ae.pt of an earlier run)>")
        ae_path = Path(config["model_ckp"])

    if config["train"]:
        t0 = time.perf_counter()
        best = run_dir / results.BEST_CHECKPOINT if config["test_checkpoint"] == "best-loss" else None
        history = mocca.train(train, ae_path, run_dir / results.MODEL_CHECKPOINT, resume=config["resume"],
                              best_checkpoint=best, log=log)
        timings["train_s"] = time.perf_counter() - t0
        results.write_history(run_dir / "train_log.csv", history)
    elif config["test"]:
        if not config["model_ckp"]:
            raise UserError("-tt without -tr needs -ck <trained checkpoint (model.pt of an earlier run)>")
        path = results.tested_checkpoint(Path(config["model_ckp"]), config)
        try:
            mocca.load_model(path)
        except ValueError as err:
            raise UserError(f"{err}; pass matching flags") from err

    if not config["test"]:
        return None
    limit = settings.debug_batches
    keep = (debug_subset(len(exp.test_labels), limit * settings.batch_size, seed) if limit is not None
            else np.arange(len(exp.test_labels)))
    test = TensorSource(exp.test.data[torch.from_numpy(keep)].to(device), exp.test.transform)
    labels = exp.test_labels[keep]
    t0 = time.perf_counter()
    dist = mocca.distances(test)
    timings["test_s"] = time.perf_counter() - t0
    model = mocca.model
    try:
        scored = score_and_evaluate(model.objective, dist, labels, exp.patches_per_image)
    except ValueError as err:
        raise UserError(f"cannot evaluate: {err}") from err
    n = len(labels)
    extra = {k: np.asarray(list(v), dtype=object)[keep].tolist() for k, v in exp.test_columns.items()}
    results.write_scores(run_dir / results.SCORES_FILE, labels, scored.scores, scored.layer_scores, extra)
    metrics = {
        "dataset": exp.dataset, "class": exp.class_name, "boundary": model.objective.boundary,
        "layers": list(model.objective.layer_indices), "nu": model.objective.nu, "seed": seed,
        "auc": scored.metrics["auc"], "max_ba": scored.metrics["max_ba"],
        "per_layer": scored.metrics["per_layer"], "score_std": scored.metrics["score_std"],
        "radii": model.objective.radii(), "n_test": n, "n_anomalous": int(np.sum(labels)),
        "test_checkpoint": config["test_checkpoint"],
        "timings": timings, "device": str(device), **exp.summary,
    }
    results.write_metrics(run_dir, metrics)
    log(f"[test] {exp.dataset} {exp.class_name} {metrics['boundary']} layers {metrics['layers']}: "
        f"AUC {metrics['auc']:.4f}  maxBA {metrics['max_ba']:.4f}  (n={n}) -> {run_dir / results.METRICS_FILE}")
    return metrics


def debug_subset(n: int, size: int, seed: int) -> np.ndarray:
    """A fixed random subset of the test set for -db (the test set is ordered by class, a prefix is not)."""
    rng = np.random.default_rng(max(seed, 0))
    return np.sort(rng.permutation(n)[: min(n, size)])
