"""tools.sweep beyond one process pool: submitit's debug / local executors, SLURM arrays (fake sbatch),
GPU pinning of local jobs, and video sweeps."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tools import cluster, sweep
from utils import results

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
TINY = ["--preset", "cpu", "--no-progress", "--", "-ae", "1", "-e", "1", "-db", "-bs", "128"]


def grid(out: Path, *extra: str) -> list[str]:
    """1 class x 2 seeds x 2 boundaries: 2 pretrainings, 4 runs."""
    return ["cifar10", "--classes", "1", "--seeds", "0", "1", "--boundary", "soft", "hard", "-dp", str(SHARED_CIFAR),
            "--out", str(out), *extra, *TINY]


def finished(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").rglob(results.METRICS_FILE))]


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="shared CIFAR-10 data not available")
@pytest.mark.parametrize("executor", ["debug", "local"])
def test_submitit_executor_runs_the_sweep_and_a_rerun_skips_it(executor, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / executor
    argv = grid(out, "--executor", executor, "--time-min", "10")
    assert sweep.main(argv) == 0, [p.read_text()[-1500:] for p in out.rglob(sweep.LOG_FILE)]
    runs = finished(out)
    assert len(runs) == 4 and {(m["boundary"], m["seed"]) for m in runs} == {(b, s) for b in ("soft", "hard")
                                                                              for s in (0, 1)}
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["1_automobile-seed_0", "1_automobile-seed_1"]
    submitted = json.loads((out / cluster.SUBMITTED_FILE).read_text())
    assert [s["stage"] for s in submitted] == ["pretrain", "runs"] and len(submitted[1]["jobs"]) == 4
    capsys.readouterr()
    assert sweep.main(argv) == 0  # everything finished: nothing is submitted again
    assert "nothing to submit" in capsys.readouterr().out
    assert len(json.loads((out / cluster.SUBMITTED_FILE).read_text())) == 2


FAKE_SBATCH = """#!/usr/bin/env bash
# records its arguments and the submitted script, answers as sbatch does
d="$FAKE_SBATCH_DIR"; n=$(( $(ls "$d" | wc -l) + 1000 ))
{ echo "ARGS: $*"; for a in "$@"; do [ -f "$a" ] && cat "$a"; done; } > "$d/$n.txt"
echo "Submitted batch job $n"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch_calls"
    bin_dir.mkdir()
    calls.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/usr/bin/env bash\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_DIR", str(calls))
    return calls


def scripts(calls: Path) -> list[str]:
    return [p.read_text() for p in sorted(calls.iterdir())]


def test_slurm_submits_two_arrays_the_second_after_the_first(fake_slurm, tmp_path):
    out = tmp_path / "s"
    argv = grid(out, "--executor", "slurm", "--partition", "gpu", "--time-min", "90", "--gpus-per-job", "1",
                "--cpus-per-job", "6", "--mem-gb", "24", "--array-parallelism", "3")
    assert sweep.main(argv) == 0
    first, second = scripts(fake_slurm)
    for text in (first, second):
        for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                     "#SBATCH --cpus-per-task=6", "#SBATCH --mem=24GB"):
            assert line in text
    assert "#SBATCH --array=0-1%2" in first and "--dependency" not in first  # 2 pretrainings
    assert "#SBATCH --array=0-3%3" in second and "#SBATCH --dependency=afterok:1000" in second  # 4 runs after them
    submitted = json.loads((out / cluster.SUBMITTED_FILE).read_text())
    assert [(s["stage"], s["array_id"]) for s in submitted] == [("pretrain", "1000"), ("runs", "1001")]
    commands = [j["command"] for j in submitted[1]["jobs"]]
    assert all(" -tr -tt -ck " in c and "--run-dir" in c for c in commands)
    assert all(j["stdout"].endswith(".out") for j in submitted[1]["jobs"])

    # the scheduler ran the pretrainings and two of the runs: a rerun submits only the missing runs
    planned = sweep.expand_grid(sweep.parse_spec(argv)[0])
    for pt in sweep.unique_pretrains(planned):
        pt.dir.mkdir(parents=True)
        (pt.dir / results.AE_CHECKPOINT).write_bytes(b"x")
        (pt.dir / sweep.PRETRAIN_DONE).write_text("{}")
    for run in (r for r in planned if r.boundary == "soft"):
        run.dir.mkdir(parents=True)
        (run.dir / results.METRICS_FILE).write_text("{}")
    assert sweep.main(argv) == 0
    third = scripts(fake_slurm)[2]
    assert "#SBATCH --array=0-1%2" in third and "--dependency" not in third


