"""Seeds, device choice and a record of the software environment of a run."""
from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn



def set_seed(seed: int, deterministic: bool = False) -> torch.Generator | None:
    """Seed Python, NumPy and torch; return a torch generator for data order (None when unseeded).

    On the CPU seeded runs already repeat exactly. On CUDA several kernels (cuDNN algorithm choice,
    atomic adds in some backward passes, cuBLAS workspaces) do not; ``deterministic`` switches
    them to their reproducible versions (an op without one then raises instead of drifting).
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if seed < 0:
        return None
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """'auto' = CUDA when present, else CPU; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    return torch.device(name)


def module_device(module: nn.Module) -> torch.device:
    """Where a module's weights live (its first parameter or buffer; CPU for an empty module).

    Every tensor a pipeline creates next to a model (batches, loss sums, centroids, radii, scores)
    is put on this device, so "where does this live" has one answer: where the model was put by
    ``pick_device``.
    """
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def batch_placer(device: torch.device, channels_last: bool = False) -> Callable[[Tensor], Tensor]:
    """The one rule for every batch fed to a model: move it to ``device`` (a no-op for resident data)
    and lay it out as the model's weights are (channels_last for 4-D image batches, channels_last_3d
    for 5-D clips, when asked)."""

    def place(x: Tensor) -> Tensor:
        x = x.to(device, non_blocking=True)
        return x.contiguous(memory_format=memory_format(x.dim(), channels_last)) if channels_last else x

    return place


def memory_format(ndim: int, channels_last: bool) -> torch.memory_format:
    """The layout of a ``ndim``-dimensional batch (or conv weight) under --channels-last."""
    if channels_last and ndim == 4:
        return torch.channels_last
    if channels_last and ndim == 5:
        return torch.channels_last_3d
    return torch.contiguous_format


def code_version() -> str:
    """The git commit of the project (with '+dirty' for uncommitted changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "code_version": code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
