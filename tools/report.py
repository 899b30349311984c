"""Tables (Markdown + CSV) and figures from finished runs, beside the paper's published numbers.

    python -m tools.report results/table1            # writes results/table1/report/
    python -m tools.report output --out /tmp/rep --no-plots

Every ``metrics.json`` below the folder is one finished run. Runs are grouped by (dataset, class,
boundary, layer set, holistic or not, and every other hyperparameter whose value differs between
the runs of that dataset, read from each run's config.yaml); a cell is the mean +- std over seeds.

Statistics: repeated runs of the same seed are averaged first, then mean and *sample* standard
deviation (ddof=1) over seeds; a cell with one seed has no std. The paper does not say which std it
quotes. The "mean" row of Table I averages the class means; its std is the ddof=1 std over seeds of
the per-seed average over classes (only seeds present for every class count).

The paper's values are read from benchmarks/paper_tables/*.csv (transcribed from the paper).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import yaml

from utils import cli, results
from utils.cli import PROJECT_ROOT, check_writable
from utils.errors import UserError, exit_on_user_error
from utils.io import write_text

PAPER_DIR = PROJECT_ROOT / "benchmarks" / "paper_tables"
DDOF = 1
OUTSIDE_MARK = "*"  # ours outside the paper's mean +- 2 std
MOCCA_LAYERS = {"cifar10": (0, 1, 2, 3)}  # CIFAR-10 Table I: all four LeNet layers
HOLISTIC_LAYERS = {"cifar10": (3,)}  # the last layer only (runs without the 'holistic' preset count too)
# config keys that never define a group: bookkeeping, paths, speed switches, or keys grouped on their own
IGNORED_KEYS = frozenset({
    "seed", "run_dir", "model_ckp", "output_path", "pretrain", "train", "test", "resume", "no_progress", "device",
    "data_path", "config_file", "presets", "idx_list_enc", "boundary", "normal_class", "n_workers", "download",
    "channels_last", "compile", "train_best_conf",
})


@dataclass
class Run:
    """One finished run folder."""

    dir: Path
    dataset: str
    cls: str
    class_index: int | None
    boundary: str
    layers: tuple[int, ...]  # sorted: the order given with -ile does not change the score
    holistic: bool
    seed: int
    metrics: dict[str, Any]
    config: dict[str, Any]
    extras: tuple[tuple[str, str], ...] = ()

    def value(self, metric: str) -> float:
        """The metric, or NaN where this run does not report it."""
        return float(self.metrics.get(metric, math.nan))

    @property
    def layers_label(self) -> str:
        text = ",".join(map(str, self.layers))
        return f"holistic ({text})" if self.holistic else text


GroupKey = tuple[str, str, str, tuple[int, ...], bool, tuple[tuple[str, str], ...]]


def group_key(run: Run) -> GroupKey:
    return run.dataset, run.cls, run.boundary, run.layers, run.holistic, run.extras


@dataclass
class Table:
    """One table, as Markdown and as CSV."""

    name: str  # file stem
    title: str
    md_header: list[str]
    md_rows: list[list[str]] = field(default_factory=list)
    csv_header: list[str] = field(default_factory=list)
    csv_rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.md_header) + " |",
                 "|" + "|".join("---" for _ in self.md_header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.md_rows]
        return "\n".join(lines + [""] + [f"{n}  " for n in self.notes]) + "\n"

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.csv_header)
        writer.writerows([["" if isinstance(v, float) and math.isnan(v) else v for v in row] for row in self.csv_rows])
        return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# loading and statistics
# ------------------------------------------------------------------------------------------------

def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) or "none"
    return str(value)


def load_runs(folder: Path, skip: Path | None = None) -> list[Run]:
    """Every finished run below ``folder`` (recursively); unreadable ones are reported and left out."""
    runs: list[Run] = []
    for path in sorted(Path(folder).rglob(results.METRICS_FILE)):
        if skip is not None and skip in path.parents:
            continue
        try:
            metrics = flatten_metrics(json.loads(path.read_text()))
            cfg_path = path.parent / results.CONFIG_FILE
            config = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.is_file() else {}
            dataset = str(metrics["dataset"])
            layers = tuple(sorted(int(j) for j in metrics["layers"]))
            index = metrics.get("normal_class")
            runs.append(Run(
                dir=path.parent, dataset=dataset, cls=str(metrics["class"]),
                class_index=None if index is None else int(index), boundary=str(metrics["boundary"]), layers=layers,
                holistic="holistic" in (config.get("presets") or []) or layers == HOLISTIC_LAYERS.get(dataset),
                seed=int(metrics.get("seed", config.get("seed", 0))), metrics=metrics, config=config))
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
            print(f"warning: skipping {path}: {type(err).__name__}: {err}", file=sys.stderr)
    _assign_extras(runs)
    return runs


GROUP_AUC_KEYS = ("per_defect", "per_class")  # metrics.json: {group: AUC of that group vs the normal data}


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Nested metrics as flat keys the tables read: pixel_auroc, pro; auc_defect_<type>, auc_class_<c>."""
    out = dict(metrics)
    local = metrics.get("localisation")
    if isinstance(local, dict):
        out.update(pixel_auroc=local.get("pixel_auroc"), pro=local.get("pro"))
    for key in GROUP_AUC_KEYS:
        for group, auc in (metrics.get(key) or {}).items():
            out[f"auc_{key[4:]}_{group}"] = auc
    return {k: v for k, v in out.items() if v is not None}


