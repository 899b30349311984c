"""Grid sweeps: classes x seeds x boundaries x layer sets x any hyperparameter, as subprocesses.

    python -m tools.sweep cifar10 --classes all --seeds 0-9 --boundary soft hard --holistic \\
        -dp ../shared/data/cifar10 --out results/table1 --jobs 2 --preset cpu

Why it is built this way:
- every run is one subprocess of the entry script (``main_<dataset>.py``) with cwd = project root,
  so a crash or an out-of-memory in one run does not take the sweep down;
- stage 1 (AE pretraining) runs once per (class, seed, stage-1 settings) into
  ``<out>/pretrain/<class>-seed_<s>[-<hash>]``; all stage-2 runs that differ only in stage-2
  settings (boundary, layer set, nu, epochs, ...) start from that ``ae.pt`` with ``-ck``;
- folder names are a pure function of the grid values, so rerunning the same command skips the
  finished runs (``metrics.json`` present), resumes the killed ones (``--resume``) and skips the
  finished pretrainings (marker file written after a successful ``-ptr``).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml
from tqdm import tqdm

from utils import cli, results
from utils.errors import UserError, exit_on_user_error
from utils.io import write_json, write_text

PROJECT_ROOT = cli.PROJECT_ROOT

# kept here (not imported from datasets/) so the sweep process stays light: no torch, no cv2.
# tests/test_sweep.py checks they match datasets.cifar10 / the paper's MVTec table.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MVTEC_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                    "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper")

PRETRAIN_DONE = "sweep_pretrain_done.json"  # written by the sweep after a successful -ptr
SWEEP_FILE = "sweep.yaml"
LOG_FILE = "sweep.log"  # stdout+stderr of every attempt, appended, in the job's folder
HOLISTIC_PRESET = "holistic"

# Hyperparameters that only act in stage 2: varying them reuses the same pretrained AE. Any other
# --set key (code length, batch size, AE epochs, unknown dataset keys...) gets its own pretraining.
STAGE2_KEYS = frozenset({"nu", "epochs", "learning_rate", "weight_decay", "lr_milestones", "warm_up_n_epochs",
                         "use_selectors", "recalibrate_bn", "train_best_conf", "no_progress", "device"})
# keys the sweep sets itself: --set must not touch them (each has its own sweep option)
OWNED_KEYS = {"normal_class": "--classes", "seed": "--seeds", "boundary": "--boundary",
              "idx_list_enc": "--layer-sets", "data_path": "-dp", "run_dir": "--out", "model_ckp": "(set by the sweep)",
              "pretrain": "(set by the sweep)", "train": "(set by the sweep)", "test": "(set by the sweep)",
              "resume": "(automatic)", "config": "--config", "preset": "--preset", "output_path": "--out"}
OWNED_FLAGS = {"-nc", "--normal-class", "-s", "--seed", "-bd", "--boundary", "-ile", "--idx-list-enc", "--run-dir",
               "-ck", "--model-ckp", "-ptr", "--pretrain", "-tr", "--train", "-tt", "--test", "--resume", "-dp",
               "--data-path", "--config", "--preset", "--output_path", "-ee", "--end-to-end-training", "--dataset"}
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class DatasetInfo:
    """What the sweep needs to know about a dataset: its entry script and its classes."""

    entry: str
    classes: tuple[str, ...]  # the values -nc takes (video: the dataset itself, its only "class")
    names: tuple[str, ...] = ()  # CIFAR-10: class index -> name (folder names read "5_dog")
    video: bool = False  # one end-to-end stage (-ee -tt), no shared pretraining

    def folder(self, class_arg: str) -> str:
        return f"{class_arg}_{self.names[int(class_arg)]}" if self.names else class_arg


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("main_cifar10.py", tuple(str(i) for i in range(10)), CIFAR10_CLASSES),
    "mvtec": DatasetInfo("main_mvtec.py", MVTEC_CATEGORIES),
    **{name: DatasetInfo("main_shanghaitech.py", (name,), video=True) for name in ("ped2", "avenue", "shanghaitech")},
}

Settings = tuple[tuple[str, str], ...]  # (key, value as typed after --set key=), sorted by key


@dataclass(frozen=True)
class PretrainJob:
    """Stage 1 of one (class, seed, stage-1 settings): shared by all stage-2 runs built on it."""

    class_arg: str
    class_folder: str
    seed: int
    settings: Settings
    dir: Path

    @property
    def ae_path(self) -> Path:
        return self.dir / results.AE_CHECKPOINT

    @property
    def label(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.settings)
        return f"pretrain {self.class_folder} seed {self.seed}" + (f" {extra}" if extra else "")


@dataclass(frozen=True)
class RunJob:
    """One stage-2 run (-tr -tt) of the grid."""

    class_arg: str
    class_folder: str
    seed: int
    boundary: str
    layers: tuple[int, ...] | None  # None: the config's default layer set
    holistic: bool
    settings: Settings
    dir: Path
    pretrain: PretrainJob | None  # None: video, trained end to end in the run itself

    @property
    def layers_text(self) -> str:
        if self.holistic:
            return "holistic"
        return "default" if self.layers is None else ",".join(map(str, self.layers))

    @property
    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.settings)
        return f"{self.class_folder} seed {self.seed} {self.boundary} layers {self.layers_text}{extra}"


@dataclass
class SweepSpec:
    """The parsed command line: the grid plus what every run shares."""

    dataset: str
    classes: list[str]
    seeds: list[int]
    boundaries: list[str]
    layer_sets: list[tuple[int, ...] | None]
    holistic: bool
    grid: dict[str, list[str]]  # --set key -> values
    data_path: str
    out: Path
    config: str | None = None
    presets: list[str] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)
    jobs: int = 1

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.dataset]

    def fixed(self) -> dict[str, Any]:
        """Settings shared by every run: a rerun into the same --out must not change them."""
        return {"dataset": self.dataset, "config": self.config, "presets": list(self.presets),
                "data_path": self.data_path, "passthrough": list(self.passthrough)}


@dataclass
class Outcome:
    """What happened to one job."""

    label: str
    dir: Path
    status: str  # "done" (ran now), "skipped" (finished earlier), "failed"
    seconds: float = 0.0
    error: str = ""
    metrics: dict[str, Any] | None = None


@dataclass
class SweepResult:
    runs: list[Outcome]
    pretrains: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.pretrains + self.runs if o.status == "failed"]


Runner = Callable[[list[str], Path], int]  # (command, log file) -> exit status


# ------------------------------------------------------------------------------------------------
# parsing the grid
# ------------------------------------------------------------------------------------------------

def parse_int_list(tokens: Sequence[str], what: str) -> list[int]:
    """'0-9', '0 1 2', '0,1,2' (or a mix) -> sorted distinct ints; ranges are inclusive."""
    values: list[int] = []
    for token in tokens:
        for part in filter(None, token.split(",")):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
            if not m:
                raise UserError(f"{what} {part!r}: use non-negative integers, lists (0 1 2 or 0,1,2) or ranges (0-9)")
            lo, hi = int(m[1]), int(m[2] or m[1])
            if hi < lo:
                raise UserError(f"{what} {part!r}: empty range")
            values += range(lo, hi + 1)
    if not values:
        raise UserError(f"{what}: give at least one value")
    return sorted(set(values))


def parse_classes(dataset: str, tokens: Sequence[str]) -> list[str]:
    """'all', class indices/ranges/names for CIFAR-10, category names for MVTec -> the -nc values."""
    info = DATASETS[dataset]
    if [t.lower() for t in tokens] == ["all"]:
        return list(info.classes)
    if info.names:  # CIFAR-10: indices, ranges or names
        by_name = {n: str(i) for i, n in enumerate(info.names)}
        picked: list[str] = []
        for token in tokens:
            for part in filter(None, token.split(",")):
                if part in by_name:
                    picked.append(by_name[part])
                else:
                    picked += [str(i) for i in parse_int_list([part], "--classes")]
        bad = [c for c in picked if c not in info.classes]
        if bad:
            raise UserError(f"--classes {' '.join(bad)}: CIFAR-10 classes are 0-9 or {', '.join(info.names)}")
        return sorted(set(picked), key=int)
    picked = [part for token in tokens for part in token.split(",") if part]
    bad = [c for c in picked if not re.fullmatch(r"[A-Za-z0-9_]+", c)]
    if bad or not picked:
        raise UserError(f"--classes {' '.join(bad)}: give category names ({', '.join(info.classes)}) or 'all'")
    unknown = [c for c in picked if c not in info.classes]
    if unknown:
        print(f"warning: {', '.join(unknown)} not among the {dataset} categories {', '.join(info.classes)}",
              file=sys.stderr)
    return list(dict.fromkeys(picked))


def parse_layer_set(text: str) -> tuple[int, ...]:
    """'0,1,2,3' (or '0.1.2.3', '0 1 2 3') -> (0, 1, 2, 3)."""
    parts = [p for p in re.split(r"[,.\s]+", text.strip()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise UserError(f"--layer-sets {text!r}: give comma-separated layer indices, e.g. \"0,1,2,3\"")
    layers = tuple(int(p) for p in parts)
    if len(set(layers)) != len(layers):
        raise UserError(f"--layer-sets {text!r}: repeated layer index")
    return layers


@functools.lru_cache(maxsize=None)
def flag_parser(dataset: str) -> argparse.ArgumentParser:
    """The entry script's parser (utils.cli.<dataset>_parser), to map config keys to flags."""
    if DATASETS[dataset].video:
        return cli.video_parser()
    make = getattr(cli, f"{dataset}_parser", None) or cli.cifar10_parser  # the common flags are shared
    return make()


