"""tools.sweep: grid expansion, naming, shared pretraining, skip/resume, failures (fake runner), and one
tiny real sweep on the shared CIFAR-10 data followed by the report."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
import yaml

from tools import report, sweep
from utils import results
from utils.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class FakeRunner:
    """Stands in for the subprocesses: records every command and writes what a real run would write."""

    def __init__(self, fail_if: str | None = None, crash_if: str | None = None):
        self.calls: list[list[str]] = []
        self.fail_if, self.crash_if = fail_if, crash_if
        self.lock = threading.Lock()

    def __call__(self, cmd: list[str], log: Path) -> int:
        with self.lock:
            self.calls.append(cmd)
        joined = " ".join(cmd)
        if self.crash_if and self.crash_if in joined:
            raise OSError("cannot start")
        if self.fail_if and self.fail_if in joined:
            with open(log, "a") as fh:
                fh.write("Traceback...\nRuntimeError: boom\n")
            return 1
        run_dir = Path(cmd[cmd.index("--run-dir") + 1])
        run_dir.mkdir(parents=True, exist_ok=True)
        if "-ptr" in cmd:
            (run_dir / results.AE_CHECKPOINT).write_bytes(b"ae")
        if "-tr" in cmd:
            assert Path(cmd[cmd.index("-ck") + 1]).is_file(), "stage 2 started before its pretraining finished"
            (run_dir / results.MODEL_CHECKPOINT).write_bytes(b"model")
            results.write_metrics(run_dir, {"auc": 0.6, "max_ba": 0.55})
        return 0

    def pretrain_calls(self) -> list[list[str]]:
        return [c for c in self.calls if "-ptr" in c]

    def train_calls(self) -> list[list[str]]:
        return [c for c in self.calls if "-tr" in c]


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def base_argv(out: Path, *more: str) -> list[str]:
    return ["cifar10", "--classes", "1", "5", "--seeds", "0-1", "--boundary", "soft", "hard", "-dp", "/data/cifar",
            "--out", str(out), "--preset", "cpu", "--no-progress", *more]


def test_parsers():
    assert sweep.parse_int_list(["0-2", "4,6", "6"], "--seeds") == [0, 1, 2, 4, 6]
    assert sweep.parse_classes("cifar10", ["all"]) == [str(i) for i in range(10)]
    assert sweep.parse_classes("cifar10", ["dog", "0-1"]) == ["0", "1", "5"]
    assert sweep.parse_classes("mvtec", ["bottle,leather"]) == ["bottle", "leather"]
    assert sweep.parse_layer_set("0,1, 2,3") == (0, 1, 2, 3)
    for bad in (lambda: sweep.parse_int_list(["3-1"], "--seeds"), lambda: sweep.parse_classes("cifar10", ["10"]),
                lambda: sweep.parse_layer_set("a"), lambda: sweep.parse_set(["nu=abc"], "cifar10"),
                lambda: sweep.parse_set(["seed=1,2"], "cifar10"), lambda: sweep.parse_set(["bogus=1"], "cifar10")):
        with pytest.raises(UserError):
            bad()
    parser = sweep.flag_parser("cifar10")
    assert sweep.flag_args("lr_milestones", "50+100", parser) == ["--lr-milestones", "50", "100"]
    assert sweep.flag_args("amp", "true", parser) == ["--amp"] and sweep.flag_args("amp", "false", parser) == []
    assert sweep.flag_args("warm_up_n_epochs", "3", parser) == ["--warm_up_n_epochs", "3"]


def test_class_lists_match_the_project():
    from datasets.cifar10 import CIFAR10_CLASSES

    assert sweep.CIFAR10_CLASSES == CIFAR10_CLASSES
    paper = [r["category"] for r in report.read_paper_table("table3_4_mvtec.csv") if r["category"] != "mean"]
    assert list(sweep.MVTEC_CATEGORIES) == paper


def test_grid_expansion_and_names(tmp_path: Path):
    argv = base_argv(tmp_path / "s", "--layer-sets", "0,1,2,3", "3", "--holistic", "--set", "nu=0.05,0.1")
    spec, _ = sweep.parse_spec(argv)
    runs = sweep.expand_grid(spec)
    assert len(runs) == 2 * 2 * 2 * 3 * 2  # classes x seeds x boundaries x (2 layer sets + holistic) x nu
    assert len({r.dir for r in runs}) == len(runs)
    assert [r.dir for r in sweep.expand_grid(sweep.parse_spec(argv)[0])] == [r.dir for r in runs]  # deterministic
    names = {r.dir.relative_to(spec.out).as_posix() for r in runs}
    assert "runs/1_automobile/soft-ile_0.1.2.3-nu_0.05-seed_0" in names
    assert "runs/5_dog/hard-holistic-nu_0.1-seed_1" in names
    # nu is a stage-2 setting: one pretraining per class and seed, shared by 12 runs each
    pretrains = sweep.unique_pretrains(runs)
    assert sorted(p.dir.name for p in pretrains) == ["1_automobile-seed_0", "1_automobile-seed_1", "5_dog-seed_0",
                                                     "5_dog-seed_1"]
    # a stage-1 setting (code length) gets its own pretraining, named by a hash of the AE settings
    spec2, _ = sweep.parse_spec(base_argv(tmp_path / "s", "--set", "code_length=64,128", "nu=0.1"))
    pt2 = sweep.unique_pretrains(sweep.expand_grid(spec2))
    assert len(pt2) == 8 and len({p.dir for p in pt2}) == 8
    assert all(p.dir.name.startswith(("1_automobile-seed_", "5_dog-seed_")) and len(p.dir.name.split("-")) == 3
               for p in pt2)
    # commands: the holistic run uses the preset, the others -ile; all start from the shared ae.pt
    hol = next(r for r in runs if r.holistic)
    cmd = sweep.run_command(spec, hol, resume=False)
    assert cmd[1] == "main_cifar10.py" and cmd[cmd.index("--preset") + 1:cmd.index("--preset") + 3] == ["cpu",
                                                                                                     "holistic"]
    assert "-ile" not in cmd and flag(cmd, "-ck") == str(hol.pretrain.dir / "ae.pt") and "--resume" not in cmd
    ile = next(r for r in runs if r.layers == (3,))
    assert flag(sweep.run_command(spec, ile, resume=True), "-ile") == "3"
    assert "--resume" in sweep.run_command(spec, ile, resume=True)


def test_sweep_shares_pretraining_then_skips_and_resumes(tmp_path: Path, capsys):
    out = tmp_path / "s"
    argv = base_argv(out, "--layer-sets", "0,1,2,3", "3", "--jobs", "2", "--", "-ae", "1", "-db")
    fake = FakeRunner()
    assert sweep.main(argv, runner=fake) == 0
    assert len(fake.pretrain_calls()) == 4  # 2 classes x 2 seeds, not once per run
    assert len(fake.train_calls()) == 16
    for cmd in fake.pretrain_calls():
        assert "-tr" not in cmd and "-tt" not in cmd and "-bd" not in cmd and "--resume" not in cmd
        assert (Path(flag(cmd, "--run-dir")) / sweep.PRETRAIN_DONE).is_file()
    for cmd in fake.train_calls():
        assert {"-tr", "-tt", "-db"} <= set(cmd) and flag(cmd, "-ae") == "1" and "-ptr" not in cmd
        assert Path(flag(cmd, "-ck")).parent.parent == out / "pretrain"
    text = capsys.readouterr().out
    assert "16 finished now, 0 already finished, 0 failed" in text
    doc = yaml.safe_load((out / "sweep.yaml").read_text())
    assert doc["grid"]["seeds"] == [0, 1] and doc["fixed"]["passthrough"] == ["-ae", "1", "-db"]
    assert doc["n_runs"] == 16 and doc["n_pretrain"] == 4

    again = FakeRunner()
    assert sweep.main(argv, runner=again) == 0
    assert again.calls == []  # everything finished: nothing runs

    # a killed run (model.pt but no metrics.json) is resumed; its finished pretraining is reused
    victim = out / "runs" / "5_dog" / "hard-ile_3-seed_1"
    (victim / results.METRICS_FILE).unlink()
    # a killed pretraining (ae.pt, no marker) is resumed before the run that needs it
    other = out / "runs" / "1_automobile" / "soft-ile_0.1.2.3-seed_0"
    (other / results.METRICS_FILE).unlink()
    (other / results.MODEL_CHECKPOINT).unlink()
    (out / "pretrain" / "1_automobile-seed_0" / sweep.PRETRAIN_DONE).unlink()
    third = FakeRunner()
    assert sweep.main(argv, runner=third) == 0
    assert len(third.calls) == 3
    assert [flag(c, "--run-dir") for c in third.pretrain_calls()] == [str(out / "pretrain" / "1_automobile-seed_0")]
    assert "--resume" in third.pretrain_calls()[0]
    assert {flag(c, "--run-dir") for c in third.train_calls()} == {str(victim), str(other)}
    assert all("--resume" in c for c in third.train_calls())  # both folders were left by earlier attempts
    order = [flag(c, "--run-dir") for c in third.calls]
    assert order.index(str(out / "pretrain" / "1_automobile-seed_0")) < order.index(str(other))


def test_fresh_run_has_no_resume_and_dry_run_writes_nothing(tmp_path: Path, capsys):
    out = tmp_path / "s"
    fake = FakeRunner()
    assert sweep.main(base_argv(out, "--dry-run"), runner=fake) == 0
    printed = capsys.readouterr().out
    assert fake.calls == [] and not out.exists()
    assert "# 8 runs, 4 pretrainings (4 still needed)" in printed and printed.count("[new]") == 8
    assert sweep.main(base_argv(out), runner=fake) == 0
    assert len(fake.calls) == 12 and not any("--resume" in c for c in fake.calls)


def test_failures_are_recorded_and_do_not_stop_the_sweep(tmp_path: Path, capsys):
    out = tmp_path / "s"
    fake = FakeRunner(fail_if="-nc 5 ", crash_if="1_automobile/hard")
    assert sweep.main(base_argv(out, "--seeds", "0"), runner=fake) == 1
    text = capsys.readouterr().out
    # class 5: pretraining failed -> its 2 runs fail without starting; class 1: hard crashed, soft finished
    assert len(fake.pretrain_calls()) == 2 and len(fake.train_calls()) == 2
    assert "1 finished now, 0 already finished, 3 failed" in text and "pretrainings: 1 run, 0 reused, 1 failed" in text
    assert "RuntimeError: boom" in text and "OSError: cannot start" in text
    assert (out / "runs" / "1_automobile" / "soft-ile_default-seed_0" / results.METRICS_FILE).is_file()


def test_mvtec_by_name_and_guards(tmp_path: Path):
    fake = FakeRunner()
    argv = ["mvtec", "--classes", "bottle", "--boundary", "soft", "-dp", "/data/mvtec", "--out", str(tmp_path / "m"),
            "--holistic", "--no-progress"]
    assert sweep.main(argv, runner=fake) == 0  # main_mvtec.py need not exist for a fake runner
    assert {c[1] for c in fake.calls} == {"main_mvtec.py"} and all(flag(c, "-nc") == "bottle" for c in fake.calls)
    assert len(fake.pretrain_calls()) == 1 and len(fake.train_calls()) == 2
    with pytest.raises(UserError, match="other shared settings"):  # same --out, other presets: refused
        sweep.main(argv + ["--preset", "cpu"], runner=FakeRunner())
    with pytest.raises(UserError, match="sets itself"):
        sweep.main(base_argv(tmp_path / "x", "--", "-s", "3"), runner=FakeRunner())


@pytest.mark.skipif(not (SHARED_DATA / "cifar10").exists(), reason="shared CIFAR-10 data not available")
def test_tiny_real_sweep_and_report(tmp_path: Path, monkeypatch):
    """1 class x 1 seed x 2 boundaries on the real data, 5 batches per loop, then the report on it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two jobs on two shared cores: no oversubscription
    out = tmp_path / "tiny"
    # -bs 128: the -db test subset (first 5 batches = 640 images) still holds normal (class 1) images
    argv = ["cifar10", "--classes", "1", "--seeds", "0", "--boundary", "soft", "hard", "-dp",
            str(SHARED_DATA / "cifar10"), "--out", str(out), "--preset", "cpu", "--jobs", "2", "--no-progress",
            "--", "-ae", "1", "-e", "1", "-db", "-bs", "128"]
    assert sweep.main(argv) == 0, [p.read_text()[-2000:] for p in out.rglob(sweep.LOG_FILE)]
    assert [p.name for p in (out / "pretrain").iterdir()] == ["1_automobile-seed_0"]
    for boundary in ("soft", "hard"):
        run = out / "runs" / "1_automobile" / f"{boundary}-ile_default-seed_0"
        metrics = json.loads((run / results.METRICS_FILE).read_text())
        assert metrics["boundary"] == boundary and metrics["normal_class"] == 1 and 0.0 <= metrics["auc"] <= 1.0
        cfg = yaml.safe_load((run / results.CONFIG_FILE).read_text())
        assert cfg["model_ckp"] == str(out / "pretrain" / "1_automobile-seed_0" / "ae.pt") and cfg["debug"]
        assert not (run / results.AE_CHECKPOINT).exists()  # stage 1 was not repeated in the run folder
    text, tables, figures = report.write_report(out)
    assert "| 1 automobile | 0." in text
    names = {p.name for p, _ in figures}
    assert names >= {"roc-cifar10-1_automobile.png", "train-cifar10-1_automobile-soft-0_1_2_3.png",
                     "hist-cifar10-1_automobile-soft-0_1_2_3.png", "examples-cifar10-1_automobile-soft-0_1_2_3.png",
                     "tsne-cifar10-1_automobile-soft-0_1_2_3.png"}  # drawn from the runs' figures.npz
    assert "| 1_automobile | soft | 0,1,2,3 |" in text  # the AP / F1-max table
    for p, _ in figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep.main(argv, runner=FakeRunner()) == 0  # rerun: all finished, nothing started