def _assign_extras(runs: Sequence[Run]) -> None:
    """Hyperparameters that differ between runs of one dataset become part of every group key."""
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_dataset[r.dataset].append(r)
    for rs in by_dataset.values():
        keys = sorted(set().union(*(r.config for r in rs)) - IGNORED_KEYS)
        varying = [k for k in keys
                   if len({json.dumps(r.config.get(k), sort_keys=True, default=str) for r in rs}) > 1]
        for r in rs:
            r.extras = tuple((k, _value_text(r.config.get(k))) for k in varying)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1); std is NaN for a single value."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=DDOF)) if arr.size > 1 else math.nan


def per_seed(runs: Iterable[Run], metric: str) -> dict[int, float]:
    """Metric per seed (repeats of one seed averaged)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        if metric in r.metrics:  # e.g. runs written before a metric existed
            by_seed[r.seed].append(r.value(metric))
    return {s: float(np.mean(v)) for s, v in sorted(by_seed.items())}


@dataclass
class Stat:
    mean: float = math.nan
    std: float = math.nan
    n: int = 0  # seeds (cells) or classes (mean rows)


def cell_stat(runs: Sequence[Run], metric: str) -> Stat:
    values = list(per_seed(runs, metric).values())
    return Stat(*mean_std(values), len(values)) if values else Stat()


def mean_over_classes(cells: Sequence[Sequence[Run]], metric: str) -> Stat:
    """Mean of class means; std over seeds of the per-seed class average (seeds present in every class)."""
    seeds = [per_seed(c, metric) for c in cells if c]
    if not seeds:
        return Stat()
    mean = float(np.mean([np.mean(list(s.values())) for s in seeds]))
    common = sorted(set.intersection(*(set(s) for s in seeds)))
    _, std = mean_std([np.mean([s[k] for s in seeds]) for k in common])
    return Stat(mean, std, len(seeds))


def groups_of(runs: Iterable[Run]) -> dict[GroupKey, list[Run]]:
    groups: dict[GroupKey, list[Run]] = defaultdict(list)
    for r in runs:
        groups[group_key(r)].append(r)
    return dict(groups)


# ------------------------------------------------------------------------------------------------
# formatting helpers
# ------------------------------------------------------------------------------------------------

def fmt(stat: Stat) -> str:
    if stat.n == 0:
        return ""
    return f"{stat.mean:.3f}" + ("" if math.isnan(stat.std) else f" ± {stat.std:.3f}")


def fmt_paper(mean: float, std: float = math.nan) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")


def compare(ours: Stat, paper: float, paper_std: float = math.nan) -> tuple[float, bool]:
    """(ours - paper, ours outside paper +- 2 std); NaN / False where either side is missing."""
    if ours.n == 0 or math.isnan(paper):
        return math.nan, False
    diff = ours.mean - paper
    return diff, (not math.isnan(paper_std)) and abs(diff) > 2 * paper_std


def fmt_diff(diff: float, outside: bool) -> str:
    return "" if math.isnan(diff) else f"{diff:+.3f}" + (f" {OUTSIDE_MARK}" if outside else "")


def _num(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_paper_table(name: str, paper_dir: Path = PAPER_DIR) -> list[dict[str, str]]:
    path = paper_dir / name
    if not path.is_file():
        raise UserError(f"paper table {path} missing: restore benchmarks/paper_tables/ from the repository")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def extras_text(extras: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in extras)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _stem(base: str, extras: tuple[tuple[str, str], ...]) -> str:
    return base + ("-" + _slug("-".join(f"{k}_{v}" for k, v in extras)) if extras else "")


def coverage_note(cells: Iterable[Sequence[Run]]) -> str:
    """How many runs/seeds the cells of one table rest on."""
    cells = [c for c in cells if c]
    if not cells:
        return "no runs in this table"
    n_seeds = [len({r.seed for r in c}) for c in cells]
    n_runs = sum(len(c) for c in cells)
    seeds = sorted({r.seed for c in cells for r in c})
    lo, hi = min(n_seeds), max(n_seeds)
    return (f"coverage: {len(cells)} cells from {n_runs} runs; seeds per cell: {lo if lo == hi else f'{lo}-{hi}'} "
            f"(seeds {', '.join(map(str, seeds))})" + ("; some seeds were run more than once and averaged"
                                                       if n_runs > sum(n_seeds) else ""))


STD_NOTE = "ours: mean ± sample std (ddof=1) over seeds; no ± with a single seed."


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------

def cifar10_table(runs: Sequence[Run], extras: tuple[tuple[str, str], ...], paper_dir: Path = PAPER_DIR) -> Table:
    """Table I layout: classes 0-9 + mean; MOCCA soft/hard (and holistic vs Deep SVDD) beside the paper."""
    paper = read_paper_table("table1_cifar10_auc.csv", paper_dir)
    # (title, holistic, boundary, paper column, CSV column prefix)
    columns = [("MOCCA soft", False, "soft", "mocca_soft", "mocca_soft"),
               ("MOCCA hard", False, "hard", "mocca_hard", "mocca_hard")]
    if any(r.holistic for r in runs):
        columns += [("holistic soft (paper: Deep SVDD)", True, "soft", "deep_svdd_soft", "holistic_soft"),
                    ("holistic hard (paper: Deep SVDD)", True, "hard", "deep_svdd_hard", "holistic_hard")]

    def cell(index: int, holistic: bool, boundary: str) -> list[Run]:
        return [r for r in runs if r.class_index == index and r.boundary == boundary and r.holistic == holistic
                and (holistic or r.layers == MOCCA_LAYERS["cifar10"])]

    md_header = ["class"]
    csv_header = ["class_index", "class_name"]
    for title, _, _, _, prefix in columns:
        md_header += [f"{title}: ours", "paper", "Δ"]
        csv_header += [f"{prefix}_{s}" for s in ("mean", "std", "n_seeds", "paper", "paper_std", "diff", "outside_2std")]
    title = "CIFAR-10 one-class ROC AUC (Table I layout)" + (f" — {extras_text(extras)}" if extras else "")
    table = Table(_stem("table1_cifar10", extras), title, md_header, csv_header=csv_header)
    all_cells: list[list[Run]] = []
    class_rows = [row for row in paper if row["class_index"] != "mean"]
    for row in paper:
        is_mean = row["class_index"] == "mean"
        md = [f"mean ({row['class_name']})" if is_mean else f"{row['class_index']} {row['class_name']}"]
        out: list[Any] = [row["class_index"], row["class_name"]]
        for _, holistic, boundary, key, _ in columns:
            p_mean, p_std = _num(row.get(key)), _num(row.get(f"{key}_std"))
            if is_mean:
                cells = [cell(int(r["class_index"]), holistic, boundary) for r in class_rows]
                stat = mean_over_classes(cells, "auc")
                complete = stat.n == len(class_rows)
                diff, outside = compare(stat, p_mean, p_std) if complete else (math.nan, False)
                ours = fmt(stat) + ("" if complete or stat.n == 0 else f" ({stat.n}/{len(class_rows)} classes)")
            else:
                c = cell(int(row["class_index"]), holistic, boundary)
                all_cells.append(c)
                stat = cell_stat(c, "auc")
                diff, outside = compare(stat, p_mean, p_std)
                ours = fmt(stat)
            md += [ours, fmt_paper(p_mean, p_std), fmt_diff(diff, outside)]
            out += [stat.mean, stat.std, stat.n, p_mean, p_std, diff, int(outside) if stat.n else ""]
        table.md_rows.append(md)
        table.csv_rows.append(out)
    table.notes = [coverage_note(all_cells), STD_NOTE,
                   f"Δ = ours − paper; {OUTSIDE_MARK} = ours outside the paper's mean ± 2 std. "
                   "The mean row is compared only when all 10 classes are present.",
                   "MOCCA = layers 0,1,2,3; holistic = last layer only (paper: Deep SVDD, Ruff et al. 2018)."]
    return table


def mvtec_table(runs: Sequence[Run], extras: tuple[tuple[str, str], ...], paper_dir: Path = PAPER_DIR) -> Table:
    """Tables III/IV layout: maxBA and AUC per category, soft/hard, ours beside the paper (no std published).

    As in the paper, each category's layer set is the best one found (highest mean maxBA; chosen on the
    test set, like the paper's), among the non-holistic layer sets that were run.
    """
    paper = read_paper_table("table3_4_mvtec.csv", paper_dir)
    paper_rows = [r for r in paper if r["category"] != "mean"]
    known = [r["category"] for r in paper_rows]
    categories = known + sorted({r.cls for r in runs} - set(known))
    by_cat = {row["category"]: row for row in paper}

    def best(category: str, boundary: str) -> list[Run]:
        groups = groups_of(r for r in runs if r.cls == category and r.boundary == boundary and not r.holistic)
        if not groups:
            return []
        return max(groups.values(), key=lambda rs: (cell_stat(rs, "max_ba").mean, len(rs[0].layers)))

    combos = [(m, b) for m in ("max_ba", "auc") for b in ("soft", "hard")]
    names = {"max_ba": "maxBA", "auc": "AUC"}
    md_header = ["category"] + [h for m, b in combos for h in (f"{names[m]} {b}: ours", "paper", "Δ")] + \
                ["layers soft", "layers hard"]
    csv_header = ["category"] + [f"{m}_{b}_{s}" for m, b in combos for s in ("mean", "std", "n_seeds", "paper", "diff")] \
        + ["layers_soft", "layers_hard"]
    title = "MVTec AD maxBA and AUC (Tables III/IV layout)" + (f" — {extras_text(extras)}" if extras else "")
    table = Table(_stem("table3_4_mvtec", extras), title, md_header, csv_header=csv_header)
    chosen = {(c, b): best(c, b) for c in categories for b in ("soft", "hard")}
    for category in categories + ["mean"]:
        row = by_cat.get(category, {})
        md, out = [category], [category]
        for m, b in combos:
            p_mean = _num(row.get(f"mocca_{b}_{'maxba' if m == 'max_ba' else 'auc'}"))
            if category == "mean":
                stat = mean_over_classes([chosen[(c, b)] for c in categories], m)
                complete = stat.n == len(known) and all(chosen[(c, b)] for c in known)
                diff, _ = compare(stat, p_mean) if complete else (math.nan, False)
            else:
                stat = cell_stat(chosen[(category, b)], m)
                diff, _ = compare(stat, p_mean)
            md += [fmt(stat), fmt_paper(p_mean), fmt_diff(diff, False)]
            out += [stat.mean, stat.std, stat.n, p_mean, diff]
        layers = ["" if category == "mean" or not chosen[(category, b)] else chosen[(category, b)][0].layers_label
                  for b in ("soft", "hard")]
        table.md_rows.append(md + layers)
        table.csv_rows.append(out + layers)
    table.notes = [coverage_note(chosen.values()), STD_NOTE,
                   "Δ = ours − paper (the paper gives no std for MVTec AD). Layer set per category: the best mean "
                   "maxBA among those run (the paper also selected per class on the test results). The mean row is "
                   "compared only when all 15 categories are present."]
    return table


def layer_table(runs: Sequence[Run], dataset: str, cls: str, extras: tuple[tuple[str, str], ...],
                paper_dir: Path = PAPER_DIR) -> Table:
    """Table VII layout: rows = layer sets; maxBA hard/soft ± std (paper values for MVTec leather), AUC too."""
    paper: dict[str, dict[str, str]] = {}
    if dataset == "mvtec" and cls == "leather":
        paper = {row["layers"]: row for row in read_paper_table("table7_leather_layer_ablation_maxba.csv", paper_dir)}
    variants = groups_of(runs)
    by_label: dict[str, dict[str, list[Run]]] = defaultdict(lambda: {"hard": [], "soft": []})
    order: dict[str, tuple] = {}
    for key, rs in variants.items():
        label = rs[0].layers_label
        by_label[label][rs[0].boundary] += rs
        order[label] = (rs[0].holistic, len(rs[0].layers), rs[0].layers)
    for label in paper:
        if label not in by_label:
            by_label[label]  # noqa: B018 - creates the empty row
            layers = tuple(int(x) for x in label.split(","))
            order[label] = (False, len(layers), layers)
    md_header = ["layers"]
    csv_header = ["layers"]
    for b in ("hard", "soft"):
        md_header += [f"maxBA {b}: ours"] + (["paper", "Δ"] if paper else [])
        csv_header += [f"max_ba_{b}_{s}" for s in ("mean", "std", "n_seeds", "paper", "paper_std", "diff",
                                                      "outside_2std")]
    md_header += ["AUC hard: ours", "AUC soft: ours"]
    csv_header += [f"auc_{b}_{s}" for b in ("hard", "soft") for s in ("mean", "std", "n_seeds")]
    title = (f"{dataset} {cls}: layer sets (Table VII layout)" + (f" — {extras_text(extras)}" if extras else ""))
    table = Table(_stem(f"table7_layers-{dataset}-{_slug(cls)}", extras), title, md_header, csv_header=csv_header)
    for label in sorted(by_label, key=lambda k: order[k]):
        cells = by_label[label]
        md, out = [label], [label]
        for b in ("hard", "soft"):
            stat = cell_stat(cells[b], "max_ba")
            row = paper.get(label, {})
            p_mean, p_std = _num(row.get(b)), _num(row.get(f"{b}_std"))
            diff, outside = compare(stat, p_mean, p_std)
            md += [fmt(stat)] + ([fmt_paper(p_mean, p_std), fmt_diff(diff, outside)] if paper else [])
            out += [stat.mean, stat.std, stat.n, p_mean, p_std, diff, int(outside) if stat.n else ""]
        for b in ("hard", "soft"):
            stat = cell_stat(cells[b], "auc")
            md.append(fmt(stat))
            out += [stat.mean, stat.std, stat.n]
        table.md_rows.append(md)
        table.csv_rows.append(out)
    table.notes = [coverage_note([c for v in by_label.values() for c in v.values()]), STD_NOTE]
    if paper:
        table.notes.append(f"paper: Table VII (MVTec leather, maxBA); {OUTSIDE_MARK} = ours outside its mean ± 2 std.")
    return table


def build_tables(runs: Sequence[Run], paper_dir: Path = PAPER_DIR) -> list[Table]:
    """All tables the runs can fill, one set per combination of the other varying hyperparameters."""
    tables: list[Table] = []
    by_dataset_extras: dict[tuple[str, tuple], list[Run]] = defaultdict(list)
    for r in runs:
        by_dataset_extras[(r.dataset, r.extras)].append(r)
    for (dataset, extras), rs in sorted(by_dataset_extras.items()):
        if dataset == "cifar10":
            tables.append(cifar10_table(rs, extras, paper_dir))
        elif dataset == "mvtec":
            tables.append(mvtec_table(rs, extras, paper_dir))
        by_class: dict[str, list[Run]] = defaultdict(list)
        for r in rs:
            by_class[r.cls].append(r)
        for cls, crs in sorted(by_class.items(), key=lambda kv: _class_order(kv[1][0])):
            n_variants = len({(r.layers, r.holistic) for r in crs})
            if n_variants > 1 or (dataset == "mvtec" and cls == "leather"):
                tables.append(layer_table(crs, dataset, cls, extras, paper_dir))
        if dataset not in ("cifar10", "mvtec"):
            tables.append(generic_table(rs, dataset, extras))
        tables.append(evaluation_table(rs, dataset, extras))
        extra_tables = [per_group_table(rs, dataset, extras)] if dataset == "mvtec" else []
        if dataset == "mvtec":
            extra_tables.append(localisation_table(rs, extras))
        tables += [t for t in extra_tables if t is not None]
    return tables


def generic_table(runs: Sequence[Run], dataset: str, extras: tuple[tuple[str, str], ...]) -> Table:
    """Datasets without a paper table layout: one row per group."""
    table = Table(_stem(f"results-{_slug(dataset)}", extras),
                  f"{dataset}: all groups" + (f" — {extras_text(extras)}" if extras else ""),
                  ["class", "boundary", "layers", "AUC", "maxBA"],
                  csv_header=["class", "boundary", "layers", "auc_mean", "auc_std", "max_ba_mean", "max_ba_std",
                              "n_seeds"])
    groups = groups_of(runs)
    for key in sorted(groups, key=lambda k: (k[1], k[2], k[4], k[3])):
        rs = groups[key]
        auc, ba = cell_stat(rs, "auc"), cell_stat(rs, "max_ba")
        table.md_rows.append([rs[0].cls, rs[0].boundary, rs[0].layers_label, fmt(auc), fmt(ba)])
        table.csv_rows.append([rs[0].cls, rs[0].boundary, rs[0].layers_label, auc.mean, auc.std, ba.mean, ba.std,
                               auc.n])
    table.notes = [coverage_note(groups.values()), STD_NOTE]
    return table


NO_PAPER = "—"  # the paper reports no such number


def evaluation_table(runs: Sequence[Run], dataset: str, extras: tuple[tuple[str, str], ...]) -> Table:
    """Threshold-free metrics beyond the paper's: AP and F1-max (with AUC for reference), one row per group."""
    table = Table(_stem(f"evaluation-{_slug(dataset)}", extras),
                  f"{dataset}: AUC, AP and F1-max" + (f" — {extras_text(extras)}" if extras else ""),
                  ["class", "boundary", "layers", "AUC", "AP", "F1-max", "paper AP / F1-max"],
                  csv_header=["class", "boundary", "layers", "auc_mean", "auc_std", "ap_mean", "ap_std",
                              "f1_max_mean", "f1_max_std", "n_seeds"])
    groups = groups_of(runs)
    for key in sorted(groups, key=lambda k: (_class_order(groups[k][0]), k[2], k[4], k[3])):
        rs = groups[key]
        auc, ap, f1 = (cell_stat(rs, m) for m in ("auc", "ap", "f1_max"))
        table.md_rows.append([rs[0].cls, rs[0].boundary, rs[0].layers_label, fmt(auc), fmt(ap), fmt(f1), NO_PAPER])
        table.csv_rows.append([rs[0].cls, rs[0].boundary, rs[0].layers_label, auc.mean, auc.std, ap.mean, ap.std,
                               f1.mean, f1.std, auc.n])
    table.notes = ["AP: area under the precision-recall curve, anomaly = positive (its chance level is the test set's "
                   "anomaly rate); F1-max: the best F1 over thresholds (its threshold is in each metrics.json). "
                   f"{NO_PAPER}: the paper reports neither.", STD_NOTE]
    return table


