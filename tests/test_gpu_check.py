"""The GPU check's driver: step list, JSON after every step, failures recorded without stopping (no heavy step runs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from benchmarks import gpu_check
from benchmarks.gpu_check import Context, Step


def _command(code: str) -> Callable[[Context, float], dict[str, Any]]:
    """A step running a tiny real subprocess, so the log and exit-code paths are the real ones."""
    def run(ctx: Context, timeout_s: float) -> dict[str, Any]:
        return gpu_check.run_command([sys.executable, "-c", code], ctx.log("fake"), timeout_s)
    return run


def test_failures_are_recorded_and_later_steps_still_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen_on_disk: list[list[str]] = []

    def check_json_so_far(ctx: Context, timeout_s: float) -> dict[str, Any]:
        seen_on_disk.append(list(json.loads((ctx.out / gpu_check.JSON_NAME).read_text())["steps"]))
        return {"ok": True, "rc": 0}

    def broken(ctx: Context, timeout_s: float) -> dict[str, Any]:
        raise KeyError("auc")

    steps = [
        Step("fails", 30, _command("import sys; print('first line'); print('why it broke'); sys.exit(3)")),
        Step("passes", 30, _command("print('fine')")),
        Step("times_out", 0.5, _command("import time; time.sleep(30)")),
        Step("raises", 30, broken),
        Step("reads_json", 30, check_json_so_far),
    ]
    rc = gpu_check.main(["--out", str(out), "--device", "cpu", "--budget", "60"], steps=steps)
    report = json.loads((out / gpu_check.JSON_NAME).read_text())

    assert rc == 1 and report["ok"] is False
    assert list(report["steps"]) == ["setup", "fails", "passes", "times_out", "raises", "reads_json"]
    assert report["failed"] == ["fails", "times_out", "raises"]
    fails, passes, slow = report["steps"]["fails"], report["steps"]["passes"], report["steps"]["times_out"]
    assert fails["rc"] == 3 and fails["log_tail"][-1] == "why it broke" and fails["seconds"] > 0
    assert passes["rc"] == 0 and passes["ok"]
    assert slow["timed_out"] and slow["rc"] == gpu_check.TIMEOUT_RC and slow["seconds"] < 10
    assert "KeyError" in report["steps"]["raises"]["error"]
    assert seen_on_disk == [["setup", "fails", "passes", "times_out", "raises"]]  # written after every step
    assert not list(out.glob(".*.tmp"))


def test_spent_budget_skips_and_setup_failure_fails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out).mkdir()
    (out / "setup.log").write_text("pip: no matching distribution\n")
    argv = ["--out", str(out), "--budget", "0", "--setup-rc", "1", "--setup-seconds", "2", "--setup-log",
            str(out / "setup.log")]
    assert gpu_check.main(argv, steps=[Step("never", 30, _command("pass"))]) == 1
    report = json.loads((out / gpu_check.JSON_NAME).read_text())
    assert report["failed"] == ["setup", "never"]
    assert report["steps"]["never"]["skipped"]
    assert report["steps"]["setup"]["log_tail"] == ["pip: no matching distribution"]


def test_step_list_and_quick_settings(tmp_path: Path) -> None:
    names = [s.name for s in gpu_check.default_steps(quick=False)]
    assert names == ["environment", "cifar10_soft", "cifar10_soft_resume_complete", "cifar10_soft_kill_resume",
                     "cifar10_hard", "batched", "mvtec_soft", "ped2_soft", "throughput", "throughput_channels_last"]
    full = Context(out=tmp_path, data=tmp_path, python="py", device="cuda", quick=False, deadline=0.0)
    quick = Context(out=tmp_path, data=tmp_path, python="py", device="cpu", quick=True, deadline=0.0)
    assert gpu_check.batched_classes(full) == list("0123456789")
    assert gpu_check.batched_classes(quick) == ["0", "1"]
    for make in (lambda c: gpu_check.cifar10_argv(c, "soft", tmp_path), gpu_check.batched_argv,
                 lambda c: gpu_check.mvtec_argv(c, tmp_path), lambda c: gpu_check.ped2_argv(c, tmp_path)):
        assert "-db" in make(quick) and "-db" not in make(full)
        assert make(full)[make(full).index("--device") + 1] == "cuda"
    assert "--channels-last" in gpu_check.throughput_argv(full, channels_last=True)
    assert gpu_check.main(["--out", str(tmp_path), "--only", "nope"]) == 2
