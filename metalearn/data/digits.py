"""scikit-learn's bundled handwritten digits (UCI optdigits test set, 1797 images of 8x8, 10 classes).

Real data that ships with scikit-learn, so the demo runs offline with no download.  Few-shot split:
meta-train on digits 0-4, meta-test on digits 5-9 (no meta-validation classes).  Pixels 0..16 are scaled to
0..255 and the images resized to ``image_size`` (default 16, so the four 2x2 pools of Conv4 end at 1x1).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from metalearn.data.storage import ClassImages

SPLITS = {"train": (0, 1, 2, 3, 4), "test": (5, 6, 7, 8, 9), "all": tuple(range(10))}


def load_digits(split: str = "train", image_size: int = 16) -> ClassImages:
    """Digits of ``split`` as uint8 (M, 1, S, S) grouped by class.

    Args:
        split: ``train`` (digits 0-4), ``test`` (5-9) or ``all``.
        image_size: S, the side after resizing from 8 px.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {sorted(SPLITS)} for digits, got {split!r}")
    if image_size < 8:
        raise ValueError(f"image_size: expected >= 8, got {image_size}")
    from sklearn.datasets import load_digits as _sk_load

    bunch = _sk_load()
    x = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))[:, None]   # (1797, 1, 8, 8)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    keep = SPLITS[split]
    mask = torch.isin(y, torch.tensor(keep))
    remap = torch.full((10,), -1, dtype=torch.int64)
    remap[list(keep)] = torch.arange(len(keep))
    return ClassImages.from_labels(x[mask], remap[y[mask]], names=[f"digit{d}" for d in keep])