def per_group_table(runs: Sequence[Run], dataset: str, extras: tuple[tuple[str, str], ...]) -> Table | None:
    """AUC of each defect type (MVTec) or anomalous class (CIFAR-10) against the normal test data."""
    prefix = "auc_defect_" if dataset == "mvtec" else "auc_class_"
    names = sorted({k[len(prefix):] for r in runs for k in r.metrics if k.startswith(prefix)})
    if not names:
        return None
    groups = groups_of(runs)
    keys = sorted(groups, key=lambda k: (_class_order(groups[k][0]), k[2], k[4], k[3]))
    what = "defect" if dataset == "mvtec" else "anomalous class"
    table = Table(_stem(f"per-{'defect' if dataset == 'mvtec' else 'class'}-{_slug(dataset)}", extras),
                  f"{dataset}: AUC per {what} (vs the normal test images)" + (f" — {extras_text(extras)}" if extras else ""),
                  ["class", "boundary", "layers", what, "AUC", "paper"],
                  csv_header=["class", "boundary", "layers", what, "auc_mean", "auc_std", "n_seeds"])
    for key in keys:
        rs = groups[key]
        for name in names:
            stat = cell_stat(rs, prefix + name)
            if stat.n:
                table.md_rows.append([rs[0].cls, rs[0].boundary, rs[0].layers_label, name, fmt(stat), NO_PAPER])
                table.csv_rows.append([rs[0].cls, rs[0].boundary, rs[0].layers_label, name, stat.mean, stat.std,
                                       stat.n])
    table.notes = [f"{NO_PAPER}: the paper reports image AUC per category only.", STD_NOTE]
    return table


