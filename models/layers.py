"""The one rule for layer indices (the -ile flag), shared by every model and by the pipelines.

Each model file holds its own ``LAYER_NAMES`` map (index -> the module whose output is used);
a selection is a non-empty list of distinct indices of that map, in any order.
"""
from __future__ import annotations

from typing import Mapping, Sequence


def check_layer_indices(layer_indices: Sequence[int], names: Mapping[int, str]) -> tuple[int, ...]:
    """``layer_indices`` as a tuple (order kept); ValueError naming the valid indices otherwise."""
    indices = tuple(layer_indices)
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or i not in names]
    if not indices or bad or len(set(indices)) != len(indices):
        valid = ", ".join(f"{k}={v}" for k, v in names.items())
        raise ValueError(f"layer indices {list(indices)} are invalid: give distinct values from {valid}")
    return indices
