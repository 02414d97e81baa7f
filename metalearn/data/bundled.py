"""The small Omniglot shipped inside the package: all 1623 characters × 20 drawings at 28×28, one bit a pixel.

``metalearn/data/bundled/omniglot28.npz`` (about 0.85 MB; the dataset's MIT licence is ``LICENSE-omniglot.txt``
beside it) holds

* ``ink``: uint8 (32460, 98) -- each image's 784 pixels, ``True`` = ink, packed with ``np.packbits`` (row
  major); images are ordered character by character (20 drawings each, in file order);
* ``names``: the 1623 ``"Alphabet/characterNN"`` names in Vinyals order (background alphabets first);
* ``parts``: ``background`` / ``evaluation`` per character (Lake et al.'s 30 / 20 alphabets).

The pixels are the full-size release resized 105 → 28 exactly as
[`metalearn.data.omniglot.load_omniglot`][metalearn.data.omniglot.load_omniglot]
does (PIL bilinear), then thresholded: ink where the resized grey value is below 128.
[`build_bundle`][metalearn.data.bundled.build_bundle]
makes the file from the full data; the tests check it against the full npz pixel for pixel.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from metalearn.data.storage import ClassImages

BUNDLE_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLE = BUNDLE_DIR / "omniglot28.npz"
SIZE = 28
THRESHOLD = 128            # resized grey value below this is ink
PARTS = ("background", "evaluation")


def binarize(images: np.ndarray) -> np.ndarray:
    """uint8 (..., 28, 28) with paper 255 / ink 0 (the loader's convention) -> bool ink mask."""
    return np.asarray(images) < THRESHOLD


def build_bundle(root: str | os.PathLike | None = None, path: str | os.PathLike = BUNDLE,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """Write the bundled file from the full Omniglot under ``root``; returns its path.

    Args:
        root: Data root holding ``omniglot/`` (default ``$METALEARN_DATA``).
        path: The file written.
        cache_dir: Where the decoded cache lives.
    """
    from metalearn.data.cache import atomic_write
    from metalearn.data.omniglot import load_omniglot
    full = load_omniglot(root, split="all", image_size=SIZE, rotations=None, cache_dir=cache_dir)
    meta = _split_meta(full.names, root)
    ink = binarize(full.images.numpy()[:, 0])
    packed = np.packbits(ink.reshape(len(ink), -1), axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode="wb") as f:
        np.savez_compressed(f, ink=packed, names=np.array(full.names), parts=np.array(meta))
    return path


def _split_meta(names, root) -> list[str]:
    """background / evaluation of each character: Vinyals order lists the 964 background characters first."""
    from metalearn.data.omniglot import N_BACKGROUND
    return ["background" if i < N_BACKGROUND else "evaluation" for i in range(len(names))]


def load_bundled(part: str = "background", rotations: tuple = (0,), path: str | os.PathLike = BUNDLE,
                 validation: int = 0, seed: int = 0) -> ClassImages:
    """The bundled Omniglot as [`ClassImages`][metalearn.data.storage.ClassImages] (uint8, paper 255 / ink 0,
    like the full loader); no download, no data root.

    Args:
        part: ``background`` (964 characters, 30 alphabets; meta-training), ``evaluation`` (659, 20 alphabets;
            meta-testing), or ``all``.
        rotations: Class-augmentation angles, as in [`load_omniglot`][metalearn.data.omniglot.load_omniglot].
        path: The bundle file (default: the one shipped in the package).
        validation: Unused.
        seed: Unused.

    Raises:
        ValueError: An unknown ``part``.
        FileNotFoundError: The bundle file is missing (a broken installation).

    Examples:
        >>> from metalearn.data.bundled import load_bundled
        >>> test = load_bundled("evaluation")
        >>> test.num_classes, test.image_shape
        (659, (1, 28, 28))
    """
    if part not in PARTS + ("all",):
        raise ValueError(f"part: expected background, evaluation or all, got {part!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bundled Omniglot {str(path)!r} is missing (a broken installation?)")
    with np.load(path, allow_pickle=False) as z:
        packed, names, parts = z["ink"], [str(n) for n in z["names"]], [str(p) for p in z["parts"]]
    chars = [i for i, p in enumerate(parts) if part == "all" or p == part]
    rows = (np.asarray(chars)[:, None] * 20 + np.arange(20)[None]).reshape(-1)
    ink = np.unpackbits(packed[rows], axis=1, count=SIZE * SIZE).reshape(-1, 1, SIZE, SIZE).astype(bool)
    images = torch.from_numpy(np.where(ink, np.uint8(0), np.uint8(255)))
    n = len(chars)
    return ClassImages(images, torch.arange(n) * 20, torch.full((n,), 20), tuple(names[i] for i in chars),
                       tuple(rotations))