def localisation_table(runs: Sequence[Run], extras: tuple[tuple[str, str], ...]) -> Table | None:
    """MVTec pixel AUROC and PRO (textures: the 8x8 patch score map); objects have no map in MOCCA."""
    groups = groups_of(runs)
    keys = sorted(groups, key=lambda k: (not groups[k][0].metrics.get("is_texture"), k[1], k[2], k[4], k[3]))
    if not any("localisation" in groups[k][0].metrics for k in keys):
        return None
    table = Table(_stem("localisation-mvtec", extras),
                  "MVTec AD: pixel AUROC and PRO (FPR <= 0.3)" + (f" — {extras_text(extras)}" if extras else ""),
                  ["category", "boundary", "layers", "pixel AUROC", "PRO", "paper"],
                  csv_header=["category", "boundary", "layers", "pixel_auroc_mean", "pixel_auroc_std", "pro_mean",
                              "pro_std", "n_seeds"])
    for key in keys:
        rs = groups[key]
        local = rs[0].metrics.get("localisation")
        if isinstance(local, str):
            row = ["n/a: object images are scored whole, no map"] * 2
            csv_vals = [math.nan] * 4
        else:
            auroc, pro = cell_stat(rs, "pixel_auroc"), cell_stat(rs, "pro")
            row, csv_vals = [fmt(auroc), fmt(pro)], [auroc.mean, auroc.std, pro.mean, pro.std]
        table.md_rows.append([rs[0].cls, rs[0].boundary, rs[0].layers_label, *row, NO_PAPER])
        table.csv_rows.append([rs[0].cls, rs[0].boundary, rs[0].layers_label, *csv_vals, len(rs)])
    table.notes = ["Textures: each pixel gets the score of its 64x64 patch (eq. 7's patches; block upsampling of the "
                   "8x8 map to the mask), maps never normalised per image; PRO per Bergmann et al. (IJCV 2021), "
                   f"area up to FPR 0.3 divided by 0.3. {NO_PAPER}: the paper reports no pixel metrics.", STD_NOTE]
    return table


