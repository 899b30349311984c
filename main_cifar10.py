"""MOCCA on CIFAR-10: python main_cifar10.py -ptr -tr -tt -zl 128 -nc <class> -dp <CIFAR-10 root>."""
from __future__ import annotations

import sys
from typing import Sequence

from datasets.cifar10 import CIFAR10_CLASSES, load_one_class
from models.lenet import LAYER_INDICES, LeNetAutoencoder, PooledFeatureNet
from trainers.two_stage import ImageExperiment, run_two_stage
from utils.batching import TensorSource
from utils.cli import CONFIG_DIR, cifar10_parser, resolve_config
from utils.errors import UserError, exit_on_user_error

DEFAULT_CONFIG = CONFIG_DIR / "cifar10.yaml"


def build_experiment(config: dict) -> ImageExperiment:
    zl = int(config["code_length"])
    if zl <= 0 or zl % 16:
        raise UserError(f"-zl {zl}: the CIFAR-10 code length must be a positive multiple of 16")
    data = load_one_class(config["data_path"], int(config["normal_class"]), download=config["download"])
    return ImageExperiment(
        dataset="cifar10",
        class_name=f"{data.normal_class}_{CIFAR10_CLASSES[data.normal_class]}",
        train=TensorSource(data.train),
        test=TensorSource(data.test),
        test_labels=data.test_labels,
        make_autoencoder=lambda: LeNetAutoencoder(zl),
        make_feature_net=PooledFeatureNet,
        arch={"model": "lenet", "code_length": zl},
        valid_layers=LAYER_INDICES,
        test_columns={"class": data.test_classes.tolist()},
        summary={"normal_class": data.normal_class},
    )


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG)] + argv
    config = resolve_config(cifar10_parser(), argv)
    return run_two_stage(build_experiment(config), config)


if __name__ == "__main__":
    main()
