"""Class-indexed uint8 image storage: the one in-memory form every dataset is decoded into.

All images of a split live in a single uint8 tensor ``images`` of shape (M, C, H, W), grouped by class:
class ``c`` owns rows ``offsets[c] : offsets[c] + counts[c]``.  The whole thing moves to the device with
[`ClassImages.to`][metalearn.data.storage.ClassImages.to], after which an episode is an index gather (see
[`metalearn.episodes`][metalearn.episodes]).

Rotation classes (Omniglot): with ``rotations=(0, 90, 180, 270)`` every base class ``b`` yields four classes
``b * 4 + r``; the sampler rotates the gathered images of each class by its own angle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

_VALID_ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class ClassImages:
    """uint8 images grouped by class (one split of a dataset).

    Attributes:
        images: (M, C, H, W) uint8, the images of base class ``b`` in rows ``offsets[b] : offsets[b] + counts[b]``.
        offsets: (n_base,) int64, the first row of each base class.
        counts: (n_base,) int64, the images of each base class (at least one).
        names: One name per base class.
        rotations: Angles in degrees, distinct, from 0/90/180/270; every base class is one class per angle
            (rotation classes need square images).

    Raises:
        ValueError: Inconsistent shapes, a class without images, or a bad angle.

    Examples:
        >>> data = ClassImages.from_labels(torch.zeros(6, 1, 28, 28, dtype=torch.uint8), [0, 1, 0, 2, 1, 2],
        ...                                rotations=(0, 90))
        >>> data.num_base_classes, data.num_classes, data.image_shape
        (3, 6, (1, 28, 28))
    """

    images: Tensor
    offsets: Tensor
    counts: Tensor
    names: tuple = field(default_factory=tuple)
    rotations: tuple = (0,)

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            got = getattr(self.images, "dtype", type(self.images).__name__), tuple(getattr(self.images, "shape", ()))
            raise ValueError(f"images: expected a uint8 tensor of shape (M, C, H, W), got {got}")
        if self.offsets.shape != self.counts.shape or self.offsets.dim() != 1:
            raise ValueError("offsets and counts: expected two 1-d tensors of the same length")
        if len(self.names) != len(self.counts):
            raise ValueError(f"names: expected {len(self.counts)} class names, got {len(self.names)}")
        if len(self.counts) and int((self.offsets + self.counts).max()) > self.images.shape[0]:
            raise ValueError("offsets/counts point past the end of images")
        if len(self.counts) and int(self.counts.min()) < 1:
            raise ValueError("counts: every class needs at least one image")
        rots = tuple(int(r) for r in self.rotations)
        if not rots or any(r not in _VALID_ROTATIONS for r in rots) or len(set(rots)) != len(rots):
            raise ValueError(f"rotations: expected distinct angles from {_VALID_ROTATIONS}, got {self.rotations}")
        if any(r != 0 for r in rots) and self.images.shape[-1] != self.images.shape[-2]:
            raise ValueError("rotations other than 0 need square images")
        object.__setattr__(self, "rotations", rots)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_labels(cls, images: np.ndarray | Tensor, labels: Sequence[int] | np.ndarray | Tensor,
                    names: Sequence[str] | None = None, rotations: Sequence[int] = (0,)) -> "ClassImages":
        """Group images (M, C, H, W) uint8 by integer label (0..L-1, every label present); stable order.

        Args:
            images: (M, C, H, W) uint8, a tensor or a numpy array.
            labels: (M,) integer labels in [0, L), every label present.
            names: One name per label (default ``"0"``, ``"1"``, ...).
            rotations: Rotation classes, as the class's ``rotations``.
        """
        images = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels: expected shape ({images.shape[0]},), got {tuple(labels.shape)}")
        n = int(labels.max()) + 1 if len(labels) else 0
        counts = torch.bincount(labels, minlength=n)
        if n and int(counts.min()) == 0:
            raise ValueError(f"labels: class {int((counts == 0).nonzero()[0])} has no image")
        order = torch.argsort(labels, stable=True)
        offsets = torch.cumsum(counts, 0) - counts
        names = tuple(names) if names is not None else tuple(str(i) for i in range(n))
        return cls(images[order].contiguous(), offsets, counts, names, tuple(rotations))

    @classmethod
    def concat(cls, parts: Sequence["ClassImages"]) -> "ClassImages":
        """The classes of several splits in one (``train`` + ``val`` -> ``trainval``), in the given order.

        Args:
            parts: Splits with the same image shape and the same rotations; class names must not repeat.

        Raises:
            ValueError: No parts, different image shapes or rotations, or a class name in two parts.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("parts: expected at least one ClassImages")
        first = parts[0]
        for p in parts[1:]:
            if p.image_shape != first.image_shape or p.rotations != first.rotations:
                raise ValueError(f"parts: expected one image shape and one set of rotations, got "
                                 f"{first.image_shape} {first.rotations} and {p.image_shape} {p.rotations}")
        names = tuple(n for p in parts for n in p.names)
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"parts: class {dup!r} is in more than one part")
        images = torch.cat([p.images for p in parts])
        counts = torch.cat([p.counts.to(images.device) for p in parts])
        offsets = torch.cumsum(counts, 0) - counts
        return cls(images, offsets, counts, names, first.rotations)

    # ------------------------------------------------------------------ views
    @property
    def num_base_classes(self) -> int:
        """Classes before rotation (characters of Omniglot, synsets of miniImageNet)."""
        return int(self.counts.shape[0])

    @property
    def num_classes(self) -> int:
        """Classes the sampler sees: base classes times rotations."""
        return self.num_base_classes * len(self.rotations)

    @property
    def image_shape(self) -> tuple:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])

    @property
    def device(self) -> torch.device:
        """Where the images are (and where an [`EpisodeSampler`][metalearn.episodes.EpisodeSampler] samples)."""
        return self.images.device

    def to(self, device: torch.device | str) -> "ClassImages":
        """The same split on ``device`` (e.g. ``"cuda"``): sampling then happens there."""
        return ClassImages(self.images.to(device), self.offsets.to(device), self.counts.to(device),
                           self.names, self.rotations)

    def with_rotations(self, rotations: Sequence[int]) -> "ClassImages":
        """The same images with other rotation classes (nothing is copied)."""
        return ClassImages(self.images, self.offsets, self.counts, self.names, tuple(rotations))

    def subset(self, base_classes: Sequence[int]) -> "ClassImages":
        """A new ClassImages holding only the given base classes, in the given order (copies images)."""
        idx = [int(c) for c in base_classes]
        bad = [c for c in idx if not 0 <= c < self.num_base_classes]
        if bad:
            raise ValueError(f"base_classes: {bad[:5]} out of range [0, {self.num_base_classes})")
        rows = [torch.arange(int(self.offsets[c]), int(self.offsets[c] + self.counts[c])) for c in idx]
        rows_t = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
        counts = self.counts[idx].clone() if idx else self.counts[:0].clone()
        offsets = torch.cumsum(counts, 0) - counts
        return ClassImages(self.images[rows_t.to(self.images.device)].contiguous(), offsets, counts,
                           tuple(self.names[c] for c in idx), self.rotations)

    def class_images(self, c: int) -> Tensor:
        """All images of sampler class ``c`` (rotation applied): (count, C, H, W) uint8."""
        if not 0 <= c < self.num_classes:
            raise ValueError(f"class index {c} out of range [0, {self.num_classes})")
        b, r = divmod(c, len(self.rotations))
        x = self.images[int(self.offsets[b]): int(self.offsets[b] + self.counts[b])]
        k = self.rotations[r] // 90
        return torch.rot90(x, k, dims=(-2, -1)) if k else x

    def class_name(self, c: int) -> str:
        """Name of sampler class ``c``: the base class's, with ``@rotN`` for a rotated one."""
        b, r = divmod(c, len(self.rotations))
        rot = self.rotations[r]
        return self.names[b] if rot == 0 else f"{self.names[b]}@rot{rot}"