def _action(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    return next((a for a in parser._actions if a.dest == key and a.option_strings), None)


def parse_set(items: Sequence[str], dataset: str) -> dict[str, list[str]]:
    """--set key=v1,v2 ... -> {key: [v1, v2]}; checked against the entry script's flags and types."""
    parser = flag_parser(dataset)
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"--set {item!r}: use key=value1,value2 (config keys as in configs/*.yaml)")
        if key in OWNED_KEYS:
            raise UserError(f"--set {key}: the sweep sets it; use {OWNED_KEYS[key]}")
        if key in grid:
            raise UserError(f"--set {key} given twice")
        grid[key] = values.split(",")
        action = _action(parser, key)
        if action is not None:
            for v in grid[key]:
                flag_args(key, v, parser)  # validates the value now, not after hours of sweeping
        elif getattr(cli, f"{dataset}_parser", None) is not None:
            raise UserError(f"--set {key}: unknown key for {dataset}")
    return grid


def flag_args(key: str, value: str, parser: argparse.ArgumentParser) -> list[str]:
    """One --set value -> command-line tokens. Lists: items joined by '+' ('50+100'); flags: true/false."""
    action = _action(parser, key)
    if action is None:  # a key of a dataset whose parser the sweep cannot import: best guess
        return [f"--{key.replace('_', '-')}", value]
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:  # store_true
        word = value.strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise UserError(f"--set {key}={value}: {key} is a switch; use true or false")
        return [flag] if word in TRUE_WORDS else []
    items = [value] if action.nargs is None else [v for v in value.split("+") if v and v.lower() != "none"]
    for v in items:
        try:
            converted = action.type(v) if action.type else v
        except (TypeError, ValueError):
            raise UserError(f"--set {key}={value}: {v!r} is not a valid {getattr(action.type, '__name__', 'value')}")
        if action.choices and converted not in action.choices:
            raise UserError(f"--set {key}={value}: choose from {', '.join(map(str, action.choices))}")
    return [flag, *items]


