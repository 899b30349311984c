"""Config precedence: parser defaults < YAML < presets < explicit flags."""
import pytest

from utils.cli import cifar10_parser, resolve_config
from utils.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_then_yaml_then_preset_then_flags(tmp_path):
    cfg = write(tmp_path, "epochs: 7\nnu: 0.05\nbatch_size: 64\npresets:\n  fast:\n    epochs: 2\n    nu: 0.2\n")
    config = resolve_config(cifar10_parser(), ["--config", cfg])
    assert (config["epochs"], config["nu"], config["batch_size"], config["ae_epochs"]) == (7, 0.05, 64, 1)
    config = resolve_config(cifar10_parser(), ["--config", cfg, "--preset", "fast"])
    assert (config["epochs"], config["nu"]) == (2, 0.2)
    config = resolve_config(cifar10_parser(), ["--config", cfg, "--preset", "fast", "-e", "9", "-bs", "256"])
    assert (config["epochs"], config["nu"], config["batch_size"]) == (9, 0.2, 256)


def test_flag_equal_to_default_still_overrides_yaml(tmp_path):
    cfg = write(tmp_path, "boundary: hard\n")
    assert resolve_config(cifar10_parser(), ["--config", cfg, "-bd", "soft"])["boundary"] == "soft"


def test_authors_flags_parse():
    config = resolve_config(cifar10_parser(), "-ptr -tr -tt -zl 128 -nc 1 -dp /x -ile 3 0".split())
    assert config["pretrain"] and config["train"] and config["test"]
    assert (config["code_length"], config["normal_class"], config["idx_list_enc"]) == (128, 1, [3, 0])


def test_unknown_yaml_key_and_missing_preset_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown key 'epoch'"):
        resolve_config(cifar10_parser(), ["--config", write(tmp_path, "epoch: 3\n")])
    with pytest.raises(UserError, match="preset 'gpu'"):
        resolve_config(cifar10_parser(), ["--config", write(tmp_path, "epochs: 3\n"), "--preset", "gpu"])
    with pytest.raises(UserError, match="not found"):
        resolve_config(cifar10_parser(), ["--config", str(tmp_path / "none.yaml")])


def test_shipped_cifar_config_is_valid():
    from main_cifar10 import DEFAULT_CONFIG

    config = resolve_config(cifar10_parser(), ["--config", str(DEFAULT_CONFIG), "--preset", "cpu", "holistic"])
    assert config["idx_list_enc"] == [3] and config["code_length"] == 128


def test_mvtec_cpu_preset_switches_and_their_flags():
    from utils.cli import CONFIG_DIR, mvtec_parser

    def config(*argv):
        return resolve_config(mvtec_parser(), ["--config", str(CONFIG_DIR / "mvtec.yaml"), *argv])

    assert config()["rotation"] is True and config()["recalibrate_bn"] is False  # the paper's pipeline
    cpu = config("--preset", "cpu")
    assert cpu["recalibrate_bn"] is True and cpu["learning_rate"] == 1e-4
    assert config("--preset", "cpu", "--no-recalibrate-bn")["recalibrate_bn"] is False  # a flag beats the preset
    assert config("--no-rotation")["rotation"] is False


def test_flags_that_would_do_nothing_are_refused():
    from utils.cli import video_parser

    with pytest.raises(UserError, match="--use-selectors: CIFAR-10 has no selectors"):
        resolve_config(cifar10_parser(), ["--use-selectors"])
    for flag in (["-alr", "1e-3"], ["-awd", "1e-6"], ["-aml", "5"], ["-ae", "3"]):
        with pytest.raises(UserError, match=f"^{flag[0]}: video trains in one stage"):
            resolve_config(video_parser(), flag)
    assert "ae_epochs" not in resolve_config(video_parser(), [])  # nor stored as if it meant something


def test_mvtec_default_is_the_papers_model_with_selectors():
    from utils.cli import CONFIG_DIR, mvtec_parser

    def config(*argv):
        return resolve_config(mvtec_parser(), ["--config", str(CONFIG_DIR / "mvtec.yaml"), *argv])

    assert config()["use_selectors"] is True and config("--preset", "cpu")["use_selectors"] is True
    assert config("--no-selectors")["use_selectors"] is False
    assert config("--use-selector")["use_selectors"] is True  # the authors' README spelling (a prefix)
    assert resolve_config(mvtec_parser(), [])["use_selectors"] is True  # without the YAML too


def test_layer_reduction_defaults_mean_for_images_sum_for_video():
    from utils.cli import mvtec_parser, video_parser

    assert resolve_config(cifar10_parser(), [])["layer_reduction"] == "mean"  # paper eq. 4
    assert resolve_config(mvtec_parser(), [])["layer_reduction"] == "mean"
    assert resolve_config(video_parser(), [])["layer_reduction"] == "sum"  # the authors' video objective
    assert resolve_config(video_parser(), ["--layer-reduction", "mean"])["layer_reduction"] == "mean"


def test_deterministic_switches():
    import torch

    from utils.runtime import set_seed

    before = torch.are_deterministic_algorithms_enabled()
    try:
        set_seed(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic = False
