"""N-way K-shot Q-query episode sampler: seeded, vectorised, the gather done where the data lives.

One call to [`EpisodeSampler.sample`][metalearn.episodes.EpisodeSampler.sample] draws B tasks at once with a handful
of tensor ops on the
storage's device (no Python loop over tasks, classes or images, no host sync):

1. classes: the first N columns of a random permutation per task (``rand(B, n_classes).argsort``) ->
   N distinct classes, in random order; the position in that order is the episode label, so labels 0..N-1
   are a fresh random assignment in every episode;
2. images: per drawn class, the first K+Q of a random permutation of that class's images (classes with
   fewer images than the largest are masked to the end) -> support and query are disjoint;
3. rotation classes: each class is rotated by its own angle (never one angle for the whole task).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from metalearn.checks import check_float, check_int
from metalearn.data.storage import ClassImages
from metalearn.types import Episode


class EpisodeSampler:
    """Draws batches of episodes from a [`ClassImages`][metalearn.data.storage.ClassImages] split.

    Args:
        data: the split; its device is where sampling happens (move it with ``data.to("cuda")`` first).
        ways: N, classes per task.
        shots: K, support images per class.
        queries: Q, query images per class.
        batch_size: tasks per call (B). ``sample()`` returns an Episode with a leading B dimension.
        seed: seeds a ``torch.Generator`` on the data's device: same seed -> same episodes.
        scale: uint8 -> float multiplier (default 1/255).

    Raises:
        ArgumentError: A size or the seed out of range (the message names it).
        ValueError: ``ways`` exceeds the split's classes, or ``shots + queries`` a class's images.

    Examples:
        >>> from metalearn.data.bundled import load_bundled
        >>> sampler = EpisodeSampler(load_bundled("evaluation"), ways=5, shots=1, queries=15, batch_size=4, seed=0)
        >>> ep = sampler.sample()
        >>> tuple(ep.support_x.shape), tuple(ep.query_y.shape)
        ((4, 5, 1, 28, 28), (4, 75))
    """

    def __init__(self, data: ClassImages, ways: int, shots: int, queries: int, batch_size: int = 1,
                 seed: int = 0, scale: float = 1.0 / 255.0) -> None:
        if not isinstance(data, ClassImages):
            raise TypeError(f"data: expected a ClassImages, got {type(data).__name__}")
        ways, shots = check_int("ways", ways, 1), check_int("shots", shots, 1)
        queries, batch_size = check_int("queries", queries, 0), check_int("batch_size", batch_size, 1)
        seed = check_int("seed", seed, -(2 ** 63), 2 ** 64 - 1)   # what torch.Generator.manual_seed takes
        scale = check_float("scale", scale, 0.0, strict=True)
        self.ways, self.shots, self.queries, self.batch_size = ways, shots, queries, batch_size
        if ways > data.num_classes:
            raise ValueError(f"ways={ways} but the split has only {data.num_classes} classes")
        need = shots + queries
        fewest = int(data.counts.min())
        if need > fewest:
            c = int(torch.argmin(data.counts))
            raise ValueError(f"shots+queries={need} but class {data.names[c]!r} has only {fewest} images")
        self.data = data
        self.scale = scale
        self.device = data.device
        self._max_count = int(data.counts.max())
        self._nrot = len(data.rotations)
        self._rot_k = torch.tensor([r // 90 for r in data.rotations], device=self.device)
        self._turns = sorted({r // 90 for r in data.rotations} - {0})   # host-side: no sync in gather
        if self._turns:
            # rot90 by k quarter turns is a fixed permutation of the H*W pixels: gather() rotates every class
            # with one index pass (images are square, ClassImages checks), not a rot90 + where per angle
            h, w = data.image_shape[-2:]
            pix = torch.arange(h * w, device=self.device).view(h, w)
            self._rot_perm = torch.stack([torch.rot90(pix, k, dims=(0, 1)).reshape(-1) for k in range(4)])
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    # -- state for exact resume -------------------------------------------------------------
    def state_dict(self) -> dict:
        """The generator's state: [`load_state_dict`][metalearn.episodes.EpisodeSampler.load_state_dict] of it
        continues the same stream of episodes (exact resume)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a [`state_dict`][metalearn.episodes.EpisodeSampler.state_dict]."""
        self.generator.set_state(state["generator"])

    # -- sampling -----------------------------------------------------------------------------
    def sample_indices(self) -> tuple[Tensor, Tensor]:
        """(rows, rot_k): rows (B, N, K+Q) int64 into ``data.images``; rot_k (B, N) quarter turns."""
        B, N, S, g, dev = self.batch_size, self.ways, self.shots + self.queries, self.generator, self.device
        classes = torch.rand(B, self.data.num_classes, generator=g, device=dev).argsort(dim=1)[:, :N]  # (B, N)
        base, rot = classes // self._nrot, classes % self._nrot
        counts = self.data.counts[base]                                                     # (B, N)
        keys = torch.rand(B, N, self._max_count, generator=g, device=dev)
        slot = torch.arange(self._max_count, device=dev)
        keys = torch.where(slot < counts[..., None], keys, torch.full_like(keys, 2.0))    # pad to the end
        pos = keys.argsort(dim=-1)[..., :S]                                                 # (B, N, S)
        rows = self.data.offsets[base][..., None] + pos
        return rows, self._rot_k[rot]

    def gather(self, rows: Tensor, rot_k: Tensor) -> Tensor:
        """uint8 images for ``rows`` (B, N, S), each class rotated by its own ``rot_k`` -> (B, N, S, C, H, W)."""
        x = self.data.images[rows]
        if self._turns:   # any non-zero angle, also when it is the only one (rotations=(90,))
            B, N, S, C, H, W = x.shape
            perm = self._rot_perm[rot_k][:, :, None, None, :].expand(B, N, S, C, H * W)   # (B, N, S, C, H*W)
            x = x.reshape(B, N, S, C, H * W).gather(-1, perm).view(B, N, S, C, H, W)
        return x

    def sample(self, tasks: tuple[int, int] | None = None) -> Episode:
        """One batch of B tasks: support (B, N*K, C, H, W), query (B, N*Q, C, H, W), float on the device.

        ``tasks=(lo, hi)``: draw the whole batch of B tasks from the stream (the generator advances exactly as
        without it) but gather only tasks ``lo:hi`` -> an Episode of ``hi - lo`` tasks.  This is how processes
        of a distributed run each take their share of one meta-batch
        ([`shard_range`][metalearn.distributed.shard_range]).
        """
        rows, rot_k = self.sample_indices()
        if tasks is not None:
            lo, hi = tasks
            if not 0 <= lo < hi <= self.batch_size:
                raise ValueError(f"tasks: expected 0 <= lo < hi <= batch_size={self.batch_size}, got {tasks}")
            rows, rot_k = rows[lo:hi], rot_k[lo:hi]
        B, N, K, Q = rows.shape[0], self.ways, self.shots, self.queries
        x = self.gather(rows, rot_k).to(torch.float32).mul_(self.scale)      # (B, N, K+Q, C, H, W)
        shape = x.shape[3:]
        labels = torch.arange(N, device=self.device)
        sx = x[:, :, :K].reshape(B, N * K, *shape)
        qx = x[:, :, K:].reshape(B, N * Q, *shape)
        sy = labels.repeat_interleave(K).expand(B, N * K).contiguous()
        qy = labels.repeat_interleave(Q).expand(B, N * Q).contiguous()
        return Episode(sx, sy, qx, qy, N)

    def skip(self, draws: int = 1) -> None:
        """Advance the stream by ``draws`` batches without gathering any image (the generator ends where
        ``draws`` calls of [`sample`][metalearn.episodes.EpisodeSampler.sample] would leave it)."""
        for _ in range(draws):
            self.sample_indices()

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()