def _name_value(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value.replace("+", ".")) or "none"


def settings_hash(settings: Settings) -> str:
    return hashlib.sha1(json.dumps(list(settings)).encode()).hexdigest()[:8]


def expand_grid(spec: SweepSpec) -> list[RunJob]:
    """Every stage-2 run of the grid, each with its (shared) pretraining; names are deterministic."""
    keys = sorted(spec.grid)
    combos = [tuple(zip(keys, vals)) for vals in itertools.product(*(spec.grid[k] for k in keys))]
    variants: list[tuple[tuple[int, ...] | None, bool]] = [(ls, False) for ls in spec.layer_sets]
    if spec.holistic:
        variants.append((None, True))
    runs: list[RunJob] = []
    pretrains: dict[Path, PretrainJob] = {}
    for cls in spec.classes:
        folder = spec.info.folder(cls)
        for seed in spec.seeds:
            for settings in combos:
                ae_settings = tuple((k, v) for k, v in settings if k not in STAGE2_KEYS)
                pt_name = f"{folder}-seed_{seed}" + (f"-{settings_hash(ae_settings)}" if ae_settings else "")
                pt_dir = spec.out / "pretrain" / pt_name
                pt = None if spec.info.video else pretrains.setdefault(
                    pt_dir, PretrainJob(cls, folder, seed, ae_settings, pt_dir))
                extra = "".join(f"-{k}_{_name_value(v)}" for k, v in settings)
                for boundary in spec.boundaries:
                    for layers, holistic in variants:
                        tag = "holistic" if holistic else ("ile_default" if layers is None
                                                           else "ile_" + results.layers_tag(layers))
                        name = f"{boundary}-{tag}{extra}-seed_{seed}"
                        runs.append(RunJob(cls, folder, seed, boundary, layers, holistic, settings,
                                           spec.out / "runs" / folder / name, pt))
    return runs


def unique_pretrains(runs: Sequence[RunJob]) -> list[PretrainJob]:
    return list(dict.fromkeys(r.pretrain for r in runs if r.pretrain is not None))


