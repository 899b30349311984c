"""The sweep's cluster backend: submitit job arrays on SLURM (or submitit's local / debug executors).

    python -m tools.sweep cifar10 --classes all --seeds 0-9 --boundary soft hard --holistic -dp <root> \\
        --out results/table1 --executor slurm --partition gpu --gpus-per-job 1 --time-min 120

Why it is built this way:
- every job runs exactly the command the local sweep would run (``main_<dataset>.py ...`` with
  --run-dir, and --resume when its folder holds a killed attempt), so a job killed by the scheduler
  continues from its last checkpoint when the same sweep command is submitted again;
- stage 1 goes out as one job array, stage 2 as a second array that starts only after the first
  succeeded (``afterok``), so every pretrained AE is shared by the runs that need it, as locally;
  video runs (one stage) are a single array;
- a rerun of the sweep skips finished runs (``metrics.json``) and finished pretrainings and submits
  only what is failed or missing; two jobs writing one run folder are stopped by the run folder's
  claim file (``utils.results.claim``);
- the job ids, log paths and commands go to ``<out>/submitted.json`` (appended per submission).
The local and debug executors (subprocesses / in-process) run the same two arrays one after the
other and wait for them; they exist to test this path without a cluster.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from utils.errors import UserError
from utils.io import write_json, write_text

SUBMITTED_FILE = "submitted.json"
EXECUTORS = ("slurm", "local", "debug")


@dataclass
class ClusterSettings:
    """Flags of the cluster backend (defaults can live in the sweep's YAML under ``cluster:``)."""

    executor: str = "slurm"
    partition: str | None = None
    time_min: int = 120
    gpus_per_job: int = 1
    cpus_per_job: int = 4
    mem_gb: int = 16
    array_parallelism: int = 64


def run_job(cmd: list[str], folder: str, log: str, done_marker: str | None = None) -> int:
    """One job on the worker: the sweep's command in the project root, output appended to the job's
    sweep.log; a non-zero exit raises, so ``afterok`` holds back the runs that need this job."""
    from tools.sweep import PROJECT_ROOT  # the worker imports the sweep lazily (it may run elsewhere)

    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} (submitit)\n$ {shlex.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=PROJECT_ROOT, stdout=fh, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise RuntimeError(f"exit status {rc}: see {log}")
    if done_marker:
        write_json(done_marker, {"finished": time.strftime("%c"), "executor": "submitit"})
    return rc


def make_executor(settings: ClusterSettings, folder: Path, dependency: str | None = None):
    import submitit

    if settings.executor not in EXECUTORS:
        raise UserError(f"--executor {settings.executor}: use one of {', '.join(EXECUTORS)}")
    try:
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=settings.executor)
    except RuntimeError as err:
        raise UserError(f"--executor {settings.executor}: {err} (is sbatch on PATH?)") from err
    params: dict[str, Any] = {"timeout_min": settings.time_min, "name": "mocca-sweep"}
    if settings.executor == "slurm":
        params.update(slurm_partition=settings.partition, gpus_per_node=settings.gpus_per_job,
                      cpus_per_task=settings.cpus_per_job, mem_gb=settings.mem_gb,
                      slurm_array_parallelism=settings.array_parallelism)
        if dependency:
            params["slurm_additional_parameters"] = {"dependency": dependency}
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    return executor


def _submit_array(executor, jobs: Sequence[tuple[str, list[str], Path, Path | None]]) -> list:
    """One job array: (label, command, folder, done marker) each; returns submitit's jobs."""
    from tools.sweep import LOG_FILE

    with executor.batch():
        handles = [executor.submit(run_job, cmd, str(folder), str(folder / LOG_FILE),
                                   str(marker) if marker else None) for _, cmd, folder, marker in jobs]
    return handles


def _record(out: Path, settings: ClusterSettings, stage: str, jobs: Sequence[tuple], handles: Sequence) -> dict:
    entries = []
    for (label, cmd, folder, _), job in zip(jobs, handles):
        paths = getattr(job, "paths", None)
        entries.append({"label": label, "job_id": str(job.job_id), "folder": str(folder),
                        "stdout": str(paths.stdout) if paths else None, "command": shlex.join(cmd)})
    return {"stage": stage, "executor": settings.executor, "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
            "array_id": str(handles[0].job_id).split("_")[0] if handles else None, "jobs": entries}


def append_submission(out: Path, record: dict) -> None:
    path = out / SUBMITTED_FILE
    try:
        history = json.loads(path.read_text()) if path.is_file() else []
    except ValueError:
        history = []
    write_text(path, json.dumps([*history, record], indent=2) + "\n")


def submit(spec, runs: Sequence, settings: ClusterSettings) -> int:
    """Submit what is not finished: the pretraining array, then the run array after it (afterok).

    SLURM: returns right after submission. local / debug: waits for both arrays; returns the number of
    failed jobs.
    """
    from tools import sweep

    todo = [r for r in runs if sweep.run_state(r) != "done"]
    pretrains = [p for p in sweep.unique_pretrains(todo) if sweep.pretrain_state(p) != "done"]
    folder = spec.out / "submitit"
    if not todo:
        print(f"[submit] all {len(runs)} runs are finished; nothing to submit")
        return 0
    pt_jobs = [(p.label, sweep.pretrain_command(spec, p, resume=sweep.pretrain_state(p) == "resume"), p.dir,
                p.dir / sweep.PRETRAIN_DONE) for p in pretrains]
    run_jobs = [(r.label, sweep.run_command(spec, r, resume=sweep.run_state(r) == "resume"), r.dir, None)
                for r in todo]
    failed = 0
    dependency = None
    if pt_jobs:
        handles = _submit_array(make_executor(settings, folder), pt_jobs)
        record = _record(spec.out, settings, "pretrain", pt_jobs, handles)
        append_submission(spec.out, record)
        print(f"[submit] {len(pt_jobs)} pretrainings: array {record['array_id']} ({settings.executor})")
        if settings.executor == "slurm":
            dependency = f"afterok:{record['array_id']}"
        else:
            failed += _wait(handles, pt_jobs)
            ready = {p.dir for p in pretrains if sweep.pretrain_state(p) == "done"}
            run_jobs = [j for j, r in zip(run_jobs, todo) if r.pretrain is None or r.pretrain.dir in ready
                        or r.pretrain not in pretrains]
    handles = _submit_array(make_executor(settings, folder, dependency), run_jobs) if run_jobs else []
    if handles:
        record = _record(spec.out, settings, "runs", run_jobs, handles)
        append_submission(spec.out, record)
        print(f"[submit] {len(run_jobs)} runs: array {record['array_id']}"
              + (f" after {dependency}" if dependency else ""))
    if settings.executor == "slurm":
        print(f"[submit] job ids and logs: {spec.out / SUBMITTED_FILE}; when the jobs are done, rerun this command "
              f"to resubmit failed or missing runs, then: python -m tools.report {spec.out}")
        return 0
    return failed + _wait(handles, run_jobs)


def _wait(handles: Sequence, jobs: Sequence[tuple]) -> int:
    failed = 0
    for job, (label, _, folder, _) in zip(handles, jobs):
        try:
            job.result()
            print(f"{label}: done")
        except Exception as err:  # noqa: BLE001 - one failed job must not stop the others
            failed += 1
            print(f"{label}: FAILED ({type(err).__name__}: {str(err).strip().splitlines()[-1][:200]})")
    return failed
