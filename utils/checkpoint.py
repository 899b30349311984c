"""Checkpoints: atomic writes and a clear error for files made by another architecture.

Every checkpoint carries ``kind`` (which stage wrote it) and ``arch`` (the settings that decide
the shapes of the weights), so loading a file into the wrong model fails with one line, not a
page of size-mismatch messages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from utils.io import atomic_path

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, kind: str, arch: dict[str, Any], **payload: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT_VERSION, "kind": kind, "arch": arch, **payload}, tmp)


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...], arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load on the CPU; check the stage kind and, if given, the architecture."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: check -ck / the run folder")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}); it is corrupt or not a checkpoint of this project") from err
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise ValueError(f"checkpoint {path} was not written by this project (no 'kind' field)")
    if ckpt["kind"] not in kinds:
        raise ValueError(f"checkpoint {path} holds a {ckpt['kind']!r} stage, expected {' or '.join(kinds)}")
    if arch is not None:
        saved = ckpt.get("arch", {})
        diff = {k: (saved.get(k), v) for k, v in arch.items() if saved.get(k) != v}
        if diff:
            text = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"checkpoint {path} is for another architecture ({text}); pass matching flags")
    return ckpt


def replace_state(path: str | Path, kind: str, state: dict[str, Any]) -> None:
    """Rewrite the model weights of an existing checkpoint (atomically), keeping everything else."""
    update_checkpoint(path, kind, state=state)


def update_checkpoint(path: str | Path, kind: str, **fields: Any) -> None:
    """Set some fields of an existing checkpoint (atomically), keeping everything else."""
    ckpt = load_checkpoint(path, kind)
    payload = {k: v for k, v in ckpt.items() if k not in ("format", "kind", "arch")}
    save_checkpoint(path, kind, ckpt["arch"], **{**payload, **fields})