# ------------------------------------------------------------------------------------------------
# commands and states
# ------------------------------------------------------------------------------------------------

def _base_command(spec: SweepSpec, class_arg: str, seed: int, settings: Settings, holistic: bool) -> list[str]:
    parser = flag_parser(spec.dataset)
    which = ["--dataset", spec.dataset] if spec.info.video else ["-nc", class_arg]
    cmd = [sys.executable, spec.info.entry, *which, "-dp", spec.data_path, "-s", str(seed)]
    if spec.config:
        cmd += ["--config", spec.config]
    presets = list(spec.presets) + ([HOLISTIC_PRESET] if holistic else [])
    if presets:
        cmd += ["--preset", *presets]
    for key, value in settings:
        cmd += flag_args(key, value, parser)
    return cmd + list(spec.passthrough) + ["--no-progress"]


def pretrain_command(spec: SweepSpec, job: PretrainJob, resume: bool) -> list[str]:
    cmd = _base_command(spec, job.class_arg, job.seed, job.settings, False) + ["-ptr", "--run-dir", str(job.dir)]
    return cmd + (["--resume"] if resume else [])


def run_command(spec: SweepSpec, job: RunJob, resume: bool) -> list[str]:
    cmd = _base_command(spec, job.class_arg, job.seed, job.settings, job.holistic)
    if job.layers is not None:
        cmd += ["-ile", *map(str, job.layers)]
    if job.pretrain is None:  # video: one end-to-end stage
        cmd += ["-bd", job.boundary, "-ee", "-tt", "--run-dir", str(job.dir)]
    else:
        cmd += ["-bd", job.boundary, "-tr", "-tt", "-ck", str(job.pretrain.ae_path), "--run-dir", str(job.dir)]
    return cmd + (["--resume"] if resume else [])


def run_state(job: RunJob) -> str:
    """'done' (metrics.json), 'resume' (folder left by an earlier attempt) or 'new'."""
    if (job.dir / results.METRICS_FILE).is_file():
        return "done"
    return "resume" if job.dir.is_dir() and any(job.dir.iterdir()) else "new"


def pretrain_state(job: PretrainJob) -> str:
    """'done' (marker written after a successful -ptr), 'resume' (an ae.pt of a killed run) or 'new'."""
    if (job.dir / PRETRAIN_DONE).is_file() and job.ae_path.is_file():
        return "done"
    return "resume" if job.ae_path.is_file() else "new"


_LIVE: set[subprocess.Popen] = set()  # children of subprocess_runner still running
_LIVE_LOCK = threading.Lock()


