"""MOCCA on MVTec AD: python main_mvtec.py -ptr -tr -tt -zl 128 -nc bottle -dp <MVTec AD root> --use-selector."""
from __future__ import annotations

import sys
from typing import Sequence


from datasets.mvtec import (PATCHES_PER_IMAGE, category_spec, downscale, extract_patches, load_mvtec,
                            to_model_range, train_batch_transform)
from models.residual2d import LAYER_INDICES, ResidualAutoencoder, ResidualFeatureNet
from trainers.settings import choose_layers, method_settings, pipeline_settings
from trainers.two_stage import ImageExperiment, ImageRun, run_two_stage
from utils import results
from utils.batching import TensorSource
from utils.cli import CONFIG_DIR, mvtec_parser, resolve_config, test_only_config
from utils.errors import exit_on_user_error

DEFAULT_CONFIG = CONFIG_DIR / "mvtec.yaml"


def build_experiment(config: dict, layers: list[int]) -> ImageExperiment:
    spec = category_spec(config["normal_class"], texture=config["texture"], rotation=config["rotation_range"])
    if int(config["batch_accumulation"]) not in (-1, 1):
        raise ValueError("-ba (gradient accumulation) is not supported; raise -bs instead")
    zl, use_sel = int(config["code_length"]), bool(config["use_selectors"])
    data = load_mvtec(config["data_path"], spec)
    input_size = spec.input_size
    if not spec.is_texture and int(config["image_size"]) != spec.image_size:  # a smaller CPU setting
        input_size = int(config["image_size"])
        data.train, data.test = (downscale(t, input_size) for t in (data.train, data.test))
    augment = train_batch_transform(spec, rotation=bool(config["rotation"]))

    def train_transform(batch, generator):  # augment on uint8 (cheap), then scale to [-1, 1]
        return to_model_range(augment(batch, generator))

    if spec.is_texture:  # eq. 7: a test image is its 64 non-overlapping patches, scored by their max
        test_transform = lambda batch, gen: to_model_range(extract_patches(batch))  # noqa: E731
    else:
        test_transform = lambda batch, gen: to_model_range(batch)  # noqa: E731
    run = ImageRun(
        spec.name, int(config["seed"]), results.run_dir_for(config, "mvtec", spec.name, layers), config,
        train=TensorSource(data.train, train_transform, samples_per_epoch=config["samples_per_epoch"] or None),
        test=TensorSource(data.test, test_transform),
        test_labels=data.test_labels.numpy(),
        test_columns={"defect": list(data.test_defects)}, test_masks=data.test_masks,
        summary={"is_texture": spec.is_texture, "category": spec.name, "official_category": spec.official})
    return ImageExperiment(
        dataset="mvtec", runs=[run],
        make_autoencoder=lambda: ResidualAutoencoder(input_size, zl),
        make_feature_net=lambda encoder, layers: ResidualFeatureNet(encoder, layers, use_sel),
        arch={"model": "residual2d", "input_size": input_size, "code_length": zl},
        net_arch={"use_selectors": use_sel},
        patches_per_image=PATCHES_PER_IMAGE if spec.is_texture else None, group_column="defect",
    )


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG)] + argv
    parser = mvtec_parser()
    config = test_only_config(parser, argv, resolve_config(parser, argv))
    if config["disable_logging"]:
        config["no_progress"] = True
    log = (lambda s: None) if config["disable_logging"] else print
    layers = choose_layers(config["idx_list_enc"], LAYER_INDICES)
    return run_two_stage(build_experiment(config, layers), method_settings(config, layers), pipeline_settings(config),
                         log)


if __name__ == "__main__":
    main()
