"""Balanced same/different image pairs for verification training (Koch, Zemel & Salakhutdinov 2015).

[`PairSampler`][metalearn.data.pairs.PairSampler] draws batches of pairs from a
[`ClassImages`][metalearn.data.storage.ClassImages] split, seeded and vectorised on the
storage's device like [`metalearn.episodes.EpisodeSampler`][metalearn.episodes.EpisodeSampler]: the first half of a
batch are "same" pairs
(two distinct images of one class), the second half "different" pairs (images of two distinct classes).
Rotation classes count as classes, as in the episode sampler: a character and its 90-degree rotation are
different classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metalearn.data.storage import ClassImages


@dataclass(frozen=True)
class Pairs:
    """x1, x2: (P, C, H, W) float; same: (P,) float, 1.0 for a same-class pair; class1, class2: (P,) int64
    sampler class indices (base class * len(rotations) + rotation index) of x1 and x2."""
    x1: Tensor
    x2: Tensor
    same: Tensor
    class1: Tensor
    class2: Tensor


class PairSampler:
    """Draws ``pairs`` image pairs per call, half same-class and half different-class.

    Args:
        data: the split (sampling happens on its device).
        pairs: pairs per batch, an even number >= 2.
        seed: seeds a ``torch.Generator`` on the data's device.
        scale: uint8 -> float multiplier (default 1/255).

    Examples:
        >>> sampler = PairSampler(split, pairs=128, seed=0)
        >>> b = sampler.sample()     # b.x1, b.x2: (128, 1, 28, 28); b.same[:64] == 1, b.same[64:] == 0
    """

    def __init__(self, data: ClassImages, pairs: int = 128, seed: int = 0, scale: float = 1.0 / 255.0) -> None:
        if not isinstance(data, ClassImages):
            raise TypeError(f"data: expected a ClassImages, got {type(data).__name__}")
        if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 2 or pairs % 2:
            raise ValueError(f"pairs: expected an even integer >= 2 (half same, half different), got {pairs!r}")
        if data.num_classes < 2:
            raise ValueError(f"data: different-class pairs need at least 2 classes, the split has {data.num_classes}")
        fewest = int(data.counts.min())
        if fewest < 2:
            c = int(torch.argmin(data.counts))
            raise ValueError(f"data: same-class pairs need at least 2 images per class, class {data.names[c]!r} "
                             f"has {fewest}")
        self.data, self.pairs, self.scale, self.device = data, pairs, scale, data.device
        self._nrot = len(data.rotations)
        self._rot_k = torch.tensor([r // 90 for r in data.rotations], device=self.device)
        self._turns = sorted({r // 90 for r in data.rotations} - {0})
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def _randint(self, high: Tensor) -> Tensor:
        """Uniform integers in [0, high) elementwise (high >= 1), drawn with the sampler's generator."""
        u = torch.rand(high.shape, generator=self.generator, device=self.device)
        return (u * high).long().clamp_max(high - 1)

    def sample_indices(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(class1, class2, row1, row2), each (P,): sampler classes and rows into ``data.images``."""
        half, n, dev = self.pairs // 2, self.data.num_classes, self.device
        c_same = self._randint(torch.full((half,), n, device=dev))
        c_a = self._randint(torch.full((half,), n, device=dev))
        c_b = (c_a + 1 + self._randint(torch.full((half,), n - 1, device=dev))) % n       # != c_a
        class1, class2 = torch.cat([c_same, c_a]), torch.cat([c_same, c_b])
        base1, base2 = class1 // self._nrot, class2 // self._nrot
        cnt1, cnt2 = self.data.counts[base1], self.data.counts[base2]
        i = self._randint(cnt1)
        j_other = (i + 1 + self._randint(cnt1 - 1)) % cnt1                                 # != i, same class
        j = torch.where(torch.arange(self.pairs, device=dev) < half, j_other, self._randint(cnt2))
        return class1, class2, self.data.offsets[base1] + i, self.data.offsets[base2] + j

    def _images(self, rows: Tensor, classes: Tensor) -> Tensor:
        x = self.data.images[rows]
        if self._nrot > 1:
            k = self._rot_k[classes % self._nrot][:, None, None, None]
            out = x
            for t in self._turns:
                out = torch.where(k == t, torch.rot90(x, t, dims=(-2, -1)), out)
            x = out
        return x.to(torch.float32).mul_(self.scale)

    def sample(self) -> Pairs:
        c1, c2, r1, r2 = self.sample_indices()
        same = torch.cat([torch.ones(self.pairs // 2, device=self.device),
                          torch.zeros(self.pairs // 2, device=self.device)])
        return Pairs(self._images(r1, c1), self._images(r2, c2), same, c1, c2)