def subprocess_runner(cmd: list[str], log: Path, gpu: int | None = None) -> int:
    """Run one job in its own process (cwd = project root), its output appended to ``log``; ``gpu``
    pins it to that device (CUDA_VISIBLE_DEVICES)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a killed job still leaves its last lines in the log
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            return proc.wait()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)


def stop_children() -> None:
    """SIGTERM every running job (their checkpoints are written atomically, so --resume continues them).

    Needed because a child may not get the terminal's Ctrl-C (e.g. a sweep started in the background).
    """
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()


def gpu_count() -> int:
    """CUDA devices visible to the sweep (torch imported only here, and only for --jobs > 1)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def _attempt(runner: Runner, cmd: list[str], folder: Path, gpu: int | None = None) -> tuple[int, float, str]:
    """Run one job; never raises (a runner crash counts as a failed job)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / LOG_FILE
    with open(log, "a") as fh:
        fh.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')}\n$ {shlex.join(cmd)}\n")
    t0 = time.perf_counter()
    try:
        rc = runner(cmd, log) if gpu is None else runner(cmd, log, gpu=gpu)
    except Exception as err:  # noqa: BLE001 - one job's failure must not stop the sweep
        return -1, time.perf_counter() - t0, f"{type(err).__name__}: {err}"
    return rc, time.perf_counter() - t0, ""


def _log_tail(folder: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in (folder / LOG_FILE).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _read_metrics(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / results.METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------

def execute(spec: SweepSpec, runs: Sequence[RunJob], runner: Runner = subprocess_runner, jobs: int = 1,
            progress: bool = True) -> SweepResult:
    """Run what is not finished yet, ``jobs`` at a time; a run starts only after its pretraining."""
    outcomes: list[Outcome] = []
    pt_outcomes: list[Outcome] = []
    todo = []
    for run in runs:
        if run_state(run) == "done":
            outcomes.append(Outcome(run.label, run.dir, "skipped", metrics=_read_metrics(run.dir)))
        else:
            todo.append(run)
    waiting: dict[PretrainJob, list[RunJob]] = {}
    ready_runs: deque[RunJob] = deque()
    ready_pts: deque[PretrainJob] = deque()
    for pt in unique_pretrains(todo):  # only pretrainings some unfinished run still needs
        if pretrain_state(pt) == "done":
            pt_outcomes.append(Outcome(pt.label, pt.dir, "skipped"))
        else:
            ready_pts.append(pt)
            waiting[pt] = []
    for run in todo:
        if run.pretrain in waiting:
            waiting[run.pretrain].append(run)
        else:
            ready_runs.append(run)

    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="runs", unit="run", disable=not progress,
               dynamic_ncols=True)
    say = tqdm.write if progress else print

    def finish_run(run: RunJob, status: str, seconds: float = 0.0, error: str = "") -> None:
        metrics = _read_metrics(run.dir) if status == "done" else None
        if status == "done" and metrics is None:
            status, error = "failed", f"exited 0 but wrote no {results.METRICS_FILE}"
        outcomes.append(Outcome(run.label, run.dir, status, seconds, error, metrics))
        if metrics is not None:
            say(f"{run.label}: AUC {metrics['auc']:.4f}  maxBA {metrics['max_ba']:.4f}  ({seconds:.0f} s)")
        else:
            say(f"{run.label}: FAILED ({error})")
        bar.update(1)

    inflight: dict[cf.Future, RunJob | PretrainJob] = {}
    # several GPUs and --jobs > 1: job slot i runs on GPU i mod n_gpus (one job per GPU at a time for jobs <= n)
    n_gpus = gpu_count() if jobs > 1 else 0
    free_slots = deque(range(max(1, jobs)))
    slot_of: dict[cf.Future, int] = {}
    if n_gpus > 1:
        say(f"[gpus] {n_gpus} CUDA devices: job slot i runs on GPU i mod {n_gpus}")
    with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        def start(cmd: list[str], folder: Path) -> cf.Future:
            slot = free_slots.popleft()
            fut = pool.submit(_attempt, runner, cmd, folder, slot % n_gpus if n_gpus > 1 else None)
            slot_of[fut] = slot
            return fut

        def fill() -> None:
            # stage-2 runs first: results arrive early and a killed sweep leaves whole classes finished
            while len(inflight) < max(1, jobs) and (ready_runs or ready_pts):
                if ready_runs:
                    run = ready_runs.popleft()
                    cmd = run_command(spec, run, resume=run_state(run) == "resume")
                    inflight[start(cmd, run.dir)] = run
                else:
                    pt = ready_pts.popleft()
                    cmd = pretrain_command(spec, pt, resume=pretrain_state(pt) == "resume")
                    inflight[start(cmd, pt.dir)] = pt

        fill()
        try:
            while inflight:
                done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    job = inflight.pop(fut)
                    free_slots.append(slot_of.pop(fut))
                    rc, seconds, error = fut.result()
                    error = error or (f"exit status {rc}: {_log_tail(job.dir)}" if rc != 0 else "")
                    if isinstance(job, RunJob):
                        finish_run(job, "done" if rc == 0 else "failed", seconds, error)
                        continue
                    if rc == 0 and not job.ae_path.is_file():
                        rc, error = -1, f"exited 0 but wrote no {results.AE_CHECKPOINT}"
                    if rc == 0:
                        write_json(job.dir / PRETRAIN_DONE, {"seconds": seconds, "finished": time.strftime("%c")})
                        pt_outcomes.append(Outcome(job.label, job.dir, "done", seconds))
                        say(f"{job.label}: done ({seconds:.0f} s)")
                        ready_runs.extend(waiting.pop(job))
                    else:
                        pt_outcomes.append(Outcome(job.label, job.dir, "failed", seconds, error))
                        say(f"{job.label}: FAILED ({error})")
                        for run in waiting.pop(job):
                            finish_run(run, "failed", error=f"its pretraining failed ({job.dir / LOG_FILE})")
                fill()
        except KeyboardInterrupt:
            ready_runs.clear()
            ready_pts.clear()
            stop_children()
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            raise
    bar.close()
    return SweepResult(outcomes, pt_outcomes)


def summary(result: SweepResult) -> str:
    n = len(result.runs)
    count = {s: sum(o.status == s for o in result.runs) for s in ("done", "skipped", "failed")}
    pts = {s: sum(o.status == s for o in result.pretrains) for s in ("done", "skipped", "failed")}
    lines = [f"sweep: {n} runs: {count['done']} finished now, {count['skipped']} already finished, "
             f"{count['failed']} failed; pretrainings: {pts['done']} run, {pts['skipped']} reused, "
             f"{pts['failed']} failed"]
    for o in result.failed:
        lines.append(f"  FAILED {o.label}: {o.error}\n         log: {o.dir / LOG_FILE}")
    return "\n".join(lines)


def write_sweep_file(spec: SweepSpec, runs: Sequence[RunJob], argv: Sequence[str]) -> None:
    """<out>/sweep.yaml: the grid, the shared settings and the command, for the report and for reruns."""
    path = spec.out / SWEEP_FILE
    if path.is_file():
        try:
            old = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]}): fix or delete it (it is "
                            "rewritten from this command), or use another --out") from err
        if not isinstance(old, dict) or not isinstance(old.get("fixed", {}), dict):
            raise UserError(f"{path} does not hold a sweep description: delete it or use another --out")
        if old.get("fixed") not in (None, spec.fixed()):
            diff = {k: (old["fixed"].get(k), v) for k, v in spec.fixed().items() if old["fixed"].get(k) != v}
            raise UserError(f"{spec.out} holds a sweep with other shared settings "
                            f"({'; '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); its pretrained "
                            "AEs and runs would be mixed with these: use another --out")
    doc = {
        "command": shlex.join(["python", "-m", "tools.sweep", *argv]),
        "cwd": os.getcwd(),
        "entry": spec.info.entry,
        "fixed": spec.fixed(),
        "grid": {"classes": spec.classes, "seeds": spec.seeds, "boundary": spec.boundaries,
                 "layer_sets": [None if ls is None else list(ls) for ls in spec.layer_sets],
                 "holistic": spec.holistic, "set": spec.grid},
        "n_runs": len(runs),
        "n_pretrain": len(unique_pretrains(runs)),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_text(path, yaml.safe_dump(doc, sort_keys=False))


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = cli.FlagParser(
        "python -m tools.sweep",
        description="Run a grid of MOCCA experiments (classes x seeds x boundaries x layer sets x --set values) "
                    "as subprocesses of main_<dataset>.py, sharing stage-1 pretraining; rerun the same command "
                    "to continue a killed sweep. Flags after '--' go to every run unchanged.",
        epilog="example: python -m tools.sweep cifar10 --classes all --seeds 0-9 --boundary soft hard --holistic "
               "-dp ../shared/data/cifar10 --out results/table1 --preset cpu --jobs 2 -- --device cpu",
)
    p.add_argument("dataset", choices=sorted(DATASETS), help="which entry script: main_<dataset>.py")
    p.add_argument("--classes", nargs="+", default=["all"],
                   help="'all' (default), or classes: CIFAR-10 indices/ranges/names (0-4 8 dog), MVTec category "
                        "names; video datasets have one")
    p.add_argument("--seeds", nargs="+", default=["0"], help="seeds: 0-9, 0 1 2 or 0,1,2 (default: 0)")
    p.add_argument("--boundary", nargs="+", choices=["soft", "hard"], default=["soft", "hard"],
                   help="boundaries to run (default: soft hard)")
    p.add_argument("--layer-sets", dest="layer_sets", nargs="+", default=None,
                   help="layer sets to train/score, each comma-separated (\"0,1,2,3\" \"3\"); "
                        "default: the config's idx_list_enc")
    p.add_argument("--holistic", action="store_true",
                   help="also run the paper's holistic baseline (preset 'holistic': last layer only) "
                        "for every class/seed/boundary")
    p.add_argument("--set", dest="set", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="more grid axes: config keys (as in configs/*.yaml) with comma-separated values, "
                        "e.g. nu=0.05,0.1 code_length=64,128; list values join items with '+' "
                        "(lr_milestones=50+100,80); switches take true/false. Stage-2-only keys (nu, epochs, "
                        "learning_rate, weight_decay, lr_milestones, warm_up_n_epochs, use_selectors, recalibrate_bn) reuse the "
                        "pretrained AE; any other key gets its own pretraining")
    p.add_argument("-dp", "--data-path", dest="data_path", required=True, help="dataset root passed to every run")
    p.add_argument("--out", required=True, help="sweep folder: <out>/pretrain, <out>/runs, <out>/sweep.yaml")
    p.add_argument("--jobs", type=int, default=1, help="jobs at once, each one a subprocess (default: 1)")
    p.add_argument("--preset", nargs="+", default=[], help="config presets for every run (e.g. cpu)")
    p.add_argument("--config", default=None, help="YAML config for every run (default: the entry's own)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands; run and write nothing")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--batched", dest="batched", action="store_const", const=True, default=None,
                      help="train all classes x seeds of each boundary/layer set as one grouped model (main_cifar10.py "
                           "--classes .. --seeds ..) instead of one process per run; default for CIFAR-10 when CUDA is "
                           "available and the runs do not ask for --device cpu")
    mode.add_argument("--sequential", dest="batched", action="store_const", const=False,
                      help="one process per run even where --batched is the default")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    c = p.add_argument_group("cluster (submitit; defaults from the config YAML's 'cluster:' section)")
    c.add_argument("--executor", choices=["pool", "local", "slurm", "debug"], default="pool",
                   help="pool: local subprocesses, --jobs at a time (default); slurm: two job arrays (pretraining, "
                        "then the runs after it); local / debug: submitit's subprocess / in-process executors")
    c.add_argument("--partition", default=None, help="SLURM partition")
    c.add_argument("--time-min", dest="time_min", type=int, default=None, help="time limit per job, minutes")
    c.add_argument("--gpus-per-job", dest="gpus_per_job", type=int, default=None)
    c.add_argument("--cpus-per-job", dest="cpus_per_job", type=int, default=None)
    c.add_argument("--mem-gb", dest="mem_gb", type=int, default=None)
    c.add_argument("--array-parallelism", dest="array_parallelism", type=int, default=None,
                   help="jobs of one array running at once")
    return p


def cluster_settings(spec: SweepSpec, args: argparse.Namespace):
    """--executor and the job sizes: flags over the config YAML's ``cluster:`` section over the defaults."""
    from dataclasses import fields

    from tools.cluster import ClusterSettings

    config = spec.config or str(PROJECT_ROOT / "configs" / f"{spec.dataset}.yaml")
    section = (cli.load_yaml(config).get("cluster") or {}) if Path(config).is_file() else {}
    known = {f.name for f in fields(ClusterSettings)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise UserError(f"{config}: unknown 'cluster:' keys {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    values = {**section, **{k: getattr(args, k) for k in known if k != "executor" and getattr(args, k) is not None}}
    for key, value in values.items():
        if key != "partition" and (not isinstance(value, int) or value < (0 if key == "gpus_per_job" else 1)):
            raise UserError(f"cluster setting {key}={value!r}: must be a whole number >= "
                            f"{0 if key == 'gpus_per_job' else 1}")
    return ClusterSettings(executor=args.executor, **values)


def parse_spec(argv: Sequence[str]) -> tuple[SweepSpec, argparse.Namespace]:
    """Command line -> the sweep (paths made absolute: the runs' cwd is the project root)."""
    argv = list(argv)
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    clash = [t for t in extra if t.split("=")[0] in OWNED_FLAGS]
    if clash:
        raise UserError(f"flags after '--' that the sweep sets itself: {' '.join(clash)}; use the sweep's options "
                        "(--classes, --seeds, --boundary, --layer-sets, -dp, --out, --config, --preset)")
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    config = None
    if args.config:
        config = str(Path(args.config).resolve())
        if not Path(config).is_file():
            raise UserError(f"--config {args.config}: file not found")
    layer_sets = [parse_layer_set(t) for t in args.layer_sets] if args.layer_sets else [None]
    return SweepSpec(
        dataset=args.dataset,
        classes=parse_classes(args.dataset, args.classes),
        seeds=parse_int_list(args.seeds, "--seeds"),
        boundaries=list(dict.fromkeys(args.boundary)),
        layer_sets=list(dict.fromkeys(layer_sets)),
        holistic=args.holistic,
        grid=parse_set(args.set, args.dataset),
        data_path=str(Path(args.data_path).resolve()),  # the runs' cwd is the project root, not ours
        out=Path(args.out).resolve(),
        config=config,
        presets=list(args.preset),
        passthrough=extra,
        jobs=args.jobs,
    ), args


BATCHED_DONE = "sweep_batched_done.json"


def wants_batched(spec: SweepSpec, requested: bool | None) -> bool:
    """--batched / --sequential if given; otherwise batched for CIFAR-10 sweeps that will run on CUDA."""
    if requested is not None:
        return requested
    if spec.dataset != "cifar10":
        return False
    tokens = spec.passthrough
    device = next((tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "--device"), "auto")
    device = next((t.split("=", 1)[1] for t in tokens if t.startswith("--device=")), device)
    if device == "cpu":
        return False
    import torch  # only here: planning a sweep needs no torch otherwise

    return torch.cuda.is_available()


def batched_groups(spec: SweepSpec, runs: Sequence[RunJob]) -> list[tuple[Path, list[str]]]:
    """CIFAR-10 on a GPU: one ``main_cifar10.py --classes .. --seeds ..`` process per (boundary, layers, settings) group.

    All classes x seeds of a group train as one grouped model (K runs at once); each group pretrains
    its own AEs, so the soft and hard groups do not share stage 1 as the per-run path does.
    """
    if spec.dataset != "cifar10":
        raise UserError("--batched is for CIFAR-10 (the grouped LeNet); run MVTec sweeps without it")
    groups: dict[tuple, list[RunJob]] = {}
    for r in runs:
        groups.setdefault((r.boundary, r.layers, r.holistic, r.settings), []).append(r)
    planned = []
    for (boundary, layers, holistic, settings), members in groups.items():
        tag = "holistic" if holistic else ("ile_default" if layers is None else "ile_" + results.layers_tag(layers))
        extra = "".join(f"-{k}_{_name_value(v)}" for k, v in settings)
        out = spec.out / "batched" / f"{boundary}-{tag}{extra}"
        cmd = _base_command(spec, "0", 0, settings, holistic)
        cmd = [t for i, t in enumerate(cmd) if not (cmd[i - 1] in ("-nc", "-s") or t in ("-nc", "-s"))]
        cmd += ["--classes", *dict.fromkeys(r.class_arg for r in members),  # all of them as one grouped model
                "--seeds", *map(str, dict.fromkeys(r.seed for r in members)),
                "-bd", boundary, "-ptr", "-tr", "-tt", "--output_path", str(out), "--resume"]
        if layers is not None:
            cmd += ["-ile", *map(str, layers)]
        planned.append((out, cmd))
    return planned


def execute_batched(spec: SweepSpec, runs: Sequence[RunJob], runner: Runner) -> int:
    """Run the batched groups one after another (each fills the GPU); finished groups are skipped."""
    failed = 0
    for out, cmd in batched_groups(spec, runs):
        if (out / BATCHED_DONE).is_file():
            print(f"[done] {out}")
            continue
        out.mkdir(parents=True, exist_ok=True)
        status = runner(cmd, out / "sweep.log")
        if status == 0:
            write_text(out / BATCHED_DONE, json.dumps({"command": cmd}) + "\n")
        else:
            failed += 1
            print(f"[failed] {out} (exit {status}); log: {out / 'sweep.log'}")
    return failed


def dry_run(spec: SweepSpec, runs: Sequence[RunJob]) -> None:
    needed = unique_pretrains([r for r in runs if run_state(r) != "done"])
    print(f"# {len(runs)} runs, {len(unique_pretrains(runs))} pretrainings ({len(needed)} still needed)")
    for pt in needed:
        state = pretrain_state(pt)
        print(f"[pretrain {state}] " + ("(reused)" if state == "done" else
                                        shlex.join(pretrain_command(spec, pt, state == "resume"))))
    for run in runs:
        state = run_state(run)
        print(f"[{state}] " + (str(run.dir) if state == "done" else shlex.join(run_command(spec, run, state == "resume"))))


def main(argv: Sequence[str] | None = None, runner: Runner = subprocess_runner) -> int:
    """Plan, write sweep.yaml, run; returns the exit status (1 when any job failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    spec, args = parse_spec(argv)
    cli.check_writable(spec.out, "--out")
    entry = PROJECT_ROOT / spec.info.entry
    runs = expand_grid(spec)
    if args.executor != "pool" and not args.dry_run:  # each run one cluster job
        from tools import cluster

        settings = cluster_settings(spec, args)
        write_sweep_file(spec, runs, argv)
        return 1 if cluster.submit(spec, runs, settings) else 0
    if wants_batched(spec, args.batched):
        if args.batched is None:
            print("[batched] CUDA is available: all runs of a boundary/layer set train as one model "
                  "(--sequential for one process per run)")
        groups = batched_groups(spec, runs)
        if args.dry_run:
            for out, cmd in groups:
                print(f"[batched] {shlex.join(cmd)}")
            return 0
        write_sweep_file(spec, runs, argv)
        failed = execute_batched(spec, runs, runner)
        print(f"tables: python -m tools.report {spec.out}")
        return 1 if failed else 0
    if args.dry_run:
        dry_run(spec, runs)
        return 0
    if runner is subprocess_runner and not entry.is_file():
        raise UserError(f"{entry} not found: the {spec.dataset} entry script is missing")
    write_sweep_file(spec, runs, argv)
    result = execute(spec, runs, runner, spec.jobs, progress=args.progress)
    print(summary(result))
    print(f"tables: python -m tools.report {spec.out}")
    return 1 if result.failed else 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@exit_on_user_error
def _cli() -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)  # kill <sweep pid> stops its jobs too, like Ctrl-C
    try:
        status = main()
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (finished runs are skipped, killed ones resumed)",
              file=sys.stderr)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    _cli()
