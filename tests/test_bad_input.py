"""Bad input on the command line: one `error:` line, exit status 2, and no half-made run folder.

Every row is a case a new user hits (a wrong number, a wrong path, a broken file); each asserts the
exit code, that stderr is exactly one line starting with ``error:``, what it names, and that the
output folder holds nothing afterwards (errors come before any run folder is made, or the folder
is removed again). The cases that need a finished run (reruns, claims, test-only runs, disk full)
follow the table.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import main_cifar10
import main_mvtec
import main_shanghaitech
from tests.cifar_fixtures import make_cifar_folder
from tests.conftest import expect_user_error
from tests.mvtec_fixtures import make_mvtec_category
from tests.video_fixtures import make_authors_shanghaitech
from tools import report, sweep
from utils import checkpoint, io, results
from utils.errors import UserError

CIFAR = ["-ptr", "-tr", "-tt", "--preset", "cpu", "-ae", "1", "-e", "1", "-we", "0", "-bs", "8", "-zl", "16",
         "--no-progress"]
MVTEC = ["-ptr", "-tr", "-tt", "-nc", "bottle", "--preset", "cpu", "-ae", "1", "-e", "1", "-we", "0", "-bs", "4",
         "--samples-per-epoch", "8", "-zl", "16", "--image-size", "64", "--no-progress"]
VIDEO = ["-ee", "-tt", "--frame-size", "32", "48", "-zl", "32", "-hs", "8", "-bs", "2", "--clips-per-epoch", "4",
         "--centroid-clips", "4", "-e", "1", "-we", "0", "--test-batch-size", "8", "--no-progress"]


@pytest.fixture(autouse=True)
def _cache(isolated_cache):
    """Every test here decodes into the session's temp cache."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    make_mvtec_category(root / "mvtec", "bottle", n_train=3, n_good=1, n_defect=1, size=64)
    make_authors_shanghaitech(root / "st")
    return {"cifar": make_cifar_folder(root / "cifar", n_train=12, n_test=2), "mvtec": root / "mvtec",
            "video": root / "st"}


def a_file(tmp_path: Path) -> str:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return str(path)


