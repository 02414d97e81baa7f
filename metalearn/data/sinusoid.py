"""Sinusoid regression tasks (Finn, Abbeel & Levine 2017, section 5.1).

A task is y = A·sin(x − φ) with amplitude A ~ U[0.1, 5.0] and phase φ ~ U[0, π]; inputs x ~ U[−5, 5]. Each
draw is a batch of tasks as an [`Episode`][metalearn.types.Episode] with ``batch=True``: support (B, K, 1) and
query (B, Q, 1) inputs and targets, on the generator's device, seeded.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from metalearn.types import Episode


class SinusoidTasks:
    """Seeded sampler of sinusoid regression tasks.

    Args:
        shots: K, support points per task.
        queries: query points per task (the points the adapted model is scored on).
        batch_size: tasks per draw (the meta-batch).
        amplitude: (low, high) of the uniform amplitude A (the paper's: 0.1 to 5).
        phase: (low, high) of the uniform phase φ (the paper's: 0 to π).
        x_range: (low, high) of the uniform inputs x (the paper's: −5 to 5).
        seed: seeds a ``torch.Generator``; the same seed gives the same tasks.
        device: where the tasks are drawn and returned.
        dtype: the floating-point type of inputs and targets.

    Raises:
        ValueError: a size below 1, or a range that is not finite with low <= high.

    Examples:
        >>> tasks = SinusoidTasks(shots=10, queries=10, batch_size=25, seed=0)
        >>> ep = tasks.sample()
        >>> ep.support_x.shape, ep.batched
        (torch.Size([25, 10, 1]), True)
    """

    def __init__(self, shots: int, queries: int, batch_size: int = 25, *,
                 amplitude: tuple[float, float] = (0.1, 5.0), phase: tuple[float, float] = (0.0, math.pi),
                 x_range: tuple[float, float] = (-5.0, 5.0), seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        for key, v in (("shots", shots), ("queries", queries), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key}: expected an integer >= 1, got {v!r}")
        for key, (lo, hi) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"{key}: expected finite (low, high) with low <= high, got {(lo, hi)}")
        self.shots, self.queries, self.batch_size = shots, queries, batch_size
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.device, self.dtype = torch.device(device), dtype
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def _uniform(self, shape: tuple, lo: float, hi: float) -> Tensor:
        u = torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype)
        return lo + (hi - lo) * u

    def sample(self) -> Episode:
        """A batch of ``batch_size`` tasks: Episode(support_x (B, K, 1), support_y, query_x (B, Q, 1), query_y)."""
        b = self.batch_size
        amp = self._uniform((b, 1, 1), *self.amplitude)
        phase = self._uniform((b, 1, 1), *self.phase)
        x = self._uniform((b, self.shots + self.queries, 1), *self.x_range)
        y = amp * torch.sin(x - phase)
        k = self.shots
        return Episode(x[:, :k], y[:, :k], x[:, k:], y[:, k:], ways=1, batch=True)

    def state_dict(self) -> dict:
        """The generator's state (what [`load_state_dict`][metalearn.data.sinusoid.SinusoidTasks.load_state_dict]
        continues from)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream of tasks from a [`state_dict`][metalearn.data.sinusoid.SinusoidTasks.state_dict]."""
        self.generator.set_state(state["generator"])
