"""Shared test fixtures: where the real data lives, and an isolated cache per test session."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
CIFAR10_DATA = SHARED_DATA / "cifar10"


@pytest.fixture
def isolated_cache(tmp_path_factory, monkeypatch):
    """Point the decode cache at this test session's temp folder (never the user's ~/.cache/mocca)."""
    monkeypatch.setenv("MOCCA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def one_thread():
    """One intra-op thread: the machine is shared, and 2 spinning OpenMP threads are 30x slower here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def require(path: Path) -> Path:
    """Skip the test when a shared data folder is absent (e.g. a user's clone without ../shared)."""
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return path


def expect_user_error(main, capsys, argv) -> str:
    """Run an entry point that must fail on bad input: exit code 2 and exactly one 'error:' line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


class Killed(BaseException):
    """Stands in for kill -9: not an Exception, so no handler of the project catches it."""


def kill_after_saves(monkeypatch, module, n: int) -> None:
    """Make ``module.save_checkpoint`` end the process (raise ``Killed``) right after its n-th write,
    as a kill between two epochs would; the checkpoints written so far stay on disk."""
    original = module.save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        calls.append(1)
        if len(calls) >= n:
            monkeypatch.setattr(module, "save_checkpoint", original)
            raise Killed

    monkeypatch.setattr(module, "save_checkpoint", save_then_die)