def _class_order(run: Run) -> tuple:
    return (run.class_index if run.class_index is not None else math.inf, run.cls)


def runs_table(runs: Sequence[Run]) -> Table:
    """Every run, one row (the raw material of all tables), with per-layer AUC."""
    layer_ids = sorted({int(j) for r in runs for j in r.metrics.get("per_layer", {})})
    extra_keys = sorted({k for r in runs for k, _ in r.extras})
    header = ["dataset", "class", "boundary", "layers", "holistic", "seed", *extra_keys, "auc", "max_ba", "ap", "f1_max",
              *[f"auc_layer_{j}" for j in layer_ids], "run_dir"]
    table = Table("runs", "all runs", header, csv_header=header)
    for r in sorted(runs, key=lambda r: (r.dataset, _class_order(r), r.boundary, r.holistic, r.layers, r.extras,
                                         r.seed)):
        extras = dict(r.extras)
        per_layer = r.metrics.get("per_layer", {})
        table.csv_rows.append([r.dataset, r.cls, r.boundary, ",".join(map(str, r.layers)), int(r.holistic), r.seed,
                               *[extras.get(k, "") for k in extra_keys], r.value("auc"), r.value("max_ba"),
                               r.value("ap"), r.value("f1_max"),
                               *[per_layer.get(str(j), {}).get("auc", math.nan) for j in layer_ids], str(r.dir)])
    return table


