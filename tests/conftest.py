"""Shared test fixtures: where the real data lives, and an isolated cache per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
CIFAR10_DATA = SHARED_DATA / "cifar10"


def require(path: Path) -> Path:
    """Skip the test when a shared data folder is absent (e.g. a user's clone without ../shared)."""
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return path