def test_stop_children_terminates_running_jobs(tmp_path: Path):
    """Ctrl-C / SIGTERM of the sweep must not leave its jobs running (they may not get the signal)."""
    import sys
    import time

    status: list[int] = []
    job = threading.Thread(target=lambda: status.append(sweep.subprocess_runner(
        [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log")))
    job.start()
    deadline = time.monotonic() + 20
    while not sweep._LIVE and time.monotonic() < deadline:
        time.sleep(0.05)
    sweep.stop_children()
    job.join(timeout=20)
    assert not job.is_alive() and status and status[0] != 0


def test_batched_sweep_groups_all_classes_and_seeds_per_boundary(tmp_path):
    spec, _ = sweep.parse_spec(["cifar10", "--classes", "0", "1", "--seeds", "0-2", "--boundary", "soft", "hard",
                                "--holistic", "-dp", str(tmp_path), "--out", str(tmp_path / "o"), "--batched"])
    groups = sweep.batched_groups(spec, sweep.expand_grid(spec))
    assert len(groups) == 4  # 2 boundaries x (MOCCA, holistic)
    for out, cmd in groups:
        assert cmd[1].endswith("main_cifar10.py") and "-nc" not in cmd and "-s" not in cmd
        assert cmd[cmd.index("--classes") + 1: cmd.index("--seeds")] == ["0", "1"]
        assert cmd[cmd.index("--seeds") + 1: cmd.index("-bd")] == ["0", "1", "2"]
    calls = []
    assert sweep.execute_batched(spec, sweep.expand_grid(spec), lambda c, log: calls.append(c) or 0) == 0
    assert len(calls) == 4 and sweep.execute_batched(spec, sweep.expand_grid(spec), lambda c, log: 1 / 0) == 0


def test_cifar10_sweeps_run_batched_by_default_only_on_cuda(tmp_path, monkeypatch):
    def spec(*extra):
        return sweep.parse_spec(["cifar10", "--classes", "0", "-dp", str(tmp_path), "--out", str(tmp_path / "o"),
                                 *extra])

    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        s, args = spec()
        assert sweep.wants_batched(s, args.batched) is cuda
        s, args = spec("--", "--device", "cpu")
        assert sweep.wants_batched(s, args.batched) is False
        s, args = spec("--sequential")
        assert sweep.wants_batched(s, args.batched) is False
        s, args = spec("--batched")
        assert sweep.wants_batched(s, args.batched) is True
    mvtec, args = sweep.parse_spec(["mvtec", "--classes", "bottle", "-dp", str(tmp_path), "--out", str(tmp_path)])
    assert sweep.wants_batched(mvtec, args.batched) is False  # the grouped model is the CIFAR LeNet