def test_cluster_settings_come_from_the_yaml_and_are_checked(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("nu: 0.1\npresets: {cpu: {}}\ncluster: {partition: big, time_min: 30}\n")
    spec, args = sweep.parse_spec(["cifar10", "-dp", str(tmp_path), "--out", str(tmp_path / "o"), "--config",
                                   str(config), "--executor", "slurm", "--time-min", "45"])
    settings = sweep.cluster_settings(spec, args)
    assert (settings.partition, settings.time_min, settings.gpus_per_job) == ("big", 45, 1)  # flag over YAML
    config.write_text("cluster: {gpus: 2}\n")
    with pytest.raises(sweep.UserError, match="unknown 'cluster:' keys gpus"):
        sweep.cluster_settings(spec, args)
    spec, args = sweep.parse_spec(["cifar10", "-dp", str(tmp_path), "--out", str(tmp_path / "o"), "--executor",
                                   "slurm", "--time-min", "0"])
    with pytest.raises(sweep.UserError, match="time_min=0"):
        sweep.cluster_settings(spec, args)


def test_local_jobs_are_pinned_round_robin_to_the_gpus(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "gpu_count", lambda: 2)
    spec, _ = sweep.parse_spec(["cifar10", "--classes", "1", "2", "--seeds", "0", "1", "-dp", str(tmp_path),
                                "--out", str(tmp_path / "o"), "--jobs", "2"])
    seen, running, lock = [], {}, threading.Lock()

    def runner(cmd, log, gpu=None):
        folder = Path(cmd[cmd.index("--run-dir") + 1])
        with lock:
            assert gpu not in running.values()  # never two jobs on one GPU at once
            running[folder] = gpu
            seen.append(gpu)
        time.sleep(0.02)
        if "-ptr" in cmd:
            (folder / results.AE_CHECKPOINT).write_bytes(b"x")
        else:
            (folder / results.METRICS_FILE).write_text(json.dumps({"auc": 0.5, "max_ba": 0.5}))
        with lock:
            running.pop(folder)
        return 0

    result = sweep.execute(spec, sweep.expand_grid(spec), runner, jobs=2, progress=False)
    assert not result.failed and set(seen) == {0, 1} and len(seen) == 4 + 8  # 4 pretrainings, 8 runs
    monkeypatch.setattr(sweep, "gpu_count", lambda: 1)
    calls = []
    spec.out = tmp_path / "o2"
    sweep.execute(spec, sweep.expand_grid(spec), lambda cmd, log, **kw: calls.append(kw) or 1, jobs=2,
                  progress=False)
    assert calls and all(kw == {} for kw in calls)  # one GPU: nothing pinned


def test_video_sweeps_run_end_to_end_without_a_shared_pretraining(tmp_path):
    spec, _ = sweep.parse_spec(["ped2", "--seeds", "0", "1", "--boundary", "soft", "hard", "--layer-sets", "6",
                                "4,5,6", "-dp", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "nu=0.05,0.1"])
    runs = sweep.expand_grid(spec)
    assert len(runs) == 2 * 2 * 2 * 2 and not sweep.unique_pretrains(runs)
    cmd = sweep.run_command(spec, runs[0], resume=False)
    assert cmd[1] == "main_shanghaitech.py" and cmd[2:4] == ["--dataset", "ped2"]
    assert "-ee" in cmd and "-tt" in cmd and "-ck" not in cmd and "-nc" not in cmd
    assert cmd[cmd.index("--nu") + 1] in ("0.05", "0.1") and cmd[cmd.index("-ile") + 1] in ("6", "4")


def test_a_tiny_video_sweep_runs_and_reports(tmp_path, monkeypatch, isolated_cache):
    from tests.video_fixtures import make_authors_shanghaitech
    from tools import report

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = tmp_path / "st"
    make_authors_shanghaitech(root)
    out = tmp_path / "sweep"
    argv = ["shanghaitech", "--seeds", "0", "--boundary", "soft", "hard", "-dp", str(root), "--out", str(out),
            "--jobs", "2", "--no-progress", "--", "--frame-size", "32", "48", "-zl", "32", "-hs", "8", "-bs", "2",
            "--clips-per-epoch", "4", "--centroid-clips", "4", "-e", "1", "-we", "0", "--test-batch-size", "8"]
    assert sweep.main(argv) == 0, [p.read_text()[-1500:] for p in out.rglob(sweep.LOG_FILE)]
    assert {m["boundary"] for m in finished(out)} == {"soft", "hard"} and not (out / "pretrain").exists()
    text, _, _ = report.write_report(out, plots=False)
    assert "shanghaitech: AUC, AP and F1-max" in text
