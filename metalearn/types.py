"""Core value types shared by every layer: an [`Episode`][metalearn.types.Episode] and the
[`Params`][metalearn.types.Params] alias."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor

Params = Dict[str, Tensor]
"""Parameters or buffers of a model as a dict, name -> tensor (the names of ``model.named_parameters()``)."""


@dataclass(frozen=True)
class Episode:
    """A few-shot task (or a batch of tasks, with a leading dimension B).

    Any other input shape works too (a regression task: x (n, d), y (n, 1) float): set ``batch`` to say
    whether the first dimension indexes tasks. ``batch=None`` (the default) infers it from images: a 5-d
    ``support_x`` is a batch of tasks.

    Attributes:
        support_x: ([B,] N*K, C, H, W) float support images.
        support_y: ([B,] N*K) int64 support labels in [0, ways).
        query_x: ([B,] N*Q, C, H, W) float query images.
        query_y: ([B,] N*Q) int64 query labels in [0, ways).
        ways: N, classes per task.
        batch: Whether the first dimension indexes tasks; None infers it (5-d ``support_x``: a batch).

    Examples:
        >>> ep = Episode(torch.zeros(5, 1, 28, 28), torch.arange(5), torch.zeros(10, 1, 28, 28),
        ...              torch.arange(5).repeat(2), ways=5)
        >>> ep.batched
        False
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int
    batch: bool | None = None

    def __post_init__(self) -> None:
        if self.batch is not None and not isinstance(self.batch, bool):
            raise TypeError(f"batch: expected True, False or None, got {self.batch!r}")
        if self.batch:
            sizes = {t.shape[0] if t.dim() else None for t in
                     (self.support_x, self.support_y, self.query_x, self.query_y)}
            if len(sizes) != 1 or None in sizes:
                raise ValueError("Episode(batch=True): support_x, support_y, query_x and query_y need the same "
                                 f"first (task) dimension, got {tuple(self.support_x.shape)}, "
                                 f"{tuple(self.support_y.shape)}, {tuple(self.query_x.shape)}, "
                                 f"{tuple(self.query_y.shape)}")

    @property
    def batched(self) -> bool:
        """Whether the first dimension indexes tasks (``batch``, or a 5-d image ``support_x``)."""
        return self.batch if self.batch is not None else self.support_x.dim() == 5

    def __len__(self) -> int:
        if not self.batched:
            raise TypeError("an unbatched Episode has no length; check Episode.batched first")
        return self.support_x.shape[0]

    def __getitem__(self, i: int) -> "Episode":
        """Task ``i`` of a batched episode."""
        if not self.batched:
            raise TypeError("only a batched Episode (support_x of dim 5, or batch=True) can be indexed")
        # one task (an int) is not a batch; a slice of tasks still is
        batch = None if self.batch is None else not isinstance(i, int)
        return Episode(self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i], self.ways, batch)

    def to(self, device: torch.device | str) -> "Episode":
        """The same episode with its four tensors on ``device``."""
        return Episode(self.support_x.to(device), self.support_y.to(device),
                       self.query_x.to(device), self.query_y.to(device), self.ways, self.batch)
