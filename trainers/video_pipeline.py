"""The video pipeline (paper IV-C): data -> end-to-end training -> frame-level test -> run folder.

``run_video(config)`` runs what the flags ask for (-ee, -tt): the entry script only parses flags.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable

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


def model_arch(config: dict, shape: tuple[int, ...]) -> dict:
    return {"model": "video3d", "input_shape": list(shape), "code_length": int(config["code_length"]),
            "hidden_size": int(config["hidden_size"]), "num_layers": int(config["num_layers"]),
            "bidirectional": bool(config["bidirectional"]), "use_selectors": bool(config["use_selectors"]),
            "authors_reshape": bool(config["authors_reshape"])}


def build_model(arch: dict, layers: list[int], dropout: float) -> VideoAutoencoder:
    return VideoAutoencoder(arch["input_shape"], arch["code_length"], hidden_size=arch["hidden_size"],
                            num_layers=arch["num_layers"], dropout=dropout, bidirectional=arch["bidirectional"],
                            use_selectors=arch["use_selectors"], layer_indices=layers,
                            authors_reshape=arch["authors_reshape"])


def remove_bg(config: dict) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[config["remove_background"]]


def train(config: dict, run_dir: Path, layers: list[int], device: torch.device, log) -> OneClassModel:
    seed = int(config["seed"])
    size = tuple(config["frame_size"])
    log(f"loading {config['dataset']} training videos from {config['data_path']} (decoded once, then cached)")
    names, videos = load_split(config["data_path"], config["dataset"], "training", size, remove_bg(config),
                               background_recipe=config["background_recipe"])
    clips = VideoClips(videos, int(config["clip_length"]), names)
    shape = (3, clips.clip_length, *clips.frame_shape)
    arch = model_arch(config, shape)
    bs = int(config["batch_size"])
    place = batch_placer(device, bool(config["channels_last"]))
    sample = lambda gen: place(clips.sample_batch(bs, gen))  # noqa: E731
    n_batches = DEBUG_BATCHES if config["debug"] else max(1, int(config["clips_per_epoch"]) // bs)
    n_centroid = DEBUG_BATCHES if config["debug"] else max(1, int(config["centroid_clips"]) // bs)
    net = build_model(arch, layers, float(config["dropout"])).to(device, memory_format=memory_format(5, config["channels_last"]))
    centers = initial_centroids(net, sample, n_centroid, seed)  # from the untrained model (paper IV-C)
    objective = MultiLayerObjective(centers, config["boundary"], float(config["nu"]), config["layer_reduction"])
    model = OneClassModel(net, objective).to(device)
    settings = StageSettings("train", epochs=1 if config["debug"] else int(config["epochs"]),
                             learning_rate=float(config["learning_rate"]), weight_decay=float(config["weight_decay"]),
                             milestones=[int(m) for m in config["lr_milestones"]], optimizer=config["optimizer"],
                             progress=not config["no_progress"], amp=bool(config["amp"]),
                             compile=bool(config["compile"]))
    full_arch = {**arch, "layers": layers, "boundary": config["boundary"], "nu": float(config["nu"])}
    best = run_dir / results.BEST_CHECKPOINT if config["test_checkpoint"] == "best-loss" else None
    history = train_end_to_end(model, sample, n_batches, settings, int(config["warm_up_n_epochs"]),
                               run_dir / results.MODEL_CHECKPOINT, full_arch, seed,
                               recon_weight=float(config["recon_weight"]), resume=config["resume"], log=log,
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


def test(model: OneClassModel, config: dict, run_dir: Path, device: torch.device, timings: dict, log) -> dict:
    arch_shape = model.net.input_shape
    size = tuple(arch_shape[2:])
    names, videos, labels = load_test_set(config["data_path"], config["dataset"], size, remove_bg(config),
                                          config["labels"], background_recipe=config["background_recipe"])
    clips = VideoClips(videos, arch_shape[1], names)
    t0 = time.perf_counter()
    scored = score_videos(model, clips, labels, int(config["test_batch_size"]),
                          progress=not config["no_progress"], max_videos=2 if config["debug"] else None)
    timings["test_s"] = time.perf_counter() - t0
    n_clips = sum(clips.n_windows(v) for v in range(len(scored.names)))
    write_frame_scores(run_dir / results.SCORES_FILE, scored)
    m = scored.metrics
    metrics = {"dataset": config["dataset"], "class": config["dataset"], "boundary": model.objective.boundary,
               "layers": model.objective.layer_indices, "nu": model.objective.nu, "seed": int(config["seed"]),
               "auc": m["combined"]["micro"], "auc_per_video_mean": m["combined"]["per_video_mean"],
               "max_ba": max_balanced_accuracy(np.concatenate(scored.labels), np.concatenate(scored.combined)),
               "frame_auc": m, "radii": model.objective.radii(), "n_videos": len(scored.names),
               "n_frames": int(sum(len(l) for l in scored.labels)), "test_checkpoint": config["test_checkpoint"],
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
    timings: dict[str, float] = {}
    if config["end_to_end"]:
        t0 = time.perf_counter()
        model = train(config, run_dir, layers, device, log)
        timings["train_s"] = time.perf_counter() - t0
    else:
        if not config["model_ckp"]:
            raise UserError("-tt without -ee needs -ck <trained checkpoint (model.pt of an earlier run)>")
        model = load_trained(results.tested_checkpoint(Path(config["model_ckp"]), config), device)
    return test(model, config, run_dir, device, timings, log) if config["test"] else None

