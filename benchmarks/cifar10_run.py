"""Benchmark: one CIFAR-10 class x one seed, both boundaries, on the shared data.

Pretrains the AE once, then trains and tests MOCCA with the soft and the hard boundary from that
AE. Reports AUC, maxBA, wall time per stage and images/s, beside the paper's Table I value.

    .venv/bin/python -m benchmarks.cifar10_run --normal-class 1 --seed 0 [--preset cpu] [-- <extra flags>]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from main_cifar10 import main as cifar10_main
from utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]
PAPER_TABLE = ROOT / "benchmarks" / "paper_tables" / "table1_cifar10_auc.csv"


def paper_row(normal_class: int) -> dict[str, str]:
    with open(PAPER_TABLE) as fh:
        return next(r for r in csv.DictReader(fh) if r["class_index"] == str(normal_class))


def run(args: argparse.Namespace) -> dict:
    tag = f"cifar10-c{args.normal_class}-s{args.seed}" + (f"-{'-'.join(args.preset)}" if args.preset else "")
    out = Path(args.out) / tag
    common = ["-nc", str(args.normal_class), "-s", str(args.seed), "-dp", args.data_path, "--no-progress",
              *(["--preset", *args.preset] if args.preset else []), *args.extra]
    cifar10_main(["-ptr", "--run-dir", str(out / "pretrain"), "--resume", *common])
    ae = out / "pretrain" / "ae.pt"
    report = {"tag": tag, "runs": {}}
    for boundary in ("soft", "hard"):
        m = cifar10_main(["-tr", "-tt", "-bd", boundary, "-ck", str(ae), "--run-dir", str(out / boundary),
                          "--resume", *common])
        report["runs"][boundary] = m
    with open(out / "pretrain" / "pretrain_log.csv") as fh:
        epochs = list(csv.DictReader(fh))
    n_train = 5000
    pretrain_s = sum(float(r["seconds"]) for r in epochs)  # from the log: a resumed run still counts all epochs
    report["pretrain_s"] = pretrain_s
    report["pretrain_images_per_s"] = n_train * len(epochs) / pretrain_s
    for boundary, m in report["runs"].items():
        with open(out / boundary / "train_log.csv") as fh:
            rows = list(csv.DictReader(fh))
        m["train_epoch_s"] = sum(float(r["seconds"]) for r in rows)
        m["train_images_per_s"] = n_train * len(rows) / m["train_epoch_s"]
        m["test_images_per_s"] = m["n_test"] / m["timings"]["test_s"]
    write_json(out / "benchmark.json", report)
    paper = paper_row(args.normal_class)
    print("\n| class | boundary | AUC | maxBA | paper AUC | pretrain s (img/s) | train s (img/s) | test img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for boundary, m in report["runs"].items():
        p = f"{paper[f'mocca_{boundary}']} ± {paper[f'mocca_{boundary}_std']}"
        print(f"| {args.normal_class} | {boundary} | {m['auc']:.3f} | {m['max_ba']:.3f} | {p} | "
              f"{pretrain_s:.0f} ({report['pretrain_images_per_s']:.0f}) | {m['train_epoch_s']:.0f} "
              f"({m['train_images_per_s']:.0f}) | {m['test_images_per_s']:.0f} |")
    return report


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--normal-class", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", nargs="*", default=[], help="presets of configs/cifar10.yaml (e.g. cpu)")
    p.add_argument("-dp", "--data-path", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("extra", nargs="*", help="extra main_cifar10.py flags, after --")
    return p.parse_args(argv)


if __name__ == "__main__":
    run(parse())
