"""Command-line flags (the authors' names, so their README commands work) and YAML configs.

Precedence, lowest to highest: parser defaults < YAML file (``--config``) < YAML presets
(``--preset``, sections of the same file) < flags given on the command line. The resolved
config is a plain dict saved with every run.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from utils.errors import UserError
from utils.io import cache_dir

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
# keys that only steer the CLI and are never stored as hyperparameters
_META_KEYS = {"config", "preset"}


class FlagParser(argparse.ArgumentParser):
    """argparse with its errors on one line (``error: <what>; see --help``) and exit status 2, like
    every other bad input, instead of the usage block."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def _reject(p: argparse.ArgumentParser, *flags: str, dest: str, why: str, nargs: str | None = None,
            switch: bool = False) -> None:
    """A flag the authors' scripts accept but that would change nothing here: parsed (so their
    commands still parse), then refused by ``resolve_config`` with a one-line reason."""
    if switch:
        p.add_argument(*flags, dest=dest, default=None, action="store_const", const=True, help=argparse.SUPPRESS)
    else:
        p.add_argument(*flags, dest=dest, default=None, nargs=nargs, help=argparse.SUPPRESS)
    if not hasattr(p, "rejected"):
        p.rejected = {}
    p.rejected[dest] = (flags[0], why)


def _common_flags(p: argparse.ArgumentParser, *, code_length: int, batch_size: int, warm_up: int,
                  two_stage: bool = True, layer_reduction: str = "mean") -> None:
    """Flags shared by all three entry scripts (authors' names first, ours after)."""
    p.add_argument("--config", type=str, default=None, help="YAML file of hyperparameters (flags override it)")
    p.add_argument("--preset", nargs="*", default=[], help="named sections of the YAML file to apply, in order")
    p.add_argument("-s", "--seed", type=int, default=0, help="random seed; -1 = do not seed")
    p.add_argument("--n_workers", type=int, default=0, help="accepted for compatibility; data is resident, no workers")
    p.add_argument("--output_path", type=str, default="./output", help="root folder of run folders")
    p.add_argument("--run-dir", dest="run_dir", type=str, default=None,
                   help="explicit run folder (default: <output_path>/<dataset>/<class>/<run name>)")
    p.add_argument("-zl", "--code-length", dest="code_length", type=int, default=code_length)
    p.add_argument("-ck", "--model-ckp", dest="model_ckp", type=str, default=None,
                   help="AE checkpoint for -tr without -ptr; trained checkpoint for -tt without -tr")
    if two_stage:
        p.add_argument("-alr", "--ae-learning-rate", dest="ae_learning_rate", type=float, default=1e-4)
        p.add_argument("-awd", "--ae-weight-decay", dest="ae_weight_decay", type=float, default=0.5e-6)
        p.add_argument("-aml", "--ae-lr-milestones", dest="ae_lr_milestones", type=int, nargs="*", default=[])
        p.add_argument("-ae", "--ae-epochs", dest="ae_epochs", type=int, default=1, help="AE pretraining epochs")
    else:
        why = "video trains in one stage (-ee) with -lr/-wd/-ml/-e; there is no separate AE stage to set"
        for flags, dest, nargs in ((("-alr", "--ae-learning-rate"), "ae_learning_rate", None),
                                   (("-awd", "--ae-weight-decay"), "ae_weight_decay", None),
                                   (("-aml", "--ae-lr-milestones"), "ae_lr_milestones", "*"),
                                   (("-ae", "--ae-epochs"), "ae_epochs", None)):
            _reject(p, *flags, dest=dest, why=why, nargs=nargs)
    p.add_argument("-lr", "--learning-rate", dest="learning_rate", type=float, default=1e-4)
    p.add_argument("-wd", "--weight-decay", dest="weight_decay", type=float, default=0.5e-6)
    p.add_argument("-ml", "--lr-milestones", dest="lr_milestones", type=int, nargs="*", default=[])
    p.add_argument("-we", "--warm_up_n_epochs", dest="warm_up_n_epochs", type=int, default=warm_up,
                   help="epochs before the soft-boundary radius starts being re-estimated")
    p.add_argument("-tbc", "--train-best-conf", dest="train_best_conf", action="store_true", default=False,
                   help="accepted for compatibility; unused (as in the authors' code)")
    p.add_argument("-db", "--debug", action="store_true", default=False, help="stop every loop after 5 batches")
    p.add_argument("-bs", "--batch-size", dest="batch_size", type=int, default=batch_size)
    p.add_argument("-bd", "--boundary", choices=["hard", "soft"], default="soft")
    p.add_argument("-ptr", "--pretrain", action="store_true", default=False, help="stage 1: AE pretraining")
    p.add_argument("-tr", "--train", action="store_true", default=False, help="stage 2: one-class training")
    p.add_argument("-tt", "--test", action="store_true", default=False, help="score the test set")
    p.add_argument("-ile", "--idx-list-enc", dest="idx_list_enc", type=int, nargs="*", default=[],
                   help="layer indices to train and score (any order)")
    p.add_argument("-e", "--epochs", type=int, default=1, help="one-class training epochs")
    p.add_argument("-nu", "--nu", type=float, default=0.1)
    p.add_argument("--layer-reduction", dest="layer_reduction", choices=["mean", "sum"], default=layer_reduction,
                   help=f"combine the layers' one-class losses by their mean (paper eq. 4) or sum (authors' code); "
                        f"default {layer_reduction}")
    p.add_argument("--test-checkpoint", dest="test_checkpoint", choices=["last", "best-loss"], default="last",
                   help="which one-class epoch -tt scores: the last, or the one with the lowest mean training loss "
                        "(the authors' choice for MVTec and video)")
    p.add_argument("--deterministic", action="store_true", default=False,
                   help="deterministic kernels (torch.use_deterministic_algorithms; on CUDA also cuDNN and cuBLAS "
                        "settings): a resumed or repeated run then gives the same numbers on the same GPU, slower")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue a killed run from the checkpoints in its run folder")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=False,
                   help="use the channels_last memory format (faster convolutions on many CPUs/GPUs)")
    p.add_argument("--amp", action="store_true", default=False, help="bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", default=False,
                   help="torch.compile the trained model (inductor; the first epoch includes the compilation)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", default=False,
                   help="no tqdm bars (one log line per epoch is still printed)")


