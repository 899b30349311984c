"""Command-line flags (the authors' names, so their README commands work) and YAML configs.

Precedence, lowest to highest: parser defaults < YAML file (``--config``) < YAML presets
(``--preset``, sections of the same file) < flags given on the command line. The resolved
config is a plain dict saved with every run.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, Sequence

import yaml

from utils.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
# keys that only steer the CLI and are never stored as hyperparameters
_META_KEYS = {"config", "preset"}


def _common_flags(p: argparse.ArgumentParser, *, code_length: int, batch_size: int, warm_up: int) -> None:
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
    p.add_argument("-alr", "--ae-learning-rate", dest="ae_learning_rate", type=float, default=1e-4)
    p.add_argument("-lr", "--learning-rate", dest="learning_rate", type=float, default=1e-4)
    p.add_argument("-awd", "--ae-weight-decay", dest="ae_weight_decay", type=float, default=0.5e-6)
    p.add_argument("-wd", "--weight-decay", dest="weight_decay", type=float, default=0.5e-6)
    p.add_argument("-aml", "--ae-lr-milestones", dest="ae_lr_milestones", type=int, nargs="*", default=[])
    p.add_argument("-ml", "--lr-milestones", dest="lr_milestones", type=int, nargs="*", default=[])
    p.add_argument("-we", "--warm_up_n_epochs", dest="warm_up_n_epochs", type=int, default=warm_up,
                   help="epochs before the soft-boundary radius starts being re-estimated")
    p.add_argument("--use-selectors", dest="use_selectors", action="store_true", default=False)
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
    p.add_argument("-ae", "--ae-epochs", dest="ae_epochs", type=int, default=1, help="AE pretraining epochs")
    p.add_argument("-nu", "--nu", type=float, default=0.1)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue a killed run from the checkpoints in its run folder")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=False,
                   help="use the channels_last memory format (faster convolutions on many CPUs/GPUs)")
    p.add_argument("--amp", action="store_true", default=False, help="bf16 autocast on CUDA")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", default=False,
                   help="no tqdm bars (one log line per epoch is still printed)")


def cifar10_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("main_cifar10.py", description="MOCCA on CIFAR-10 (one class = normal)")
    _common_flags(p, code_length=32, batch_size=256, warm_up=10)
    p.add_argument("-dp", "--data-path", dest="data_path", type=str, default="./cifar10",
                   help="cifar-10-batches-py root, an image-folder root (train/<class>/*.jpg), or its .tar.gz")
    p.add_argument("-nc", "--normal-class", dest="normal_class", type=int, default=5, help="normal class 0-9")
    p.add_argument("--download", action="store_true", default=False,
                   help="download the official CIFAR-10 pickles into -dp if missing (needs internet)")
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


def resolve_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Defaults < YAML < presets < explicit flags, as one dict."""
    args = parser.parse_args(argv)
    explicit = _explicit_flags(parser, argv)
    config = {k: v for k, v in vars(args).items() if k not in _META_KEYS}
    if args.config:
        data = load_yaml(args.config)
        presets = data.pop("presets", {}) or {}
        _apply(config, data, args.config)
        for name in args.preset:
            if name not in presets:
                raise UserError(f"preset {name!r} not in {args.config}; available: {', '.join(presets) or 'none'}")
            _apply(config, presets[name], f"{args.config} preset {name!r}")
    elif args.preset:
        raise UserError("--preset needs --config <file> holding a 'presets:' section")
    _apply(config, {k: v for k, v in explicit.items() if k not in _META_KEYS}, "the command line")
    config["config_file"] = args.config
    config["presets"] = list(args.preset)
    return config
