"""The video pipeline (paper IV-C): data -> end-to-end training -> frame-level test -> run folder.

``run_video(config)`` runs what the flags ask for (-ee, -tt): the entry script only parses flags.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from datasets.video import VideoClips, load_split, load_test_set
from models.video3d import LAYER_NAMES, VideoAutoencoder
from trainers.end_to_end import (END_TO_END_KIND, initial_centroids, score_videos,
                                 train_end_to_end)
from trainers.engine import StageSettings
from trainers.objective import MultiLayerObjective
from trainers.one_class import OneClassModel
from trainers.scoring import max_balanced_accuracy
from trainers.two_stage import choose_layers
from utils import results
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.io import write_text
from utils.runtime import batch_placer, environment, memory_format, pick_device, set_seed

DEBUG_BATCHES = 2


@dataclass
class VideoSettings:
    """Everything the video pipeline reads, typed and built once from the resolved config."""

    dataset: str
    data_path: str
    labels: str | None
    frame_size: tuple[int, int]
    remove_background: bool | None  # None: the layout decides (yes for Ped2/Avenue frames)
    background_recipe: str
    clip_length: int
    code_length: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    use_selectors: bool
    authors_reshape: bool
    dropout: float
    layers: list[int]
    boundary: str
    nu: float
    layer_reduction: str
    warm_up_epochs: int
    recon_weight: float
    stage: StageSettings
    batch_size: int
    clips_per_epoch: int
    centroid_clips: int
    test_batch_size: int
    seed: int
    channels_last: bool
    debug: bool
    resume: bool
    test_checkpoint: str

    @classmethod
    def from_config(cls, config: dict[str, Any], layers: list[int]) -> "VideoSettings":
        debug = bool(config["debug"])
        stage = StageSettings("train", epochs=1 if debug else int(config["epochs"]),
                              learning_rate=float(config["learning_rate"]), weight_decay=float(config["weight_decay"]),
                              milestones=[int(m) for m in config["lr_milestones"]], optimizer=config["optimizer"],
                              progress=not config["no_progress"], amp=bool(config["amp"]), compile=bool(config["compile"]))
        return cls(
            dataset=config["dataset"], data_path=config["data_path"], labels=config["labels"],
            frame_size=tuple(int(v) for v in config["frame_size"]), remove_background=remove_bg(config),
            background_recipe=config["background_recipe"], clip_length=int(config["clip_length"]),
            code_length=int(config["code_length"]), hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_layers"]), bidirectional=bool(config["bidirectional"]),
            use_selectors=bool(config["use_selectors"]), authors_reshape=bool(config["authors_reshape"]),
            dropout=float(config["dropout"]), layers=list(layers), boundary=config["boundary"], nu=float(config["nu"]),
            layer_reduction=config["layer_reduction"], warm_up_epochs=int(config["warm_up_n_epochs"]),
            recon_weight=float(config["recon_weight"]), stage=stage, batch_size=int(config["batch_size"]),
            clips_per_epoch=int(config["clips_per_epoch"]), centroid_clips=int(config["centroid_clips"]),
            test_batch_size=int(config["test_batch_size"]), seed=int(config["seed"]),
            channels_last=bool(config["channels_last"]), debug=debug, resume=bool(config["resume"]),
            test_checkpoint=config["test_checkpoint"])


def model_arch(s: VideoSettings, shape: tuple[int, ...]) -> dict:
    return {"model": "video3d", "input_shape": list(shape), "code_length": s.code_length,
            "hidden_size": s.hidden_size, "num_layers": s.num_layers, "bidirectional": s.bidirectional,
            "use_selectors": s.use_selectors, "authors_reshape": s.authors_reshape}


def build_model(arch: dict, layers: list[int], dropout: float) -> VideoAutoencoder:
    return VideoAutoencoder(arch["input_shape"], arch["code_length"], hidden_size=arch["hidden_size"],
                            num_layers=arch["num_layers"], dropout=dropout, bidirectional=arch["bidirectional"],
                            use_selectors=arch["use_selectors"], layer_indices=layers,
                            authors_reshape=arch["authors_reshape"])


def remove_bg(config: dict) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[config["remove_background"]]


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
               "max_ba": max_balanced_accuracy(np.concatenate(scored.labels), np.concatenate(scored.combined)),
               "frame_auc": m, "radii": model.objective.radii(), "n_videos": len(scored.names),
               "n_frames": int(sum(len(l) for l in scored.labels)), "test_checkpoint": s.test_checkpoint,
               "test_clips_per_s": n_clips / timings["test_s"],
               "timings": timings, "device": str(device), "input_shape": list(arch_shape)}
    results.write_metrics(run_dir, metrics)
    for kind in ("combined", "one_class", "reconstruction"):
        log(f"[test] frame AUC {kind:14s}: all frames concatenated {m[kind]['micro']:.4f}   "
            f"mean over videos {m[kind]['per_video_mean']:.4f}")
    return metrics


def run_video(config: dict, log: Callable[[str], None] = print) -> dict | None:
    """Run the stages chosen by -ee/-tt; return the metrics when the test stage ran."""
    if config["pretrain"] or config["train"]:
        raise UserError("video models train in one stage, as in the paper: use -ee (end to end) and -tt, "
                        "not -ptr/-tr")
    if not (config["end_to_end"] or config["test"]):
        raise UserError("nothing to do: add -ee (end-to-end training) and/or -tt (test)")
    device = pick_device(config["device"])
    set_seed(int(config["seed"]), deterministic=bool(config["deterministic"]))
    layers = choose_layers(config, tuple(LAYER_NAMES))
    run_dir = results.run_dir_for({**config, "output_path": Path(config["output_path"])}, config["dataset"],
                                  "video", layers)
    run_dir.mkdir(parents=True, exist_ok=True)
    results.write_config(run_dir, config, environment(device))
    log(f"run folder: {run_dir}")
    settings = VideoSettings.from_config(config, layers)
    timings: dict[str, float] = {}
    if config["end_to_end"]:
        t0 = time.perf_counter()
        model = train(settings, run_dir, device, log)
        timings["train_s"] = time.perf_counter() - t0
    else:
        if not config["model_ckp"]:
            raise UserError("-tt without -ee needs -ck <trained checkpoint (model.pt of an earlier run)>")
        model = load_trained(results.tested_checkpoint(Path(config["model_ckp"]), config), device)
    return test(model, settings, run_dir, device, timings, log) if config["test"] else None