def _two_stage_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the two-stage image pipeline (CIFAR-10, MVTec AD)."""
    p.add_argument("--recalibrate-bn", dest="recalibrate_bn", action=argparse.BooleanOptionalAction, default=False,
                   help="re-estimate every BatchNorm's running statistics over the training set before the "
                        "centroids and after one-class training (short runs; not in the paper)")


def cifar10_parser() -> argparse.ArgumentParser:
    p = FlagParser("main_cifar10.py", description="MOCCA on CIFAR-10 (one class = normal)")
    _common_flags(p, code_length=32, batch_size=256, warm_up=10)
    _two_stage_flags(p)
    _reject(p, "--use-selectors", dest="use_selectors", switch=True,
            why="CIFAR-10 has no selectors (the paper average-pools every layer); drop the flag")
    p.add_argument("-dp", "--data-path", dest="data_path", type=str, default="./cifar10",
                   help="cifar-10-batches-py root, an image-folder root (train/<class>/*.jpg), or its .tar.gz")
    p.add_argument("-nc", "--normal-class", dest="normal_class", type=int, default=5, help="normal class 0-9")
    p.add_argument("--download", action="store_true", default=False,
                   help="download the official CIFAR-10 pickles into -dp if missing (needs internet)")
    p.add_argument("--classes", type=int, nargs="+", default=None,
                   help="several normal classes: every --classes x --seeds run trains as one grouped model "
                        "(K runs at once; -ptr -tr -tt), each writing its own ordinary run folder")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds (see --classes)")
    return p


def mvtec_parser() -> argparse.ArgumentParser:
    p = FlagParser("main_mvtec.py", description="MOCCA on MVTec AD (one category = normal)")
    _common_flags(p, code_length=64, batch_size=128, warm_up=5)
    _two_stage_flags(p)
    p.add_argument("--use-selectors", dest="use_selectors", action="store_true", default=True,
                   help="a learned selector head per layer (the paper's MVTec model; the default)")
    p.add_argument("--no-selectors", dest="use_selectors", action="store_false",
                   help="average-pool the layers instead of the selector heads (not the paper's MVTec model)")
    p.add_argument("-dp", "--data-path", dest="data_path", type=str, default="./MVTec_Anomaly",
                   help="MVTec AD root holding the category folders")
    p.add_argument("-nc", "--normal-class", dest="normal_class", default="cable",
                   metavar="CATEGORY", help="an MVTec AD category (bottle, cable, ..., zipper), or the name of your "
                                            "own category folder in the same layout (train/good, test/<type>)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--texture", dest="texture", action="store_const", const=True, default=None,
                      help="your own category is a texture: 512x512 images scored as the max over 64x64 patches")
    kind.add_argument("--object", dest="texture", action="store_const", const=False,
                      help="your own category is an object (the default): whole images at --image-size")
    p.add_argument("--rotation-range", dest="rotation_range", type=float, nargs=2, default=None,
                   metavar=("LOW", "HIGH"), help="training rotation in degrees (default: the paper's per category; "
                                                 "none for your own categories)")
    p.add_argument("-lf", "--log-frequency", dest="log_frequency", type=int, default=5, help="accepted; one line per epoch")
    p.add_argument("-dl", "--disable-logging", dest="disable_logging", action="store_true", default=False)
    p.add_argument("-ba", "--batch-accumulation", dest="batch_accumulation", type=int, default=-1,
                   help="optimizer step every N mini-batches (-1: every batch); not implemented, must be -1")
    p.add_argument("-mt", "--metric", type=int, choices=[1, 2], default=2, help="accepted; unused (as the authors)")
    p.add_argument("--image-size", dest="image_size", type=int, default=128,
                   help="side of the resized object images (paper: 128; smaller is a CPU shortcut); textures: 512")
    p.add_argument("--samples-per-epoch", dest="samples_per_epoch", type=int, default=50000,
                   help="augmented training samples per epoch (authors: a cache of 50,000); 0 = one pass over the images")
    p.add_argument("--no-rotation", dest="rotation", action="store_false", default=True,
                   help="train without the random rotation of the category (the test images are never rotated)")
    return p


def _explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """The flags actually typed on the command line (a copy of the parser with no defaults)."""
    bare = copy.deepcopy(parser)
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    return vars(bare.parse_args(argv))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found: pass an existing YAML with --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of hyperparameters")
    return data


def _apply(config: dict[str, Any], values: dict[str, Any], source: str) -> None:
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in config:
            raise UserError(f"unknown key {key!r} in {source}; valid keys: {', '.join(sorted(config))}")
        config[key] = value


def resolve_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                   class_key: str = "normal_class") -> dict[str, Any]:
    """Defaults < YAML < the YAML's ``per_class`` section of the chosen class < presets < explicit flags."""
    args = parser.parse_args(argv)
    explicit = _explicit_flags(parser, argv)
    config = {k: v for k, v in vars(args).items() if k not in _META_KEYS}
    if args.config:
        data = load_yaml(args.config)
        presets = data.pop("presets", {}) or {}
        per_class = data.pop("per_class", {}) or {}
        data.pop("cluster", None)  # job sizes for tools.sweep --executor slurm, not a run setting
        _apply(config, data, args.config)
        chosen = explicit.get(class_key, config.get(class_key))
        if chosen in per_class:
            _apply(config, per_class[chosen], f"{args.config} per_class {chosen!r}")
        for name in args.preset:
            if name not in presets:
                raise UserError(f"preset {name!r} not in {args.config}; available: {', '.join(presets) or 'none'}")
            _apply(config, presets[name], f"{args.config} preset {name!r}")
    elif args.preset:
        raise UserError("--preset needs --config <file> holding a 'presets:' section")
    _apply(config, {k: v for k, v in explicit.items() if k not in _META_KEYS}, "the command line")
    for key, (flag, why) in getattr(parser, "rejected", {}).items():
        if config.pop(key) is not None:
            raise UserError(f"{flag}: {why}")
    config["config_file"] = args.config
    config["presets"] = list(args.preset)
    check_values(config)
    return config


