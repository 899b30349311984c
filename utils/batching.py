"""Mini-batches from tensors that are already decoded and resident (on the CPU or the GPU).

No DataLoader, no per-sample Python work: a permutation is drawn once per epoch and batches are
slices of one tensor. Augmentation, if any, runs on whole batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

BatchTransform = Callable[[Tensor, Optional[torch.Generator]], Tensor]


def batch_slices(n: int, batch_size: int, limit: int | None = None,
                 drop_singleton: bool = False) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch over ``n`` samples; at most ``limit`` batches.

    ``drop_singleton`` skips a final batch of one sample (BatchNorm cannot train on it).
    """
    for i, start in enumerate(range(0, n, batch_size)):
        if limit is not None and i >= limit:
            return
        stop = min(start + batch_size, n)
        if drop_singleton and stop - start == 1 and n > 1:
            return
        yield start, stop


@dataclass
class TensorSource:
    """A resident training/test set plus an optional batch transform (e.g. uint8 -> float, augment)."""

    data: Tensor
    transform: BatchTransform | None = None
    samples_per_epoch: int | None = None  # draw this many per epoch (several passes, each reshuffled)

    def __len__(self) -> int:
        return int(self.samples_per_epoch or self.data.shape[0])

    def n_batches(self, batch_size: int, limit: int | None = None) -> int:
        n = -(-len(self) // batch_size)
        return min(n, limit) if limit else n

    def to(self, device: torch.device) -> "TensorSource":
        """The same source with its data resident on ``device`` (transform and epoch length kept)."""
        if self.data.device == device:
            return self
        return TensorSource(self.data.to(device), self.transform, self.samples_per_epoch)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                limit: int | None = None, drop_singleton: bool = False) -> Iterator[Tensor]:
        """Yield batches (see ``batch_slices`` for ``limit`` and ``drop_singleton``)."""
        n = len(self)
        order = self._order(n, generator) if shuffle or n != self.data.shape[0] else None
        for start, stop in batch_slices(n, batch_size, limit, drop_singleton):
            x = self.data[order[start:stop]] if order is not None else self.data[start:stop]
            yield self.transform(x, generator) if self.transform is not None else x

    def _order(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``n`` indices: as many fresh permutations of the data as needed (the authors' replicated set)."""
        size = int(self.data.shape[0])
        passes = [torch.randperm(size, generator=generator) for _ in range(-(-n // size))]
        return torch.cat(passes)[:n].to(self.data.device)
