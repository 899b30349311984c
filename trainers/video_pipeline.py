"""The video pipeline (paper IV-C): data -> end-to-end training -> frame-level test -> run folder.

``run_video(settings, ...)`` runs what the flags ask for (-ee, -tt); the entry script parses the
flags and builds the typed settings (``trainers.settings``).
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from datasets.video import VideoClips, check_test_set, load_split, load_test_set
from models.video3d import VideoAutoencoder
from trainers.end_to_end import (END_TO_END_KIND, initial_centroids, score_videos,
                                 train_end_to_end)
from trainers.objective import MultiLayerObjective
from trainers.one_class import OneClassModel
from trainers.scoring import detection_metrics
from trainers.settings import VIDEO_DEBUG_BATCHES as DEBUG_BATCHES, PipelineSettings, VideoSettings
from utils import results
from utils.checkpoint import load_checkpoint
from utils.io import write_text
from utils.runtime import batch_placer, environment, memory_format, pick_device, set_seed

def model_arch(s: VideoSettings, shape: tuple[int, ...]) -> dict:
    return {"model": "video3d", "input_shape": list(shape), "code_length": s.code_length,
            "hidden_size": s.hidden_size, "num_layers": s.num_layers, "bidirectional": s.bidirectional,
            "use_selectors": s.use_selectors, "authors_reshape": s.authors_reshape}


def build_model(arch: dict, layers: list[int], dropout: float) -> VideoAutoencoder:
    return VideoAutoencoder(arch["input_shape"], arch["code_length"], hidden_size=arch["hidden_size"],
                            num_layers=arch["num_layers"], dropout=dropout, bidirectional=arch["bidirectional"],
                            use_selectors=arch["use_selectors"], layer_indices=layers,
                            authors_reshape=arch["authors_reshape"])


def train(s: VideoSettings, run_dir: Path, device: torch.device, log) -> OneClassModel:
    log(f"loading {s.dataset} training videos from {s.data_path} (decoded once, then cached)")
    names, videos = load_split(s.data_path, s.dataset, "training", s.frame_size, s.remove_background,
                               background_recipe=s.background_recipe)
    clips = VideoClips(videos, s.clip_length, names)
    shape = (3, clips.clip_length, *clips.frame_shape)
    arch = model_arch(s, shape)
    place = batch_placer(device, s.channels_last)
    sample = lambda gen: place(clips.sample_batch(s.batch_size, gen))  # noqa: E731
    n_batches = DEBUG_BATCHES if s.debug else max(1, s.clips_per_epoch // s.batch_size)
    n_centroid = DEBUG_BATCHES if s.debug else max(1, s.centroid_clips // s.batch_size)
    net = build_model(arch, s.layers, s.dropout).to(device, memory_format=memory_format(5, s.channels_last))
    centers = initial_centroids(net, sample, n_centroid, s.seed)  # from the untrained model (paper IV-C)
    model = OneClassModel(net, MultiLayerObjective(centers, s.boundary, s.nu, s.layer_reduction)).to(device)
    full_arch = {**arch, "layers": s.layers, "boundary": s.boundary, "nu": s.nu}
    best = run_dir / results.BEST_CHECKPOINT if s.test_checkpoint == "best-loss" else None
    history = train_end_to_end(model, sample, n_batches, s.stage, s.warm_up_epochs, run_dir / results.MODEL_CHECKPOINT,
                               full_arch, s.seed, recon_weight=s.recon_weight, resume=s.resume, log=log,
                               best_checkpoint=best)
    results.write_history(run_dir / "train_log.csv", history)
    if best is not None:  # test the epoch with the lowest training loss, as the authors' video code
        model.load_state_dict(load_checkpoint(best, END_TO_END_KIND)["state"])
    return model


def load_trained(path: Path, device: torch.device) -> OneClassModel:
    ckpt = load_checkpoint(path, END_TO_END_KIND)
    arch = ckpt["arch"]
    layers = [int(k) for k in arch["layers"]]
    dummy = {k: torch.zeros_like(ckpt["state"][f"objective.center_{k}"]) for k in layers}
    model = OneClassModel(build_model(arch, layers, 0.0), MultiLayerObjective(dummy, arch["boundary"], arch["nu"]))
    model.load_state_dict(ckpt["state"])
    return model.to(device)


def write_frame_scores(path: Path, scored) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["video", "frame", "label", "score", "one_class", "reconstruction"])
    for name, lab, comb, oc, rec in zip(scored.names, scored.labels, scored.combined, scored.one_class, scored.recon):
        for i in range(len(lab)):
            w.writerow([name, i, int(lab[i]), repr(float(comb[i])), repr(float(oc[i])), repr(float(rec[i]))])
    write_text(path, buf.getvalue())


def _frame_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """maxBA, AP and F1-max at frame level over all test frames concatenated (as the micro AUC)."""
    m = detection_metrics(labels, scores)
    return {k: m[k] for k in ("max_ba", "ap", "f1_max", "f1_threshold")}


def test(model: OneClassModel, s: VideoSettings, run_dir: Path, device: torch.device, timings: dict, log) -> dict:
    arch_shape = model.net.input_shape
    size = tuple(arch_shape[2:])
    names, videos, labels = load_test_set(s.data_path, s.dataset, size, s.remove_background, s.labels,
                                          background_recipe=s.background_recipe)
    clips = VideoClips(videos, arch_shape[1], names)
    t0 = time.perf_counter()
    scored = score_videos(model, clips, labels, s.test_batch_size, progress=s.stage.progress,
                          max_videos=2 if s.debug else None)
    timings["test_s"] = time.perf_counter() - t0
    n_clips = sum(clips.n_windows(v) for v in range(len(scored.names)))
    write_frame_scores(run_dir / results.SCORES_FILE, scored)
    m = scored.metrics
    metrics = {"dataset": s.dataset, "class": s.dataset, "boundary": model.objective.boundary,
               "layers": model.objective.layer_indices, "nu": model.objective.nu, "seed": s.seed,
               "auc": m["combined"]["micro"], "auc_per_video_mean": m["combined"]["per_video_mean"],
               **_frame_metrics(np.concatenate(scored.labels), np.concatenate(scored.combined)),
               "frame_auc": m, "radii": model.objective.radii(), "n_videos": len(scored.names),
               "n_frames": int(sum(len(l) for l in scored.labels)), "test_checkpoint": s.test_checkpoint,
               "test_clips_per_s": n_clips / timings["test_s"],
               "timings": timings, "device": str(device), "input_shape": list(arch_shape)}
    results.write_metrics(run_dir, metrics)
    for kind in ("combined", "one_class", "reconstruction"):
        log(f"[test] frame AUC {kind:14s}: all frames concatenated {m[kind]['micro']:.4f}   "
            f"mean over videos {m[kind]['per_video_mean']:.4f}")
    return metrics


def run_video(s: VideoSettings, pipe: PipelineSettings, record: dict[str, Any], run_dir: Path,
              log: Callable[[str], None] = print) -> dict | None:
    """Run the stages chosen (-ee, -tt) into ``run_dir`` (which saves ``record`` as its config);
    return the metrics when the test stage ran."""
    if not (pipe.train or pipe.test):
        raise ValueError("nothing to do: add -ee (end-to-end training) and/or -tt (test)")
    if not pipe.train:
        if pipe.checkpoint is None:
            raise ValueError("-tt without -ee needs -ck <trained checkpoint (model.pt of an earlier run)>")
        ckpt = results.tested_checkpoint(pipe.checkpoint, pipe.test_checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} not found: check -ck")
    if pipe.test:  # before training: the test stage must not fail after hours of it
        check_test_set(s.data_path, s.dataset, s.labels, s.clip_length)
    device = pick_device(pipe.device)
    outputs = results.TRAIN_OUTPUTS if pipe.train else ()
    with results.open_runs([run_dir], [record], [environment(device)], resume=s.resume, outputs=outputs,
                           inputs=[pipe.checkpoint] if pipe.checkpoint else []):
        log(f"run folder: {run_dir}")
        set_seed(s.seed, deterministic=pipe.deterministic)
        timings: dict[str, float] = {}
        if pipe.train:
            t0 = time.perf_counter()
            model = train(s, run_dir, device, log)
            timings["train_s"] = time.perf_counter() - t0
        else:
            model = load_trained(ckpt, device)
        return test(model, s, run_dir, device, timings, log) if pipe.test else None
