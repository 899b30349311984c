"""The two-stage image pipeline (CIFAR-10, MVTec AD): pretrain -> centroids -> one-class -> test.

An entry script describes its data, models and runs in an ``ImageExperiment``; this module runs
the stages the settings ask for through the method object (``trainers.mocca.MOCCA``), hands
checkpoints from one stage to the next, and writes one run folder per run. One run uses the plain
model; K runs (e.g. CIFAR-10 classes x seeds) use the grouped model variant
(``trainers.runs.GroupedRuns``) and otherwise exactly the same code.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from trainers.mocca import MOCCA, MethodSettings
from trainers.runs import GroupedRuns, SingleRun, StackedSource
from trainers import figure_data as figures
from trainers.localisation import localisation_metrics
from trainers.scoring import per_group_auc, score_and_evaluate
from trainers.settings import PipelineSettings
from utils import results
from utils.batching import TensorSource
from utils.runtime import environment, pick_device, set_seed


@dataclass
class ImageRun:
    """One run: its class and seed, its data, and its folder with the config saved there."""

    class_name: str
    seed: int
    folder: Path
    record: dict[str, Any]  # the resolved config this run saves as config.yaml
    train: TensorSource
    test: TensorSource
    test_labels: np.ndarray
    test_columns: dict[str, Sequence[Any]] = field(default_factory=dict)  # extra columns for scores.csv
    summary: dict[str, Any] = field(default_factory=dict)  # extra fields for metrics.json
    test_masks: Tensor | None = None  # (N, 1, H, W) {0, 1} ground truth of the test images, where it exists


@dataclass
class ModelGroup:
    """How K plain models become one grouped model (see ``trainers.runs.GroupedRuns``)."""

    autoencoders: Callable[[list[nn.Module]], nn.Module]
    feature_net: Callable[[nn.Module, list[int]], nn.Module]
    stack: Callable[[Tensor], Tensor]  # (K, B, C, H, W) per-run batches -> the grouped model's input


@dataclass
class ImageExperiment:
    """What an entry script supplies: the runs (data resident as tensors) and how to build the models."""

    dataset: str
    runs: list[ImageRun]
    make_autoencoder: Callable[[], nn.Module]  # the AE must expose ``.encoder``
    make_feature_net: Callable[[nn.Module, list[int]], nn.Module]  # (encoder, layers) -> feature net
    arch: dict[str, Any]  # settings that fix the AE's weight shapes (checked when loading checkpoints)
    net_arch: dict[str, Any] = field(default_factory=dict)  # stage-2-only shape settings (e.g. selectors)
    patches_per_image: int | None = None  # MVTec textures: image score = max over patches
    group: ModelGroup | None = None  # the grouped variant, for more than one run
    group_column: str | None = None  # the test column whose values get their own AUC (MVTec: "defect")


def run_two_stage(exp: ImageExperiment, method: MethodSettings, pipe: PipelineSettings,
                  log: Callable[[str], None] = print) -> dict | list[dict] | None:
    """Run the chosen stages; return the metrics (one dict, or one per run) when the test stage ran."""
    if not (pipe.pretrain or pipe.train or pipe.test):
        raise ValueError("nothing to do: add -ptr (pretrain), -tr (train) and/or -tt (test)")
    runs, k = exp.runs, len(exp.runs)
    if k > 1:
        _check_group(exp, pipe)
    what = None  # the one check of -ck, before any folder exists
    if pipe.train and not pipe.pretrain:
        what = "-tr without -ptr needs -ck <AE checkpoint (ae.pt of an earlier run)>"
    elif pipe.test and not pipe.train:
        what = "-tt without -tr needs -ck <trained checkpoint (model.pt of an earlier run)>"
    if what is not None:
        if pipe.checkpoint is None:
            raise ValueError(what)
        if not pipe.checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {pipe.checkpoint} not found: {what}")
    device = pick_device(pipe.device)
    check_buildable(exp, method.layers)  # before any folder exists: sizes the models cannot take fail here
    env = environment(device)
    outputs = [*(results.PRETRAIN_OUTPUTS if pipe.pretrain else ()), *(results.TRAIN_OUTPUTS if pipe.train else ())]
    with results.open_runs([r.folder for r in runs], [r.record for r in runs],
                           [{**env, **({"grouped": {"k": k, "index": r}} if k > 1 else {})} for r in range(k)],
                           resume=pipe.resume, outputs=outputs, inputs=[pipe.checkpoint] if pipe.checkpoint else []):
        log(f"run folder: {runs[0].folder}" if k == 1 else
            f"{k} runs trained as one grouped model on {device}: " + ", ".join(str(r.folder) for r in runs))
        return _run(exp, method, pipe, device, log)


def check_buildable(exp: ImageExperiment, layers: list[int]) -> None:
    """Build the models once on the meta device (no memory, no random numbers): a ValueError for an
    unusable size or layer set comes before any run folder or training."""
    with torch.device("meta"):
        exp.make_feature_net(exp.make_autoencoder().encoder, list(layers))


def _run(exp: ImageExperiment, method: MethodSettings, pipe: PipelineSettings, device: torch.device,
         log: Callable[[str], None]) -> dict | list[dict] | None:
    runs, k = exp.runs, len(exp.runs)
    set_seed(runs[0].seed, deterministic=pipe.deterministic)
    if k == 1:
        layout = SingleRun(runs[0].seed, exp.make_autoencoder, exp.make_feature_net)
        train = runs[0].train.to(device)  # resident once for both stages
    else:
        layout = GroupedRuns([r.seed for r in runs], exp.make_autoencoder, exp.make_feature_net,
                             exp.group.autoencoders, exp.group.feature_net, pipe.deterministic,
                             labels=[f"{r.class_name}/s{r.seed}" for r in runs])
        train = StackedSource.of([r.train.data for r in runs], exp.group.stack).to(device)
    mocca = MOCCA(exp.make_autoencoder, exp.make_feature_net, exp.arch, method, net_arch=exp.net_arch,
                  device=device, channels_last=pipe.channels_last and train.data.dim() >= 4, runs=layout)
    timings: dict[str, float] = {}

    ae_paths = [r.folder / results.AE_CHECKPOINT for r in runs]
    if pipe.pretrain:
        t0 = time.perf_counter()
        histories = mocca.pretrain(train, ae_paths, resume=pipe.resume, log=log)
        timings["pretrain_s"] = time.perf_counter() - t0
        for run, history in zip(runs, histories):
            results.write_history(run.folder / "pretrain_log.csv", history)
    elif pipe.train:
        ae_paths = [pipe.checkpoint]

    if pipe.train:
        t0 = time.perf_counter()
        best = [r.folder / results.BEST_CHECKPOINT for r in runs] if pipe.test_checkpoint == "best-loss" else None
        histories = mocca.train(train, ae_paths, [r.folder / results.MODEL_CHECKPOINT for r in runs],
                                resume=pipe.resume, best_checkpoint=best, log=log)
        timings["train_s"] = time.perf_counter() - t0
        for run, history in zip(runs, histories):
            results.write_history(run.folder / "train_log.csv", history)
    elif pipe.test:
        path = results.tested_checkpoint(pipe.checkpoint, pipe.test_checkpoint)
        try:
            mocca.load_model(path)
        except ValueError as err:
            raise ValueError(f"{err}; pass matching flags") from err

    if not pipe.test:
        return None
    limit = method.debug_batches
    keeps = [debug_subset(len(r.test_labels), limit * method.batch_size, r.seed) if limit is not None
             else np.arange(len(r.test_labels)) for r in runs]
    if k == 1:
        test = TensorSource(runs[0].test.data[torch.from_numpy(keeps[0])].to(device), runs[0].test.transform)
    else:  # -db: each run scores its own subset, as its sequential run would
        test = StackedSource.of([r.test.data for r in runs], exp.group.stack).to(device)
        test = test.subset([torch.from_numpy(keep) for keep in keeps]) if limit is not None else test
    t0 = time.perf_counter()
    dist = mocca.distances(test)  # {j: (N,)} or {j: (K, N)}
    timings["test_s"] = time.perf_counter() - t0
    model = mocca.model
    run_models = layout.run_models(model)
    out = []
    for r, (run, keep) in enumerate(zip(runs, keeps)):
        objective = model.objective if k == 1 else model.objective.run(r)
        labels = run.test_labels[keep]
        try:
            scored = score_and_evaluate(objective, dist if k == 1 else {j: d[r] for j, d in dist.items()}, labels,
                                        exp.patches_per_image)
        except ValueError as err:
            raise ValueError(f"cannot evaluate {run.folder}: {err}") from err
        extra = {name: np.asarray(list(v), dtype=object)[keep].tolist() for name, v in run.test_columns.items()}
        results.write_scores(run.folder / results.SCORES_FILE, labels, scored.scores, scored.layer_scores, extra)
        evaluation = _evaluation(exp, run, keep, scored, mocca.thresholds[r])
        figures.save(run.folder / figures.FIGURE_DATA_FILE, {
            **_figure_arrays(exp, run, keep, scored),
            **figures.embeddings(run_models[r].to(device), TensorSource(run.test.data[torch.from_numpy(keep)],
                                 run.test.transform), labels, mocca.prepare, method.batch_size,
                                 exp.patches_per_image, seed=run.seed)})
        metrics = {
            "dataset": exp.dataset, "class": run.class_name, "boundary": objective.boundary,
            "layers": list(objective.layer_indices), "nu": objective.nu, "seed": run.seed,
            "auc": scored.metrics["auc"], "max_ba": scored.metrics["max_ba"], **evaluation,
            "per_layer": scored.metrics["per_layer"], "score_std": scored.metrics["score_std"],
            "radii": objective.radii(), "n_test": len(labels), "n_anomalous": int(np.sum(labels)),
            "test_checkpoint": pipe.test_checkpoint, "timings": timings, "device": str(device), **run.summary,
            **({"grouped": {"k": k, "index": r}} if k > 1 else {}),  # timings are then for all k runs together
        }
        results.write_metrics(run.folder, metrics)
        log(f"[test] {exp.dataset} {run.class_name} seed {run.seed} {metrics['boundary']} layers {metrics['layers']}: "
            f"AUC {metrics['auc']:.4f}  maxBA {metrics['max_ba']:.4f}  (n={len(labels)}) -> "
            f"{run.folder / results.METRICS_FILE}")
        out.append(metrics)
    return out[0] if k == 1 else out


def _evaluation(exp: ImageExperiment, run: ImageRun, keep: np.ndarray, scored, threshold: float | None) -> dict:
    """AP, F1-max, the decision threshold, per-group AUC and, for textures with masks, pixel metrics."""
    m = scored.metrics
    out: dict[str, Any] = {"ap": m["ap"], "f1_max": m["f1_max"], "f1_threshold": m["f1_threshold"],
                           "threshold": threshold}
    if exp.group_column and exp.group_column in run.test_columns:
        groups = np.asarray(list(run.test_columns[exp.group_column]), dtype=object)[keep]
        out[f"per_{exp.group_column}"] = per_group_auc(scored.labels, scored.scores, groups)
    if run.test_masks is not None:
        if scored.patch_scores is None:
            out["localisation"] = "none: MOCCA scores an object image as a whole, there is no score map"
        else:
            masks = run.test_masks[torch.from_numpy(keep)].numpy()
            out["localisation"] = localisation_metrics(scored.patch_scores, masks)
    return out


def _figure_arrays(exp: ImageExperiment, run: ImageRun, keep: np.ndarray, scored) -> dict[str, np.ndarray]:
    images = run.test.data[torch.from_numpy(keep).to(run.test.data.device)]
    arrays = figures.examples(images, scored.scores, scored.labels)
    if scored.patch_scores is not None:
        masks = run.test_masks[torch.from_numpy(keep)] if run.test_masks is not None else None
        arrays.update(figures.texture_maps(images, masks, scored.patch_scores, scored.labels, seed=run.seed))
        arrays["patch_scores"] = scored.patch_scores.astype(np.float32)
    return arrays


def _check_group(exp: ImageExperiment, pipe: PipelineSettings) -> None:
    if exp.group is None:
        raise ValueError(f"{exp.dataset} has no grouped model: run one class and seed at a time")
    if not (pipe.pretrain and pipe.train and pipe.test) or pipe.checkpoint is not None:
        raise ValueError("grouped runs (several classes or seeds) run every stage: give -ptr -tr -tt, and no -ck")
    if len({(r.class_name, r.seed) for r in exp.runs}) != len(exp.runs):
        raise ValueError("the same class and seed is listed twice")
    if len({r.folder for r in exp.runs}) != len(exp.runs):
        raise ValueError("two runs would share one run folder (--run-dir names one run)")
    if any(r.train.transform is not None or r.train.samples_per_epoch for r in exp.runs):
        raise ValueError("grouped runs need plain resident training images (no batch transform)")


def debug_subset(n: int, size: int, seed: int) -> np.ndarray:
    """A fixed random subset of the test set for -db (the test set is ordered by class, a prefix is not)."""
    rng = np.random.default_rng(max(seed, 0))
    return np.sort(rng.permutation(n)[: min(n, size)])
