"""MNIST from ``$METALEARN_DATA/mnist/mnist.npz`` (train_images uint8 (60000, 28, 28), train_labels int64,
test_images / test_labels): the images for the MLP optimisees of the learned-optimizer experiments."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import torch

from metalearn.data.paths import data_root

_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (n, 28, 28), labels int64 (n,))`` of ``split``.

    Args:
        split: ``train`` or ``test``.
        root: The data root holding ``mnist/mnist.npz`` (default ``$METALEARN_DATA``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    path = data_root(root) / "mnist" / "mnist.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist (expected $METALEARN_DATA/mnist/mnist.npz)")
    try:
        with np.load(path) as d:
            missing = [k for k in _KEYS if k not in d.files]
            if missing:
                raise ValueError(f"{str(path)!r} lacks arrays {missing}")
            x, y = d[f"{split}_images"], d[f"{split}_labels"]
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{str(path)!r} is truncated or corrupted ({type(e).__name__}: {e})") from None
    if x.dtype != np.uint8 or x.ndim != 3 or y.shape != (x.shape[0],):
        raise ValueError(f"{str(path)!r}: {split}_images must be uint8 (n, H, W) with n labels, "
                         f"got {x.dtype} {x.shape} and labels {y.shape}")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))
