"""--compile: the flag reaches the training stages, a compiled tiny run trains like an eager one, and a
broken compiler toolchain is a one-line UserError instead of a traceback from deep inside torch."""
from pathlib import Path

import pytest
import torch
import torch._inductor.config as inductor_config
from torch import nn

from trainers.engine import StageSettings
from trainers.mocca import MOCCA, MethodSettings
from trainers.settings import stage_settings
from utils.batching import TensorSource
from utils.checkpoint import load_checkpoint
from utils.cli import cifar10_parser, resolve_config, video_parser


def tiny_run(checkpoint: Path, compile: bool) -> list[float]:
    """Two epochs of AE pretraining of a 12-4-12 autoencoder on 16 fixed samples; the loss per epoch.

    In float64: compiled kernels may fuse and reorder sums, which in float32 moves the loss by an
    amount that depends on the CPU's vector width; in float64 that is ~1e-15 and equality is testable.
    """
    torch.manual_seed(0)
    ae = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 12), nn.Unflatten(1, (3, 2, 2)))
    ae = ae.double()
    data = TensorSource(torch.rand(16, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    settings = StageSettings("pretrain", epochs=2, learning_rate=1e-2, weight_decay=0.0, progress=False,
                             compile=compile)
    mocca = MOCCA(lambda: ae, None, {}, MethodSettings([0], batch_size=4, pretrain=settings), device="cpu")
    history = mocca.pretrain(data, checkpoint, log=lambda s: None)
    return [row["loss"] for row in history]


def test_flag_defaults_off_and_reaches_the_stage_settings():
    assert resolve_config(cifar10_parser(), [])["compile"] is False
    assert resolve_config(video_parser(), ["--compile"])["compile"] is True
    config = resolve_config(cifar10_parser(), ["--compile"])
    assert stage_settings(config, "pretrain", "ae_").compile and stage_settings(config, "train").compile


def test_compiled_tiny_run_gives_the_eager_loss_and_the_same_checkpoint_keys(tmp_path):
    compiled = tiny_run(tmp_path / "compiled.pt", compile=True)
    eager = tiny_run(tmp_path / "eager.pt", compile=False)
    assert compiled == pytest.approx(eager, rel=1e-9)
    keys = lambda name: set(load_checkpoint(tmp_path / name, "autoencoder")["state"])  # noqa: E731
    assert keys("compiled.pt") == keys("eager.pt")  # compiled in place: no _orig_mod. prefix


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_missing_cxx_compiler_is_a_user_error(tmp_path, monkeypatch):
    torch._dynamo.reset()  # no frame compiled by an earlier test may be reused
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    monkeypatch.setattr(inductor_config, "force_disable_caches", True)
    with pytest.raises(ValueError, match="--compile: torch.compile failed .*run without --compile"):
        tiny_run(tmp_path / "broken.pt", compile=True)
    torch._dynamo.reset()