def groups_table(runs: Sequence[Run]) -> Table:
    header = ["dataset", "class", "boundary", "layers", "holistic", "extras", "n_runs", "n_seeds", "seeds",
              "auc_mean", "auc_std", "max_ba_mean", "max_ba_std", "ap_mean", "ap_std", "f1_max_mean", "f1_max_std"]
    table = Table("groups", "all groups", header, csv_header=header)
    groups = groups_of(runs)
    for key in sorted(groups, key=lambda k: (k[0], _class_order(groups[k][0]), k[2], k[4], k[3], k[5])):
        rs = groups[key]
        auc, ba, ap, f1 = (cell_stat(rs, m) for m in ("auc", "max_ba", "ap", "f1_max"))
        seeds = sorted({r.seed for r in rs})
        table.csv_rows.append([key[0], key[1], key[2], ",".join(map(str, key[3])), int(key[4]), extras_text(key[5]),
                               len(rs), len(seeds), " ".join(map(str, seeds)), auc.mean, auc.std, ba.mean, ba.std,
                               ap.mean, ap.std, f1.mean, f1.std])
    return table


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------

FIGURE_GROUPS = 12  # per-run test figures (histogram, examples, maps, t-SNE, video curves) for this many groups


def make_plots(runs: Sequence[Run], out: Path) -> list[tuple[Path, str]]:
    """ROC per class, distance CDFs MOCCA vs holistic (Fig. 5), training curves and the test figures
    (score histogram, most normal / anomalous images, texture maps, t-SNE, video frame curves): the
    lowest seed of each group. Returns (PNG, caption) pairs."""
    from tools import plots  # matplotlib only when figures are wanted

    written: list[tuple[Path, str]] = []
    folder = out / "plots"

    def attempt(what: str, make: Callable[[], Path], caption: str = "") -> None:
        try:
            written.append((make(), caption or what))
        except (OSError, ValueError, KeyError) as err:  # one broken run folder must not stop the report
            print(f"warning: no {what}: {type(err).__name__}: {err}", file=sys.stderr)

    groups = groups_of(runs)
    first = {key: min(rs, key=lambda r: (r.seed, str(r.dir))) for key, rs in groups.items()}
    by_class: dict[tuple[str, str], list[GroupKey]] = defaultdict(list)
    for key in sorted(groups, key=lambda k: (k[2], k[4], k[3], k[5])):
        by_class[(key[0], key[1])].append(key)
    for (dataset, cls), keys in by_class.items():
        stem = f"{_slug(dataset)}-{_slug(cls)}"
        attempt(f"ROC for {stem}", lambda: plots.plot_roc([first[k].dir for k in keys], folder / f"roc-{stem}.png",
                                                          title=f"{dataset} {cls}: ROC (lowest seed per group)"))
        for boundary in ("soft", "hard"):
            for extras in sorted({k[5] for k in keys}):
                pair = _cdf_pair([groups[k] for k in keys if k[2] == boundary and k[5] == extras])
                if pair:
                    png = folder / f"cdf-{stem}-{boundary}{_stem('', extras)}.png"
                    attempt(f"CDF for {png.name}", lambda: plots.plot_distance_cdfs(
                        pair[0].dir, pair[1].dir, png, title=f"{dataset} {cls} {boundary}, seed {pair[0].seed}"))
    for key, run in first.items():
        png = folder / f"train-{_slug(key[0])}-{_slug(key[1])}-{key[2]}-{_slug(run.layers_label)}{_stem('', key[5])}.png"
        attempt(f"training curves for {run.dir}", lambda: plots.plot_training_curves(
            run.dir, png, title=f"{key[1]} {key[2]} layers {run.layers_label} seed {run.seed}"),
            f"training curves (loss, mean d², radius per layer): {key[1]} {key[2]} layers {run.layers_label}")
    ordered = sorted(first.items(), key=lambda kv: (kv[0][0], _class_order(kv[1]), kv[0][2], kv[0][4], kv[0][3]))
    for key, run in ordered[:FIGURE_GROUPS]:
        stem = f"{_slug(key[0])}-{_slug(key[1])}-{key[2]}-{_slug(run.layers_label)}{_stem('', key[5])}"
        what = f"{key[1]} {key[2]} layers {run.layers_label} seed {run.seed}"
        attempt(f"score histogram for {run.dir}", lambda: plots.plot_score_histogram(
            run.dir, folder / f"hist-{stem}.png", title=f"{what}: test scores"),
            f"combined test score, normal vs anomalous (decision threshold dashed where the model stores one): {what}")
        if run.dataset in ("cifar10", "mvtec"):
            attempt(f"example images for {run.dir}", lambda: plots.plot_examples(
                run.dir, folder / f"examples-{stem}.png", title=f"{what}: most normal (top), most anomalous (bottom)"),
                f"the 8 most normal and 8 most anomalous test images with score and true label: {what}")
            attempt(f"t-SNE for {run.dir}", lambda: plots.plot_tsne(
                run.dir, folder / f"tsne-{stem}.png", title=f"{what}: t-SNE of the layer embeddings"),
                f"t-SNE of per-layer embeddings of test samples with the centroid (star): {what}")
        if run.metrics.get("is_texture"):
            attempt(f"texture maps for {run.dir}", lambda: plots.plot_texture_maps(
                run.dir, folder / f"maps-{stem}.png", title=f"{what}: image, mask, patch score map"),
                f"texture images, ground-truth masks and 8x8 patch score maps (one colour scale): {what}")
        if run.dataset not in ("cifar10", "mvtec"):
            attempt(f"frame curves for {run.dir}", lambda: plots.plot_video_curves(
                run.dir, folder / f"frames-{stem}.png", title=f"{what}: frame scores"),
                f"frame scores per test video, abnormal frames shaded: {what}")
    if len(ordered) > FIGURE_GROUPS:
        print(f"note: test figures drawn for the first {FIGURE_GROUPS} of {len(ordered)} groups", file=sys.stderr)
    return written


