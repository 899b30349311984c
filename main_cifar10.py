"""MOCCA on CIFAR-10: python main_cifar10.py -ptr -tr -tt -zl 128 -nc <class> -dp <CIFAR-10 root>.

``--classes 0 1 --seeds 0 1 2`` trains those K = 6 runs as one grouped model (the same results as
six runs one after another, one run folder each); made for GPUs, where one LeNet fills little.
"""
from __future__ import annotations

import sys
from typing import Sequence

from datasets.cifar10 import CIFAR10_CLASSES, load_one_class
from models.lenet import LAYER_INDICES, LeNetAutoencoder, PooledFeatureNet
from models.lenet_grouped import GroupedLeNetAutoencoder, GroupedPooledFeatureNet, stack_runs
from trainers.settings import choose_layers, method_settings, pipeline_settings
from trainers.two_stage import ImageExperiment, ImageRun, ModelGroup, run_two_stage
from utils import results
from utils.batching import TensorSource
from utils.cli import CONFIG_DIR, cifar10_parser, expand_runs, resolve_config, test_only_config
from utils.errors import exit_on_user_error

DEFAULT_CONFIG = CONFIG_DIR / "cifar10.yaml"


def build_experiment(configs: list[dict], layers: list[int]) -> ImageExperiment:
    zl = int(configs[0]["code_length"])
    if zl <= 0 or zl % 16:
        raise ValueError(f"-zl {zl}: the CIFAR-10 code length must be a positive multiple of 16")
    data = {}
    for c in dict.fromkeys(int(cfg["normal_class"]) for cfg in configs):  # each class decoded once
        data[c] = load_one_class(configs[0]["data_path"], c, download=configs[0]["download"])
    runs = []
    for cfg in configs:
        d = data[int(cfg["normal_class"])]
        name = f"{d.normal_class}_{CIFAR10_CLASSES[d.normal_class]}"
        runs.append(ImageRun(name, int(cfg["seed"]), results.run_dir_for(cfg, "cifar10", name, layers), cfg,
                             TensorSource(d.train), TensorSource(d.test), d.test_labels,
                             test_columns={"class": d.test_classes.tolist()}, summary={"normal_class": d.normal_class}))
    return ImageExperiment(
        dataset="cifar10", runs=runs,
        make_autoencoder=lambda: LeNetAutoencoder(zl), make_feature_net=PooledFeatureNet,
        arch={"model": "lenet", "code_length": zl},
        group=ModelGroup(GroupedLeNetAutoencoder.from_models, GroupedPooledFeatureNet, stack_runs),
        group_column="class",
    )


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict | list[dict] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG)] + argv
    parser = cifar10_parser()
    config = test_only_config(parser, argv, resolve_config(parser, argv))
    configs = expand_runs(parser, argv, config)
    layers = choose_layers(config["idx_list_enc"], LAYER_INDICES)
    return run_two_stage(build_experiment(configs, layers), method_settings(configs[0], layers),
                         pipeline_settings(configs[0]), log=print)


if __name__ == "__main__":
    main()