# (id, script, flags after the base flags, what the one line must name); the base flags are the
# script's tiny settings, the data and --output_path <tmp>/out
CASES = [
    ("cifar-bs-0", "cifar", ["-bs", "0"], "-bs 0: must be > 0"),
    ("cifar-bs-negative", "cifar", ["-bs", "-4"], "-bs -4: must be > 0"),
    ("cifar-lr-negative", "cifar", ["-lr", "-1"], "-lr -1.0: must be > 0"),
    ("cifar-alr-zero", "cifar", ["-alr", "0"], "-alr 0.0: must be > 0"),
    ("cifar-wd-negative", "cifar", ["-wd", "-0.001"], "-wd -0.001: must be >= 0"),
    ("cifar-unknown-flag", "cifar", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("cifar-nu-0", "cifar", ["-nu", "0"], "-nu 0.0: must be in (0, 1]"),
    ("cifar-nu-negative", "cifar", ["-nu", "-0.1"], "-nu -0.1: must be in (0, 1]"),
    ("cifar-nu-above-1", "cifar", ["-nu", "1.5"], "-nu 1.5: must be in (0, 1]"),
    ("cifar-ae-0", "cifar", ["-ae", "0"], "-ae 0: pretraining (-ptr) needs at least one epoch"),
    ("cifar-e-0", "cifar", ["-e", "0"], "-e 0: training (-tr/-ee) needs at least one epoch"),
    ("cifar-we-negative", "cifar", ["-we", "-3"], "-we -3: must be >= 0"),
    ("cifar-milestone-0", "cifar", ["-ml", "0"], "-ml [0]: must be a list of integers (epochs >= 1)"),
    ("cifar-seed", "cifar", ["-s", "-5"], "-s -5: must be >= 0, or -1"),
    ("cifar-zl", "cifar", ["-zl", "20"], "-zl 20: the CIFAR-10 code length must be a positive multiple of 16"),
    ("cifar-class", "cifar", ["-nc", "12"], "normal class must be an index 0-9"),
    ("cifar-layer", "cifar", ["-ile", "9"], "-ile 9"),
    ("cifar-out-is-file", "cifar", ["--output_path", "{file}"], "is a file, not a folder"),
    ("cifar-out-below-file", "cifar", ["--output_path", "{file}/sub"], "is a file, not a folder"),
    ("cifar-tr-without-ck", "cifar-tr", [], "-tr without -ptr needs -ck"),
    ("cifar-tt-missing-ck", "cifar-tt", ["-ck", "{tmp}/none.pt"], "none.pt not found"),
    ("cifar-missing-data", "cifar", ["-dp", "{tmp}/nowhere"], "nowhere"),
    ("cifar-bad-yaml-value", "cifar", ["--config", "{yaml:learning_rate: fast\npresets: {cpu: {}}}"],
     "-lr 'fast': must be a number > 0"),
    ("mvtec-bs-0", "mvtec", ["-bs", "0"], "-bs 0: must be > 0"),
    ("mvtec-zl-0", "mvtec", ["-zl", "0"], "-zl 0: must be > 0"),
    ("mvtec-we-negative", "mvtec", ["-we", "-3"], "-we -3: must be >= 0"),
    ("mvtec-image-size-0", "mvtec", ["--image-size", "0"], "--image-size 0: must be > 0"),
    ("mvtec-image-size-odd", "mvtec", ["--image-size", "36"], "input size 36 is not supported"),
    ("mvtec-samples-negative", "mvtec", ["--samples-per-epoch", "-5"], "--samples-per-epoch -5: must be >= 0"),
    ("mvtec-category", "mvtec", ["-nc", "no_such_category"], "no_such_category"),
    ("mvtec-rotation-range", "mvtec", ["--rotation-range", "10", "-10"], "--rotation-range"),
    ("video-bs-0", "video", ["-bs", "0"], "-bs 0: must be > 0"),
    ("video-zl-0", "video", ["-zl", "0"], "-zl 0: must be > 0"),
    ("video-test-bs-0", "video", ["--test-batch-size", "0"], "--test-batch-size 0: must be > 0"),
    ("video-dropout", "video", ["-drp", "1.0"], "-drp 1.0: must be in [0, 1)"),
    ("video-frame-size", "video", ["--frame-size", "0", "48"], "--frame-size [0, 48]"),
    ("video-ptr", "video", ["-ptr"], "use -ee (end to end) and -tt"),
    ("video-missing-labels", "video", ["{no-labels}"], "test_frame_mask"),
    ("video-short-test-clip", "video", ["-cl", "18"], "fewer than one clip of 18"),
]
SCRIPTS = {"cifar": main_cifar10.main, "mvtec": main_mvtec.main, "video": main_shanghaitech.main}
BASES = {"cifar": CIFAR, "mvtec": MVTEC, "video": VIDEO,
         "cifar-tr": CIFAR[1:], "cifar-tt": CIFAR[2:]}  # without -ptr; with -tt only


def expand(flag: str, tmp_path: Path, data_root: Path) -> list[str]:
    if flag == "{no-labels}":  # the test stage's labels are missing: found before training starts
        shutil.rmtree(data_root / "testing" / "test_frame_mask")
        return []
    if flag.startswith("{yaml:"):
        path = tmp_path / "bad.yaml"
        path.write_text(flag[len("{yaml:"):-1] + "\n")
        return [str(path)]
    return [flag.replace("{file}", a_file(tmp_path)).replace("{tmp}", str(tmp_path))]


@pytest.mark.parametrize("script, extra, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_flag_is_one_line_and_leaves_no_run_folder(script, extra, expected, data, tmp_path, capsys):
    dataset = script.split("-")[0]
    root = data[dataset]
    if dataset == "video":  # some rows change the data
        root = Path(shutil.copytree(root, tmp_path / "st"))
    out = tmp_path / "out"
    flags = [f for e in extra for f in expand(e, tmp_path, root)]
    argv = ["-dp", str(root), *BASES[script], "--output_path", str(out), *flags]
    line = expect_user_error(SCRIPTS[dataset], capsys, argv)
    assert expected in line
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def test_unwritable_cache_is_one_line(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOCCA_CACHE", a_file(tmp_path))
    line = expect_user_error(main_cifar10.main, capsys, ["-dp", str(data["cifar"]), *CIFAR,
                                                          "--output_path", str(tmp_path / "out")])
    assert "MOCCA_CACHE" in line and "is a file" in line


# ------------------------------------------------------------------------------------------------
# broken image files
# ------------------------------------------------------------------------------------------------

def test_truncation_is_seen_in_the_bytes(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for suffix in (".jpg", ".png"):
        path = tmp_path / f"x{suffix}"
        cv2.imwrite(str(path), image)
        data = path.read_bytes()
        assert io.truncation(data, suffix) is None
        assert io.truncation(data + b"\x00\x00", suffix) is None  # trailing padding is fine
        assert io.truncation(data[: len(data) * 2 // 3], suffix) is not None
        path.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(ValueError, match=f"x\\{suffix} is truncated"):
            io.read_image(path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        io.read_image(tmp_path / "empty.png")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_cifar_image_is_named(tmp_path, capsys, suffix):
    root = make_cifar_folder(tmp_path / "cifar", n_train=4, n_test=1)
    victim = next((root / "train" / "automobile").iterdir())
    image = cv2.imread(str(victim))
    victim.unlink()
    cut = victim.with_suffix(suffix)
    cv2.imwrite(str(cut), image)
    cut.write_bytes(cut.read_bytes()[:-40])
    line = expect_user_error(main_cifar10.main, capsys, ["-dp", str(root), "-nc", "1", *CIFAR,
                                                          "--output_path", str(tmp_path / "out")])
    assert cut.name in line and "truncated" in line


def test_truncated_video_frame_is_named(data, tmp_path, capsys):
    root = Path(shutil.copytree(data["video"], tmp_path / "st"))
    frame = sorted((root / "testing" / "nobackground_frames_resized" / "01_0014").iterdir())[-1]
    frame.write_bytes(frame.read_bytes()[:-100])
    line = expect_user_error(main_shanghaitech.main, capsys, ["-dp", str(root), *VIDEO, "--output_path",
                                                               str(tmp_path / "out")])
    assert frame.name in line and "truncated" in line
    assert not (tmp_path / "out").exists()  # found before training


def test_constant_cifar_image_names_the_cause(tmp_path, capsys):
    root = make_cifar_folder(tmp_path / "cifar", n_train=4, n_test=1)
    victim = next((root / "train" / "automobile").iterdir())
    cv2.imwrite(str(victim), np.full((32, 32, 3), 128, np.uint8))
    line = expect_user_error(main_cifar10.main, capsys, ["-dp", str(root), "-nc", "1", *CIFAR,
                                                          "--output_path", str(tmp_path / "out")])
    assert "constant" in line and "learning rate" not in line


@pytest.mark.parametrize("broken", ["wrong size", "not an image"])
def test_bad_mvtec_mask_is_named(tmp_path, capsys, broken):
    root = tmp_path / "mvtec"
    make_mvtec_category(root, "bottle", n_train=3, n_good=1, n_defect=1, size=64)
    mask = next((root / "bottle" / "ground_truth" / "crack").iterdir())
    if broken == "wrong size":
        cv2.imwrite(str(mask), np.zeros((32, 32), np.uint8))
    else:
        mask.write_bytes(b"no image here")
    line = expect_user_error(main_mvtec.main, capsys, ["-dp", str(root), *MVTEC, "--output_path", str(tmp_path / "o")])
    assert mask.name in line and ("32x32" in line if broken == "wrong size" else "cannot decode" in line)


# ------------------------------------------------------------------------------------------------
# reruns, two writers, test-only runs, disk full
# ------------------------------------------------------------------------------------------------

def test_failed_rerun_never_pairs_a_new_config_with_old_metrics(data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    argv = ["-dp", str(data["cifar"]), "-nc", "1", *CIFAR, "--run-dir", str(run)]
    main_cifar10.main(argv)
    assert (run / "metrics.json").is_file()
    from trainers import mocca

    def broken(*args, **kwargs):
        raise ValueError("stopped on purpose")

    monkeypatch.setattr(mocca, "compute_centroids", broken)  # the rerun fails in stage 2
    expect_user_error(main_cifar10.main, capsys, [*argv, "-nu", "0.2"])
    assert yaml.safe_load((run / "config.yaml").read_text())["nu"] == 0.2
    assert not (run / "metrics.json").exists() and not (run / "scores.csv").exists()  # not counted as finished
    assert not (run / ".claim").exists()


def test_a_second_writer_is_refused_and_a_stale_claim_is_taken_over(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".claim").write_text(json.dumps({"host": "elsewhere", "pid": 4242, "since": "2026-12-01 10:00:00"}))
    argv = ["-dp", str(data["cifar"]), "-nc", "1", *CIFAR, "--run-dir", str(run)]
    line = expect_user_error(main_cifar10.main, capsys, argv)
    assert "being written by another run (pid 4242 on elsewhere" in line
    assert not (run / "config.yaml").exists()
    import socket

    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    (run / ".claim").write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "since": "?"}))
    assert main_cifar10.main(argv)["auc"] >= 0  # the killed holder's claim is taken over
    assert not (run / ".claim").exists()


def test_claim_is_exclusive(tmp_path):
    first = results.claim(tmp_path)
    with pytest.raises(ValueError, match=f"pid {os.getpid()}"):
        results.claim(tmp_path)
    first.unlink()
    results.claim(tmp_path).unlink()


def test_test_only_run_takes_the_checkpoints_settings(data, tmp_path, capsys):
    out = tmp_path / "out"
    trained = main_cifar10.main(["-dp", str(data["cifar"]), "-nc", "1", *CIFAR, "-bd", "hard", "-ile", "3",
                                 "-s", "2", "--output_path", str(out)])
    (train_dir,) = (out / "cifar10" / "1_automobile").iterdir()
    model = train_dir / "model.pt"
    test_only = ["-dp", str(data["cifar"]), "-tt", "-ck", str(model), "--preset", "cpu", "--no-progress",
                 "--output_path", str(tmp_path / "tested")]
    got = main_cifar10.main(test_only)  # soft-looking defaults: the checkpoint's settings win
    assert (got["boundary"], got["layers"], got["seed"]) == ("hard", [3], 2) and got["auc"] == trained["auc"]
    (tested_dir,) = (tmp_path / "tested" / "cifar10" / "1_automobile").iterdir()
    assert tested_dir.name == train_dir.name  # named from the checkpoint's settings
    saved = yaml.safe_load((tested_dir / "config.yaml").read_text())
    assert saved["boundary"] == "hard" and saved["idx_list_enc"] == [3]
    line = expect_user_error(main_cifar10.main, capsys, [*test_only, "-bd", "soft", "-nu", "0.2"])
    assert "-bd 'soft' (trained with 'hard')" in line and "-nu 0.2 (trained with 0.1)" in line

    moved = tmp_path / "moved" / "model.pt"  # without its config.yaml: the checkpoint's arch decides
    moved.parent.mkdir()
    shutil.copy(model, moved)
    got = main_cifar10.main([*test_only[:4], str(moved), *test_only[5:]])
    assert (got["boundary"], got["layers"]) == ("hard", [3])


def test_video_test_only_run_takes_the_checkpoints_sizes(data, tmp_path, capsys):
    main_shanghaitech.main(["-dp", str(data["video"]), *VIDEO, "-zl", "16", "--run-dir", str(tmp_path / "a")])
    got = main_shanghaitech.main(["-dp", str(data["video"]), "-tt", "-ck", str(tmp_path / "a" / "model.pt"),
                                  "--no-progress", "--output_path", str(tmp_path / "t")])
    assert got["input_shape"][1:] == [16, 32, 48]
    (folder,) = (tmp_path / "t" / "shanghaitech" / "video").iterdir()
    assert "zl_16" in folder.name
    line = expect_user_error(main_shanghaitech.main, capsys, [
        "-dp", str(data["video"]), "-tt", "-ck", str(tmp_path / "a" / "model.pt"), "-zl", "64",
        "--output_path", str(tmp_path / "t")])
    assert "-zl 64 (trained with 16)" in line


def test_disk_full_while_writing_a_checkpoint(data, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / ".ae.pt.tmp"))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    line = expect_user_error(main_cifar10.main, capsys, ["-dp", str(data["cifar"]), "-nc", "1", *CIFAR,
                                                          "--run-dir", str(tmp_path / "run")])
    assert line.startswith("error: no space left on the device") and "--resume" in line
    assert not (tmp_path / "run").exists()  # nothing complete was written: no half-made folder


# ------------------------------------------------------------------------------------------------
# the applications
# ------------------------------------------------------------------------------------------------

def test_sweep_and_report_bad_paths(data, tmp_path, capsys):
    base = ["cifar10", "--classes", "1", "--seeds", "0", "-dp", str(data["cifar"]), "--preset", "cpu"]
    with pytest.raises(UserError, match="--out .* is a file"):  # sweep.main's CLI wrapper prints it in one line
        sweep.main([*base, "--out", a_file(tmp_path)])
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.yaml").write_text("fixed: [unclosed\n")
    with pytest.raises(UserError, match="sweep.yaml is not valid YAML"):
        sweep.main([*base, "--out", str(tmp_path / "sw")])
    assert "is not a folder" in expect_user_error(report.main, capsys, [str(tmp_path / "nowhere")])
    line = expect_user_error(report.main, capsys, [str(tmp_path / "sw"), "--out", a_file(tmp_path)])
    assert "is a file" in line


def test_sigterm_releases_the_run_folders_claim(data, tmp_path):
    """A scheduler's SIGTERM ends a run like Ctrl-C: the claim goes, so a resubmitted job can --resume."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "main_cifar10.py", "-dp", str(data["cifar"]), "-nc", "1", "-ptr", "-tr", "-tt",
           "--preset", "cpu", "-ae", "200", "-e", "1", "-bs", "8", "-zl", "16", "--no-progress", "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not (run / results.AE_CHECKPOINT).is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (run / ".claim").is_file()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130 and "--resume" in proc.stderr.read()
    assert not (run / ".claim").exists() and (run / results.AE_CHECKPOINT).is_file()