def _cdf_pair(groups: Sequence[list[Run]]) -> tuple[Run, Run] | None:
    """The MOCCA group with the most layers and the holistic group, at their lowest common seed."""
    mocca = [g for g in groups if not g[0].holistic and len(g[0].layers) > 1]
    holistic = [g for g in groups if g[0].holistic]
    if not mocca or not holistic:
        return None
    m = max(mocca, key=lambda g: len(g[0].layers))
    h = holistic[0]
    common = sorted({r.seed for r in m} & {r.seed for r in h})
    if not common:
        return None
    pick = lambda g: min((r for r in g if r.seed == common[0]), key=lambda r: str(r.dir))  # noqa: E731
    return pick(m), pick(h)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def write_report(folder: Path, out: Path | None = None, plots: bool = True,
                 paper_dir: Path = PAPER_DIR) -> tuple[str, list[Table], list[tuple[Path, str]]]:
    """Find the runs, write report.md + CSV tables (+ PNGs) into ``out``; return the Markdown."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give a sweep or results folder")
    out = Path(out) if out else folder / "report"
    runs = load_runs(folder, skip=out)
    if not runs:
        raise UserError(f"no finished runs (metrics.json) below {folder}")
    tables = build_tables(runs, paper_dir)
    for t in tables + [runs_table(runs), groups_table(runs)]:
        write_text(out / f"{t.name}.csv", t.csv_text())
    figures = make_plots(runs, out) if plots else []
    datasets = sorted({r.dataset for r in runs})
    parts = [f"# MOCCA results: {folder}", "",
             f"{len(runs)} finished runs ({', '.join(datasets)}); per-run values: runs.csv, per-group: groups.csv.", ""]
    parts += [t.markdown() for t in tables]
    if figures:
        parts += ["### Figures", ""] + [f"- [{p.name}](plots/{p.name}): {caption}" for p, caption in figures] + [""]
    text = "\n".join(parts)
    write_text(out / "report.md", text)
    return text, tables, figures


def build_parser() -> argparse.ArgumentParser:
    p = cli.FlagParser(
        "python -m tools.report",
        description="Aggregate finished runs (every metrics.json below FOLDER) into the paper's table layouts "
                    "(mean ± std over seeds, beside the paper's values) as Markdown + CSV, and draw figures.")
    p.add_argument("folder", help="a sweep folder (python -m tools.sweep --out) or any folder of run folders")
    p.add_argument("--out", default=None, help="where to write report.md, *.csv and plots/ (default: FOLDER/report)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="tables only, no PNG figures")
    p.add_argument("--paper-dir", default=str(PAPER_DIR), help="folder of the paper's CSV tables")
    return p


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.folder).is_dir():
        raise UserError(f"{args.folder} is not a folder: give a sweep folder or a folder of run folders")
    out = Path(args.out) if args.out else Path(args.folder) / "report"
    check_writable(out, "--out")
    text, _, figures = write_report(Path(args.folder), Path(args.out) if args.out else None, args.plots,
                                    Path(args.paper_dir))
    print(text)
    print(f"written: {out / 'report.md'} (+ CSV tables{f', {len(figures)} figures' if figures else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