# Range of every numeric setting: (flag, type, test, what it must be). Checked once, right after the
# flags and YAML are resolved, by every entry script: nothing trains with a value that cannot work.
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_RANGES: dict[str, tuple[str, type, Any, str]] = {
    "batch_size": ("-bs", int, *_POSITIVE),
    "test_batch_size": ("--test-batch-size", int, *_POSITIVE),
    "learning_rate": ("-lr", float, *_POSITIVE),
    "ae_learning_rate": ("-alr", float, *_POSITIVE),
    "weight_decay": ("-wd", float, *_NON_NEGATIVE),
    "ae_weight_decay": ("-awd", float, *_NON_NEGATIVE),
    "epochs": ("-e", int, *_NON_NEGATIVE),
    "ae_epochs": ("-ae", int, *_NON_NEGATIVE),
    "warm_up_n_epochs": ("-we", int, *_NON_NEGATIVE),
    "nu": ("-nu", float, lambda v: 0 < v <= 1, "in (0, 1]: the fraction of training data allowed outside the sphere"),
    "code_length": ("-zl", int, *_POSITIVE),
    "image_size": ("--image-size", int, *_POSITIVE),
    "samples_per_epoch": ("--samples-per-epoch", int, lambda v: v >= 0, ">= 0 (0 = one pass over the images)"),
    "seed": ("-s", int, lambda v: v >= -1, ">= 0, or -1 for unseeded"),
    "clip_length": ("-cl", int, *_POSITIVE),
    "clips_per_epoch": ("--clips-per-epoch", int, *_POSITIVE),
    "centroid_clips": ("--centroid-clips", int, *_POSITIVE),
    "hidden_size": ("-hs", int, *_POSITIVE),
    "num_layers": ("-nl", int, *_POSITIVE),
    "dropout": ("-drp", float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "recon_weight": ("--recon-weight", float, *_NON_NEGATIVE),
}
_LIST_RANGES: dict[str, tuple[str, Any, str]] = {
    "lr_milestones": ("-ml", lambda v: v >= 1, "epochs >= 1"),
    "ae_lr_milestones": ("-aml", lambda v: v >= 1, "epochs >= 1"),
    "frame_size": ("--frame-size", lambda v: v >= 1, "sizes >= 1"),
    "idx_list_enc": ("-ile", lambda v: v >= 0, "layer indices >= 0"),
}


def _is(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def check_values(config: dict[str, Any]) -> None:
    """Type and range of every numeric setting, the epochs of the stages asked for, and the output
    folders; a UserError naming the flag and what it must be."""
    for key, (flag, kind, ok, must) in _RANGES.items():
        if key not in config or config[key] is None:
            continue
        value = config[key]
        if not _is(value, kind) or (kind is float and value != value):
            raise UserError(f"{flag} {value!r}: must be {'an integer' if kind is int else 'a number'} {must}")
        if not ok(value):
            raise UserError(f"{flag} {value}: must be {must}")
    for key, (flag, ok, must) in _LIST_RANGES.items():
        values = config.get(key)
        if values is None:
            continue
        if not isinstance(values, (list, tuple)) or not all(_is(v, int) and ok(v) for v in values):
            raise UserError(f"{flag} {values!r}: must be a list of integers ({must})")
    if config.get("pretrain") and config.get("ae_epochs") == 0:
        raise UserError("-ae 0: pretraining (-ptr) needs at least one epoch; drop -ptr to reuse an AE with -ck")
    if (config.get("train") or config.get("end_to_end")) and config.get("epochs") == 0:
        raise UserError("-e 0: training (-tr/-ee) needs at least one epoch; drop it to test a checkpoint with -tt -ck")
    low_high = config.get("rotation_range")
    if low_high is not None and (len(low_high) != 2 or float(low_high[0]) > float(low_high[1])):
        raise UserError(f"--rotation-range {low_high}: give LOW HIGH with LOW <= HIGH")
    check_writable(config.get("output_path"), "--output_path")
    check_writable(cache_dir(), "the cache folder (MOCCA_CACHE)")


def check_writable(path: str | Path | None, what: str) -> None:
    """A folder that exists (or can be made) and can be written; UserError otherwise."""
    if path is None:
        return
    path = Path(path)
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder; pass a folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {existing} is not writable; pass a folder you can write to")


RUN_LIST_KEYS = {"classes": "normal_class", "seeds": "seed"}  # --classes / --seeds -> one run per value


def expand_runs(parser: argparse.ArgumentParser, argv: Sequence[str], config: dict[str, Any]) -> list[dict[str, Any]]:
    """One config per --classes x --seeds run, each as ``-nc <class> -s <seed>`` alone would resolve it.

    Runs trained together must share every other setting: a YAML ``per_class`` section that changes
    one for some class is refused (run that class on its own).
    """
    lists = {key: config.pop(key, None) for key in RUN_LIST_KEYS}
    classes = lists["classes"] or [config["normal_class"]]
    seeds = lists["seeds"] or [config["seed"]]
    if len(classes) * len(seeds) > 1:
        for c in classes:
            other = resolve_config(parser, [*argv, "-nc", str(c)])
            diff = sorted(k for k in config if k != "normal_class" and other[k] != config[k])
            if diff:
                raise UserError(f"class {c} has its own settings in {config['config_file']} ({', '.join(diff)}): "
                                "runs trained together must share every setting; run that class separately")
    return [{**config, "normal_class": c, "seed": s} for c in classes for s in seeds]


def video_parser() -> argparse.ArgumentParser:
    """The authors' main_shanghaitech.py flags, plus the dataset choice and frame size."""
    p = FlagParser("main_shanghaitech.py", description="MOCCA on video (ShanghaiTech, Ped2, Avenue)")
    _common_flags(p, code_length=2048, batch_size=4, warm_up=5, two_stage=False, layer_reduction="sum")
    p.add_argument("--use-selectors", dest="use_selectors", action="store_true", default=False,
                   help="3-D selector modules before the LSTMs (same as -use)")
    p.add_argument("--dataset", choices=["shanghaitech", "ped2", "avenue"], default="shanghaitech")
    p.add_argument("-dp", "--data-path", dest="data_path", type=str, default="./ShanghaiTech")
    p.add_argument("--labels", type=str, default=None, help="frame-label file (.npy of all test frames, or ped2.mat)")
    p.add_argument("--frame-size", dest="frame_size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    p.add_argument("--remove-background", dest="remove_background", choices=["auto", "yes", "no"], default="auto",
                   help="MOG2 background removal at load time (auto: yes for ped2/avenue, no for the "
                        "preprocessed ShanghaiTech layout)")
    p.add_argument("--background-recipe", dest="background_recipe", choices=["lsa", "native"], default="lsa",
                   help="lsa: resize, then MOG2 with OpenCV defaults and 3x3-cross dilation (LSA's recipe); "
                        "native: MOG2 at native size (history = frames, no shadows), 3x3-square dilation, then resize")
    p.add_argument("-cl", "--clip-length", dest="clip_length", type=int, default=16)
    p.add_argument("-ee", "--end-to-end-training", dest="end_to_end", action="store_true", default=False,
                   help="single-stage training of AE + LSTM heads on reconstruction + one-class loss")
    p.add_argument("-ll", "--load-lstm", dest="load_lstm", action="store_true", default=False,
                   help="accepted for compatibility: the LSTM heads are always built (they are the video selectors)")
    p.add_argument("-bdl", "--bidirectional", action="store_true", default=False)
    p.add_argument("-hs", "--hidden-size", dest="hidden_size", type=int, default=100)
    p.add_argument("-nl", "--num-layers", dest="num_layers", type=int, default=1)
    p.add_argument("-drp", "--dropout", type=float, default=0.0)
    p.add_argument("-use", dest="use_selectors_video", action="store_true", default=False,
                   help="3-D selector modules before the LSTMs (same as --use-selectors)")
    p.add_argument("-opt", "--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("-lf", "--log-frequency", dest="log_frequency", type=int, default=5, help="accepted; one line per epoch")
    p.add_argument("-dl", "--disable-logging", dest="disable_logging", action="store_true", default=False)
    p.add_argument("-ba", "--batch-accumulation", dest="batch_accumulation", type=int, default=-1,
                   help="accepted for compatibility; unused (as in the authors' video code)")
    p.add_argument("--clips-per-epoch", dest="clips_per_epoch", type=int, default=10000,
                   help="random training clips per epoch (authors: 10,000)")
    p.add_argument("--centroid-clips", dest="centroid_clips", type=int, default=10000,
                   help="random training clips for the initial centroids (authors: one pass of 10,000)")
    p.add_argument("--test-batch-size", dest="test_batch_size", type=int, default=8)
    p.add_argument("--recon-weight", dest="recon_weight", type=float, default=1.0,
                   help="weight of the reconstruction loss next to the one-class loss (authors: 1)")
    p.add_argument("--authors-reshape", dest="authors_reshape", action="store_true", default=False,
                   help="decoder reshape exactly as the authors (mixes time and space) instead of the clean transpose")
    return p


def video_config(argv: Sequence[str]) -> dict[str, Any]:
    """Flags -> config: the chosen dataset's shipped YAML unless --config is given; -use and --use-selectors agree."""
    argv = list(argv)
    if "--config" not in argv:  # the shipped config of the chosen dataset
        dataset = video_parser().parse_known_args(argv)[0].dataset
        argv = ["--config", str(CONFIG_DIR / f"{dataset}.yaml")] + argv
    config = resolve_config(video_parser(), argv)
    config["use_selectors"] = bool(config["use_selectors"] or config.pop("use_selectors_video"))
    return test_only_config(video_parser(), argv, config)


# Settings a test-only run may take from its own flags even though they are stored with the run:
# -db (score a subset) and -bs (how many test images go through the model at once).
_TEST_TIME_KEYS = {"debug", "batch_size"}


def arch_settings(arch: dict[str, Any]) -> dict[str, Any]:
    """The config keys a checkpoint's ``arch`` pins down (for a checkpoint without its config.yaml)."""
    out: dict[str, Any] = {}
    if "layers" in arch:
        out["idx_list_enc"] = [int(k) for k in arch["layers"]]
    for key in ("boundary", "nu", "code_length", "use_selectors", "hidden_size", "num_layers", "bidirectional",
                "authors_reshape"):
        if key in arch:
            out[key] = arch[key]
    if arch.get("model") == "video3d" and "input_shape" in arch:
        _, t, h, w = arch["input_shape"]
        out.update(clip_length=int(t), frame_size=[int(h), int(w)])
    return out


def test_only_config(parser: argparse.ArgumentParser, argv: Sequence[str], config: dict[str, Any]) -> dict[str, Any]:
    """-tt -ck <model.pt> alone: the run's settings come from the checkpoint, not from defaults.

    They are read from the checkpoint's own config.yaml (beside it) or, without one, from its
    ``arch``; the run folder is then named from them. A flag given on the command line that
    contradicts them is refused in one line (a test-only run cannot change how a model was trained).
    """
    from utils.checkpoint import load_checkpoint
    from utils.results import CONFIG_FILE, NON_RESULT_KEYS

    training = config.get("pretrain") or config.get("train") or config.get("end_to_end")
    if not config.get("test") or training or not config.get("model_ckp"):
        return config
    ckpt = Path(config["model_ckp"])
    if not ckpt.is_file():
        return config  # the pipeline names the missing file
    saved_path = ckpt.parent / CONFIG_FILE
    if saved_path.is_file():
        try:
            saved, source = yaml.safe_load(saved_path.read_text()) or {}, str(saved_path)
        except yaml.YAMLError as err:
            raise UserError(f"{saved_path} (beside -ck) is not valid YAML: {str(err).splitlines()[0]}") from err
    else:
        try:
            saved, source = arch_settings(load_checkpoint(ckpt, ("one_class", "end_to_end"))["arch"]), str(ckpt)
        except ValueError as err:
            raise UserError(str(err)) from err
    explicit = _explicit_flags(parser, argv)
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    out, conflicts = dict(config), []
    for key, value in saved.items():
        if key in NON_RESULT_KEYS or key not in config or (key in _TEST_TIME_KEYS and key in explicit):
            continue
        if key in explicit and explicit[key] != value and config[key] != value:
            conflicts.append(f"{flags.get(key, key)} {config[key]!r} (trained with {value!r})")
        else:
            out[key] = value
    if conflicts:
        raise UserError(f"-tt -ck {ckpt}: {', '.join(conflicts)} contradict the settings the model was trained with "
                        f"({source}); drop those flags: a test-only run takes its settings from the checkpoint")
    return out
