"""Run folders: resolved config, environment, training logs, metrics and per-sample scores.

One run = one folder; the sweep and report tools read nothing else. Every file is written
atomically, so a folder with a ``metrics.json`` is a finished run.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import yaml

from utils.io import write_json, write_text

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
SCORES_FILE = "scores.csv"
ENV_FILE = "env.json"
AE_CHECKPOINT = "ae.pt"
MODEL_CHECKPOINT = "model.pt"
BEST_CHECKPOINT = "model_best.pt"  # the lowest-training-loss epoch (--test-checkpoint best-loss)


# Config keys that say how or where a run executes, never what it computes: they neither enter the
# run-folder hash nor block a --resume. Every other key (lr, epochs, weight decay, warm-up, selectors,
# image size, presets' values, ...) does; an unknown key counts as result-changing.
NON_RESULT_KEYS = frozenset({
    "pretrain", "train", "test", "end_to_end", "resume", "model_ckp", "run_dir", "output_path", "data_path",
    "labels", "download", "device", "channels_last", "compile", "no_progress", "disable_logging", "log_frequency",
    "n_workers", "config_file", "presets", "test_batch_size", "train_best_conf", "metric", "load_lstm",
    "deterministic", "test_checkpoint",
})


def layers_tag(layers: Sequence[int]) -> str:
    return ".".join(str(k) for k in layers)


def result_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's numbers (the resolved config minus ``NON_RESULT_KEYS``)."""
    return {k: v for k, v in config.items() if k not in NON_RESULT_KEYS}


