"""Rotations (the self-supervised task of TTT) and the crop + flip augmentation, as batched tensor ops.

Rotation label ``k`` in {0, 1, 2, 3} means the image turned by ``k * 90`` degrees counter-clockwise:
``torch.rot90(image, k, dims=(-2, -1))`` (the TTT code's ``rotate_batch_with_labels``: label 1 is
``img.flip(2).transpose(1, 2)``, which is the same thing).  Augmentation is the CIFAR training transform, random
crop of a zero-padded image plus a random horizontal flip, done on the device from explicit random draws
(``offsets``, ``flips``) so that two code paths given the same draws see the same pixels.
"""
from __future__ import annotations

import torch
from torch import Tensor


def rotate(images: Tensor, labels: Tensor) -> Tensor:
    """Rotate each image by its label.  images (N, C, H, W) with H == W, labels (N,) int in [0, 4) -> (N, C, H, W)."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images: expected square images (N, C, H, H), got shape {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels: expected shape ({images.shape[0]},), got {tuple(labels.shape)}")
    labels = labels.to(images.device).long()
    out = images
    for k in (1, 2, 3):
        out = torch.where((labels == k)[:, None, None, None], torch.rot90(images, k, dims=(-2, -1)), out)
    return out


def all_rotations(images: Tensor) -> tuple[Tensor, Tensor]:
    """Every image at all four rotations: (4N, C, H, W) ordered rotation-major (the first N unrotated), labels (4N,)."""
    n = images.shape[0]
    x = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    y = torch.arange(4, device=images.device).repeat_interleave(n)
    return x, y


def random_draws(n: int, pad: int = 4, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Crop offsets (n, 2) in [0, 2 pad] and flip flags (n,) bool, drawn on the CPU from ``generator``.

    Args:
        n: The number of images.
        pad: The zero padding of the crop.
        generator: The CPU generator (default: the global one).
        device: Where the draws are moved.
    """
    off = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return off.to(device), flip.to(device)


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, pad: int = 4) -> Tensor:
    """Random-crop (zero padding ``pad``) and horizontal-flip augmentation from explicit draws.

    The same as ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip`` with those draws.

    Args:
        images: (N, C, H, W) images.
        offsets: (N, 2) integer (row, column) in [0, 2 pad] (pad: the crop is the input itself).
        flips: (N,) bool.
        pad: The zero padding.

    Returns:
        (N, C, H, W) crops.

    Raises:
        ValueError: ``offsets`` or ``flips`` of the wrong shape.
    """
    n, c, h, w = images.shape
    if offsets.shape != (n, 2) or flips.shape != (n,):
        raise ValueError(f"offsets/flips: expected shapes ({n}, 2) and ({n},), got {tuple(offsets.shape)} and "
                         f"{tuple(flips.shape)}")
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = offsets.to(images.device).long()
    rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (N, H)
    cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # (N, W)
    cols = torch.where(flips.to(images.device)[:, None], cols.flip(1), cols)
    idx = torch.arange(n, device=images.device)[:, None, None, None]
    ch = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[idx, ch, rows[:, None, :, None], cols[:, None, None, :]]
