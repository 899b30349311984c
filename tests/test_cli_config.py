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
