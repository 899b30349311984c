"""A one-shot check of the whole project on a rented CUDA machine, with every figure in one JSON file.

Rented GPU time is short and a machine may be gone before a human looks at it, so every step runs
in its own time-limited subprocess, a failing step is recorded (exit code, log tail, seconds)
without stopping the later ones, and the JSON is rewritten atomically after every step: a killed
check still leaves the finished steps behind. The whole check stays inside ``--budget`` seconds;
a step that no longer fits is recorded as skipped (a failure).

Steps: the environment; CIFAR-10 soft (plus a resume of the finished run and a kill-and-resume
run); CIFAR-10 hard; K runs as one grouped model (``main_cifar10.py --classes``); MVTec AD bottle; UCSD Ped2;
the throughput benchmark with and without ``--channels-last``.

    bash benchmarks/gpu_check.sh                     # on the GPU machine: -> ${OUT:-gpu_check_out}/gpu_check.json
    bash benchmarks/gpu_check.sh --device cpu --quick  # a dry run of every step at the tiniest settings

Only the standard library is used here, so the driver can still write its JSON when the
virtualenv could not be built; the steps themselves run with ``--python`` (default .venv/bin/python).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = (ROOT.parent / "shared" / "data", ROOT / "shared" / "data")  # beside the checkout, or inside it
JSON_NAME = "gpu_check.json"
TAIL_LINES = 30
TIMEOUT_RC = 124  # what coreutils `timeout` returns, so a timed-out step reads the same either way
POLL_S = 0.05
METRIC_KEYS = ("auc", "max_ba", "timings", "device")
EXTRA_METRIC_KEYS = ("n_test", "n_frames", "n_videos", "auc_per_video_mean", "test_clips_per_s")  # where present

ENV_PROBE = """
import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    "cuda_available": cuda, "device_count": torch.cuda.device_count() if cuda else 0,
    "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
    "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
    "num_threads": torch.get_num_threads(),
}))
"""


@dataclass
class Context:
    """What every step needs: where to write, which interpreter and device, and how much time is left."""

    out: Path
    data: Path
    python: str
    device: str
    quick: bool
    deadline: float
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, name: str) -> Path:
        return self.out / f"{name}.log"


@dataclass(frozen=True)
class Step:
    """One entry of the check: ``run`` returns the step's record; ``ok`` False (or an exception) marks a failure."""

    name: str
    timeout_s: float
    run: Callable[[Context, float], dict[str, Any]]


def tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` lines of a log, the part that says why a step failed."""
    try:
        with open(path, errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, n)]
    except OSError:
        return []


def write_json_atomic(path: Path, data: Any) -> None:
    """Write via a temp file and os.replace, so a reader (or a kill) never meets a half-written JSON."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the step's whole process group: a step's helpers must not outlive its time limit."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def start(argv: Sequence[str], log: Path) -> tuple[subprocess.Popen, Any]:
    """Start ``argv`` in the repository root in its own process group, stdout and stderr into ``log``."""
    fh = open(log, "w")
    fh.write(f"$ {' '.join(argv)}\n")
    fh.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(list(argv), cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    return proc, fh


def run_command(argv: Sequence[str], log: Path, timeout_s: float) -> dict[str, Any]:
    """Run one command under a time limit; the record holds rc, seconds, timed_out and the log's tail."""
    t0 = time.monotonic()
    proc, fh = start(argv, log)
    timed_out = False
    try:
        rc = proc.wait(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        rc, timed_out = TIMEOUT_RC, True
    finally:
        fh.close()
    return {"rc": rc, "ok": rc == 0, "timed_out": timed_out, "seconds": round(time.monotonic() - t0, 3),
            "log": str(log), "log_tail": tail(log), "argv": list(argv)}


def fresh(run_dir: Path) -> Path:
    """Remove what an earlier check left in a step's run folder: a stale ae.pt would fake the kill-and-resume."""
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_dir


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The figures of one run folder's metrics.json that the check reports."""
    with open(run_dir / "metrics.json") as fh:
        return pick_metrics(json.load(fh))


def pick_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """auc, max_ba, timings and device of every run, plus the sizes each dataset's metrics happen to hold."""
    return {**{k: metrics.get(k) for k in METRIC_KEYS}, **{k: metrics[k] for k in EXTRA_METRIC_KEYS if k in metrics}}


# ---------------------------------------------------------------------------------------------- commands

def cifar10_argv(ctx: Context, boundary: str, run_dir: Path) -> list[str]:
    epochs = ["-db", "-ae", "1", "-e", "1"] if ctx.quick else ["-ae", "3", "-e", "3"]
    return [ctx.python, "main_cifar10.py", "-ptr", "-tr", "-tt", "-nc", "1", "-bd", boundary,
            "-dp", str(ctx.data / "cifar10"), "--preset", "cpu", *epochs, "-we", "1", "--device", ctx.device,
            "--no-progress", "--run-dir", str(run_dir)]


def batched_classes(ctx: Context) -> list[str]:
    return [str(c) for c in range(2 if ctx.quick else 10)]


def batched_argv(ctx: Context) -> list[str]:
    epochs = ["-db", "-ae", "1", "-e", "1"] if ctx.quick else ["-ae", "3", "-e", "3"]
    return [ctx.python, "main_cifar10.py", "-ptr", "-tr", "-tt", "--classes", *batched_classes(ctx), "--seeds", "0",
            "-bd", "soft", "-dp", str(ctx.data / "cifar10"), "--preset", "cpu", *epochs, "-we", "1",
            "--output_path", str(ctx.out / "batched"), "--device", ctx.device, "--no-progress"]


def mvtec_argv(ctx: Context, run_dir: Path) -> list[str]:
    epochs = ["-db", "-ae", "1", "-e", "1"] if ctx.quick else ["-ae", "2", "-e", "2"]
    return [ctx.python, "main_mvtec.py", "-ptr", "-tr", "-tt", "-nc", "bottle", "-dp", str(ctx.data / "mvtec"),
            "--preset", "cpu", "--image-size", "64", *epochs, "-we", "1", "-bd", "soft", "--device", ctx.device,
            "--no-progress", "--run-dir", str(run_dir)]


def ped2_argv(ctx: Context, run_dir: Path) -> list[str]:
    size = (["-db", "-e", "1", "--clips-per-epoch", "8", "--centroid-clips", "8"] if ctx.quick
            else ["-e", "2", "--clips-per-epoch", "200", "--centroid-clips", "200"])
    return [ctx.python, "main_shanghaitech.py", "--dataset", "ped2", "-dp", str(ctx.data / "ped2"),
            "--config", "configs/ped2.yaml", "-ee", "-tt", *size, "-bd", "soft", "--device", ctx.device,
            "--no-progress", "--run-dir", str(run_dir)]


def throughput_argv(ctx: Context, channels_last: bool) -> list[str]:
    return [ctx.python, "-m", "benchmarks.throughput", "cifar10", "mvtec", "video", "--device", ctx.device,
            "--batches", "2" if ctx.quick else "20", *(["--channels-last"] if channels_last else [])]


# ------------------------------------------------------------------------------------------------- steps

def environment(ctx: Context, timeout_s: float) -> dict[str, Any]:
    """Versions and the GPU as torch and nvidia-smi see them; on --device cuda, no GPU is a failure."""
    rec = run_command([ctx.python, "-c", ENV_PROBE], ctx.log("environment"), timeout_s)
    if rec["ok"]:
        rec["torch"] = json.loads(next(ln for ln in reversed(rec["log_tail"]) if ln.startswith("{")))
        if ctx.device == "cuda" and not rec["torch"]["cuda_available"]:
            rec["ok"], rec["error"] = False, "torch.cuda.is_available() is False"
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu",
             "--format=csv,noheader"]
    try:
        smi = subprocess.run(query, capture_output=True, text=True, timeout=30)
        rec["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        rec["nvidia_smi"] = None
        rec["nvidia_smi_error"] = str(err)
        if ctx.device == "cuda":
            rec["ok"], rec["error"] = False, f"nvidia-smi: {err}"
    try:
        rec["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rec["git_commit"] = None
    rec["cpu_count"] = os.cpu_count()
    return rec


def run_step(name: str, make_argv: Callable[[Context, Path], list[str]]) -> Callable[[Context, float], dict]:
    """A step that runs one entry script into ``<out>/<name>`` and reports its metrics.json."""
    def run(ctx: Context, timeout_s: float) -> dict[str, Any]:
        run_dir = fresh(ctx.out / name)
        rec = run_command(make_argv(ctx, run_dir), ctx.log(name), timeout_s)
        rec["run_dir"] = str(run_dir)
        if rec["ok"]:
            rec["metrics"] = read_metrics(run_dir)
        return rec
    return run


def cifar10_resume_complete(ctx: Context, timeout_s: float) -> dict[str, Any]:
    """``--resume`` on the finished soft run must only re-test: both stages report 'already complete'."""
    run_dir = ctx.out / "cifar10_soft"
    rec = run_command([*cifar10_argv(ctx, "soft", run_dir), "--resume"], ctx.log("cifar10_soft_resume_complete"),
                      timeout_s)
    with open(rec["log"], errors="replace") as fh:
        rec["already_complete_lines"] = [ln.strip() for ln in fh if "already complete" in ln]
    if rec["ok"]:
        rec["metrics"] = read_metrics(run_dir)
        if len(rec["already_complete_lines"]) < 2:
            rec["ok"], rec["error"] = False, "expected '[pretrain] ... already complete' and '[train] ...' lines"
    return rec


def cifar10_kill_resume(ctx: Context, timeout_s: float) -> dict[str, Any]:
    """SIGKILL a soft run once its first ae.pt exists, rerun it with --resume, compare AUC with the uninterrupted run.

    Unequal AUCs are recorded, not failed (CUDA kernels are not bitwise deterministic); a crash is a failure.
    """
    t0 = time.monotonic()
    run_dir = fresh(ctx.out / "cifar10_soft_killed")
    argv = cifar10_argv(ctx, "soft", run_dir)
    first_log = ctx.log("cifar10_soft_kill_first")
    proc, fh = start(argv, first_log)
    ckpt = run_dir / "ae.pt"
    killed, first_rc = False, None
    try:
        while True:
            first_rc = proc.poll()
            if first_rc is not None:
                break
            if ckpt.is_file():
                _kill_group(proc)
                killed, first_rc = True, proc.returncode
                break
            if time.monotonic() - t0 > timeout_s:
                _kill_group(proc)
                fh.close()
                return {"rc": TIMEOUT_RC, "ok": False, "timed_out": True, "seconds": round(time.monotonic() - t0, 3),
                        "log": str(first_log), "log_tail": tail(first_log), "argv": argv,
                        "error": "no ae.pt before the time limit"}
            time.sleep(POLL_S)
    finally:
        fh.close()
    killed_after_s = round(time.monotonic() - t0, 3)
    rec = run_command([*argv, "--resume"], ctx.log("cifar10_soft_kill_resumed"), timeout_s - killed_after_s)
    rec.update(killed=killed, killed_after_s=killed_after_s, first_rc=first_rc, first_log=str(first_log),
               first_log_tail=tail(first_log, 10), run_dir=str(run_dir), seconds=round(time.monotonic() - t0, 3))
    if not killed:
        rec["note"] = "the first run ended before it could be killed; the resume only re-tested it"
        if first_rc != 0:
            rec["ok"], rec["error"] = False, f"the first run exited with {first_rc} before ae.pt existed"
    if rec["rc"] == 0:
        rec["metrics"] = read_metrics(run_dir)
        reference = ctx.records.get("cifar10_soft", {}).get("metrics") or {}
        rec["auc_uninterrupted"] = reference.get("auc")
        rec["auc_resumed"] = rec["metrics"]["auc"]
        if rec["auc_uninterrupted"] is not None and rec["auc_resumed"] is not None:
            rec["auc_equal"] = rec["auc_uninterrupted"] == rec["auc_resumed"]
            rec["auc_abs_diff"] = abs(rec["auc_uninterrupted"] - rec["auc_resumed"])
    return rec


def batched(ctx: Context, timeout_s: float) -> dict[str, Any]:
    """K runs trained as one model: wall time and every run's metrics; fewer metrics files than runs fails."""
    fresh(ctx.out / "batched")
    rec = run_command(batched_argv(ctx), ctx.log("batched"), timeout_s)
    runs = []
    for path in sorted((ctx.out / "batched" / "cifar10").glob("*/*/metrics.json")):
        with open(path) as fh:
            m = json.load(fh)
        runs.append({"run_dir": str(path.parent), "normal_class": m.get("normal_class"), "seed": m.get("seed"),
                     **pick_metrics(m)})
    k = len(batched_classes(ctx))
    rec.update(k=k, wall_s=rec["seconds"], runs=runs)
    if rec["ok"] and len(runs) != k:
        rec["ok"], rec["error"] = False, f"{len(runs)} metrics.json files for {k} runs"
    return rec


def throughput(channels_last: bool) -> Callable[[Context, float], dict[str, Any]]:
    """The throughput table; its printed lines go into the JSON as they are."""
    name = "throughput_channels_last" if channels_last else "throughput"

    def run(ctx: Context, timeout_s: float) -> dict[str, Any]:
        rec = run_command(throughput_argv(ctx, channels_last), ctx.log(name), timeout_s)
        with open(rec["log"], errors="replace") as fh:
            rec["lines"] = [ln.rstrip("\n") for ln in fh][1:]  # without the "$ command" header
        return rec
    return run


def default_steps(quick: bool) -> list[Step]:
    """The check in order; the timeouts are for the full run on one H100/H200 (quick runs are CPU-sized)."""
    scale = 3.0 if quick else 1.0
    steps = [
        Step("environment", 120, environment),
        Step("cifar10_soft", 150, run_step("cifar10_soft", lambda c, d: cifar10_argv(c, "soft", d))),
        Step("cifar10_soft_resume_complete", 90, cifar10_resume_complete),
        Step("cifar10_soft_kill_resume", 240, cifar10_kill_resume),
        Step("cifar10_hard", 150, run_step("cifar10_hard", lambda c, d: cifar10_argv(c, "hard", d))),
        Step("batched", 240, batched),
        Step("mvtec_soft", 180, run_step("mvtec_soft", mvtec_argv)),
        Step("ped2_soft", 240, run_step("ped2_soft", ped2_argv)),
        Step("throughput", 180, throughput(channels_last=False)),
        Step("throughput_channels_last", 180, throughput(channels_last=True)),
    ]
    return [Step(s.name, s.timeout_s * scale, s.run) for s in steps]


# -------------------------------------------------------------------------------------------------- main

def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def setup_record(args: argparse.Namespace) -> dict[str, Any]:
    """What gpu_check.sh reports about scripts/setup.sh (it runs before any Python exists)."""
    if args.setup_rc is None:
        return {"ran": False, "ok": True, "rc": None, "seconds": args.setup_seconds,
                "note": ".venv/bin/python already imported torch"}
    log = Path(args.setup_log) if args.setup_log else None
    return {"ran": True, "ok": args.setup_rc == 0, "rc": args.setup_rc, "seconds": args.setup_seconds,
            "timed_out": args.setup_rc == TIMEOUT_RC, "log": str(log) if log else None,
            "log_tail": tail(log) if log else []}


def run_check(steps: Sequence[Step], ctx: Context, report: dict[str, Any], path: Path) -> dict[str, Any]:
    """Run the steps in order, never stopping at a failure, and rewrite the JSON after each one."""
    t_start = time.monotonic()
    for step in steps:
        left = ctx.remaining()
        if left < 5:
            rec: dict[str, Any] = {"ok": False, "rc": None, "seconds": 0.0, "skipped": True,
                                   "error": "skipped: the time budget is spent"}
        else:
            t0 = time.monotonic()
            print(f"[gpu_check] {step.name} (limit {min(step.timeout_s, left):.0f} s)", flush=True)
            try:
                rec = step.run(ctx, min(step.timeout_s, left))
            except Exception as err:  # a broken step must not hide the later ones
                rec = {"ok": False, "rc": None, "error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc().splitlines()[-TAIL_LINES:]}
            rec.setdefault("seconds", round(time.monotonic() - t0, 3))
        ctx.records[step.name] = rec
        report["steps"][step.name] = rec
        report["failed"] = [n for n, r in report["steps"].items() if not r.get("ok")]
        report["elapsed_s"] = round(time.monotonic() - t_start, 3)
        write_json_atomic(path, report)
        print(f"[gpu_check] {step.name}: {'ok' if rec.get('ok') else 'FAILED'} ({rec['seconds']:.1f} s)", flush=True)
    report["finished"] = now()
    report["ok"] = not report["failed"]
    write_json_atomic(path, report)
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="tiniest settings (-db, 1 epoch, K=2): a CPU dry run")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder of the JSON and logs")
    p.add_argument("--data", default=os.environ.get("GPU_CHECK_DATA"),
                   help="data root holding cifar10/, mvtec/, ped2/ (default: ../shared/data, else ./shared/data)")
    p.add_argument("--python", default=None, help="interpreter of the steps (default: .venv/bin/python)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all steps together (default: 470, quick: 1800)")
    p.add_argument("--only", nargs="+", default=None, help="run only these steps (names as in the JSON)")
    p.add_argument("--setup-rc", type=int, default=None, help="exit code of scripts/setup.sh; omit if it did not run")
    p.add_argument("--setup-seconds", type=float, default=0.0)
    p.add_argument("--setup-log", default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, steps: Sequence[Step] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = args.python or (str(venv_python) if venv_python.exists() else sys.executable)
    budget = args.budget if args.budget is not None else (1800.0 if args.quick else 470.0)
    steps = list(steps if steps is not None else default_steps(args.quick))
    if args.only:
        unknown = set(args.only) - {s.name for s in steps}
        if unknown:
            print(f"error: unknown steps {sorted(unknown)}; known: {[s.name for s in steps]}", file=sys.stderr)
            return 2
        steps = [s for s in steps if s.name in args.only]
    data = Path(args.data) if args.data else next((d for d in DATA_CANDIDATES if d.is_dir()), DATA_CANDIDATES[0])
    ctx = Context(out=out, data=data.resolve(), python=python, device=args.device, quick=args.quick,
                  deadline=time.monotonic() + budget)
    setup = setup_record(args)
    report: dict[str, Any] = {
        "started": now(), "finished": None, "ok": None, "device": args.device, "quick": args.quick,
        "budget_s": budget, "elapsed_s": 0.0, "python": python, "data": str(ctx.data), "out": str(out),
        "argv": sys.argv[1:],
        "failed": [] if setup["ok"] else ["setup"], "steps": {"setup": setup},
    }
    path = out / JSON_NAME
    report = run_check(steps, ctx, report, path)
    print(f"[gpu_check] {'all steps passed' if report['ok'] else 'FAILED: ' + ', '.join(report['failed'])} -> {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
