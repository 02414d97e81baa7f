"""Core value types shared by every layer: an :class:`Episode` and the ``Params`` alias."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor

Params = Dict[str, Tensor]


@dataclass(frozen=True)
class Episode:
    """A few-shot task (or a batch of tasks, with a leading dimension B).

    support_x: ([B,] N*K, C, H, W) float   support_y: ([B,] N*K) int64 in [0, ways)
    query_x:   ([B,] N*Q, C, H, W) float   query_y:   ([B,] N*Q) int64 in [0, ways)
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int

    @property
    def batched(self) -> bool:
        return self.support_x.dim() == 5

    def __len__(self) -> int:
        if not self.batched:
            raise TypeError("an unbatched Episode has no length; check Episode.batched first")
        return self.support_x.shape[0]

    def __getitem__(self, i: int) -> "Episode":
        """Task ``i`` of a batched episode."""
        if not self.batched:
            raise TypeError("only a batched Episode (support_x of dim 5) can be indexed")
        return Episode(self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i], self.ways)

    def to(self, device: torch.device | str) -> "Episode":
        return Episode(self.support_x.to(device), self.support_y.to(device),
                       self.query_x.to(device), self.query_y.to(device), self.ways)