def settings_digest(config: Mapping[str, Any]) -> str:
    """8 hex digits of the result-changing settings: runs that differ in any of them never share a folder."""
    text = json.dumps(result_settings(config), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def default_run_name(config: Mapping[str, Any], layers: Sequence[int]) -> str:
    """Readable settings plus the digest of all of them; deterministic, so ``--resume`` finds the folder."""
    return (f"{config['boundary']}-ile_{layers_tag(layers)}-zl_{config['code_length']}-nu_{config['nu']}"
            f"-seed_{config['seed']}-cfg_{settings_digest(config)}")


def check_resume(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Refuse ``--resume`` into a folder whose saved config differs in a result-changing setting.

    A resumed run takes its optimizer, schedule and weights from the checkpoints: continuing them
    under other settings would mix two runs in one folder and one ``config.yaml``.
    """
    saved_path = run_dir / CONFIG_FILE
    if not config.get("resume") or not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--resume: {saved_path} is not valid YAML ({str(err).splitlines()[0]}); "
                        "rerun without --resume into a new folder") from err
    old, new = result_settings(saved), result_settings(config)
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        text = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in differ)
        raise ValueError(f"--resume: {run_dir} was started with other settings: {text}; "
                        "rerun with the original settings, or without --resume into another folder")


def run_dir_for(config: Mapping[str, Any], dataset: str, class_name: str, layers: Sequence[int]) -> Path:
    if config.get("run_dir"):
        return Path(config["run_dir"])
    return Path(config["output_path"]) / dataset / class_name / default_run_name(config, layers)


def tested_checkpoint(path: Path, which: str) -> Path:
    """-tt -ck <model.pt>: with --test-checkpoint best-loss, the lowest-loss epoch saved beside it."""
    if which != "best-loss" or path.name == BEST_CHECKPOINT:
        return path
    best = path.with_name(BEST_CHECKPOINT)
    if not best.is_file():
        raise ValueError(f"--test-checkpoint best-loss: no {best}; it is written only when the run trained with "
                        "--test-checkpoint best-loss (or pass -ck <that file>)")
    return best


CLAIM_FILE = ".claim"  # who is writing this folder now (host, pid, start time)
PRETRAIN_OUTPUTS = (AE_CHECKPOINT, "pretrain_log.csv")
TRAIN_OUTPUTS = (MODEL_CHECKPOINT, BEST_CHECKPOINT, "train_log.csv")
FINISHED_MARKERS = (METRICS_FILE, SCORES_FILE)  # what makes a folder count as a finished run


def claim(run_dir: Path) -> Path:
    """Mark ``run_dir`` as being written by this process; ValueError naming the holder if another
    live process has it. A claim left by a process that is gone (same host) is taken over."""
    path = run_dir / CLAIM_FILE
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                path.unlink(missing_ok=True)  # left by a killed run on this machine
                continue
            raise ValueError(f"{run_dir} is being written by another run (pid {holder.get('pid', '?')} on "
                             f"{holder.get('host', '?')} since {holder.get('since', '?')}); wait for it to finish, "
                             f"use another --run-dir / --output_path, or delete {path} if that run is gone")
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return path
    raise ValueError(f"cannot claim {run_dir}: {path} keeps reappearing")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def open_runs(run_dirs: Sequence[Path], records: Sequence[Mapping[str, Any]], envs: Sequence[Mapping[str, Any]],
              *, resume: bool, outputs: Sequence[str] = (), inputs: Sequence[Path] = ()) -> Iterator[None]:
    """The life of run folders: claim, check --resume, clear stale results, save the config.

    A fresh (not --resume) run first removes the files it will write (``outputs``, the files of
    the stages it runs) and the previous run's metrics and scores, so a folder never pairs a new
    config.yaml with an old run's results; ``inputs`` (e.g. the -ck checkpoint) are never removed.
    On failure a folder this run created is removed again unless it holds a checkpoint (which
    ``--resume`` can continue).
    """
    created: list[Path] = []
    claims: list[Path] = []
    keep = {Path(p).resolve() for p in inputs}
    try:
        for run_dir, record, env in zip(run_dirs, records, envs):
            if not run_dir.exists():
                try:
                    run_dir.mkdir(parents=True)
                except OSError as err:
                    raise ValueError(f"cannot create the run folder {run_dir}: {err.strerror or err}; pass a "
                                     "writable --output_path or --run-dir") from err
                created.append(run_dir)
            elif not run_dir.is_dir():
                raise ValueError(f"run folder {run_dir} is a file; pass another --run-dir")
            claims.append(claim(run_dir))
            check_resume(run_dir, record if resume else {})
            if not resume:
                for name in (*FINISHED_MARKERS, *outputs):
                    old = run_dir / name
                    if old.is_file() and old.resolve() not in keep:
                        old.unlink()
            write_text(run_dir / CONFIG_FILE, yaml.safe_dump(dict(record), sort_keys=True))
            write_json(run_dir / ENV_FILE, dict(env))
        yield
    except BaseException:
        for run_dir in created:
            if not any(run_dir.glob("*.pt")):
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        for path in claims:
            path.unlink(missing_ok=True)


def write_config(run_dir: Path, config: Mapping[str, Any], env: Mapping[str, Any]) -> None:
    """Save the resolved config and environment (after ``check_resume`` said the folder is ours)."""
    check_resume(run_dir, config)
    write_text(run_dir / CONFIG_FILE, yaml.safe_dump(dict(config), sort_keys=True))
    write_json(run_dir / ENV_FILE, dict(env))


def write_history(path: Path, history: Sequence[Mapping[str, float]]) -> None:
    """Per-epoch training log as CSV (columns: the union of keys, in first-seen order)."""
    if not history:
        return
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())


def write_scores(path: Path, labels: np.ndarray, scores: np.ndarray, layer_scores: Mapping[int, np.ndarray],
                 extra: Mapping[str, Sequence[Any]] | None = None) -> None:
    """scores.csv: index, label, score (combined), score_layer_<j> per layer, then any extra columns."""
    extra = dict(extra or {})
    columns = ["index", "label", "score"] + [f"score_layer_{k}" for k in layer_scores] + list(extra)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for i in range(len(scores)):
        row = [i, int(labels[i]), repr(float(scores[i]))]
        row += [repr(float(v[i])) for v in layer_scores.values()]
        row += [e[i] for e in extra.values()]
        writer.writerow(row)
    write_text(path, buf.getvalue())


def write_metrics(run_dir: Path, metrics: Mapping[str, Any]) -> None:
    write_json(run_dir / METRICS_FILE, dict(metrics))
