"""CIFAR-10 (Krizhevsky 2009) as uint8 tensors, decoded once and cached.

Sources, looked for under ``<root>/cifar10/`` (``root`` = ``$METALEARN_DATA`` by default), first match wins:

* ``cifar10_jpeg.tar.gz`` — the project's shared copy: ``train/<class>/NNNN.jpg`` (5000 per class) and
  ``test/<class>/NNNN.jpg`` (1000 per class), 32x32 RGB, **a JPEG (quality ~75) re-encoding** of CIFAR-10
  (about 30.5 dB PSNR against the originals). Read in place with `tarfile` (nothing is extracted).
* ``cifar-10-python.tar.gz`` — the original release (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``),
  lossless, in the original order. Also read in place; its pickled batches are read with
  [`metalearn.data.safe_pickle`][metalearn.data.safe_pickle] (plain data only: a crafted archive cannot run code).

Image order (deterministic, the same on every machine):

* original release: the original order of the batches.
* JPEG archive: the images listed in the split's order csv come first, in their original order —
  ``train_original_order.csv`` lists all 50000 training images (so ``train`` is in the original order),
  ``test_first1000_original_order.csv`` the first 1000 test images (so ``images[:1000]`` are CIFAR-10's first
  1000 test images). The images not listed (the other 9000 test images; everything when a csv is absent) follow
  in a fixed pseudo-random order: sorted by the sha256 of their member path (``test/cat/0042.jpg``). Like the
  original order, that keeps every prefix close to class-balanced and the test stream free of class runs (which
  matters to online test-time adaptation), and it depends on nothing but the file names (no RNG version).

Class indices follow the original: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse,
8 ship, 9 truck (`CLASSES`).

Each split is decoded once (PIL -> RGB uint8 (N, 3, 32, 32)) into the uint8 cache (``$METALEARN_CACHE``, see
[`metalearn.data.cache`][metalearn.data.cache]: atomic writes, keyed on the sha256 of the source files) and comes back
as a
copy-on-write memory map wrapped in a tensor.

Examples:
    ```python
    from metalearn.data.cifar10 import load_cifar10, normalize
    x, y = load_cifar10(split="test")          # uint8 (10000, 3, 32, 32), int64 (10000,)
    z = normalize(x[:8])                       # float32, per-channel standardised
    ```
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from metalearn.data import cache as _cache
from metalearn.data import safe_pickle
from metalearn.data.paths import cache_dir as _cache_dir
from metalearn.data.paths import data_root

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
SPLIT_SIZES = {"train": 50000, "test": 10000}
IMAGE_SIZE = 32
JPEG_ARCHIVE = "cifar10_jpeg.tar.gz"
PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
ORDER_CSV = {"train": "train_original_order.csv", "test": "test_first1000_original_order.csv"}
#: Per-channel mean and standard deviation of the CIFAR-10 training images in [0, 1] (the original release).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_LOADER_VERSION = 2  # 2: unlisted images in a seeded pseudo-random order (1: class-sorted)
_ERRORS = (tarfile.TarError, zlib.error, EOFError, OSError, ValueError, SyntaxError)


def normalize(images: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """(x - mean) / std per channel.

    Args:
        images: (..., 3, H, W) uint8 (scaled by 1/255) or float in [0, 1].
        mean (Sequence[float]): The per-channel means.
        std (Sequence[float]): The per-channel standard deviations.

    Returns:
        Float (float32 for uint8 input, else the input's float dtype), same device.

    Raises:
        ValueError: Not (..., C, H, W) with one channel per mean, or neither uint8 nor float.
    """
    if images.ndim < 3 or images.shape[-3] != len(mean):
        raise ValueError(f"images: expected (..., {len(mean)}, H, W), got shape {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    if not x.is_floating_point():
        raise ValueError(f"images: expected uint8 or a float dtype, got {images.dtype}")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    """JPEG bytes -> (3, 32, 32) uint8 RGB; ValueError naming ``where`` if broken or not 32x32."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except _ERRORS as e:
        raise ValueError(f"{where}: cannot decode image, corrupt JPEG? ({type(e).__name__}: {e})") from e
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"{where}: expected a {IMAGE_SIZE}x{IMAGE_SIZE} image, got {arr.shape[1]}x{arr.shape[0]}")
    return arr.transpose(2, 0, 1)


def _read_order_csv(path: Path, split: str) -> list[tuple[int, int, str]]:
    """Rows (original_index, label, path) of an order csv, sorted by original_index."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"original_index", "label", "path"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected columns original_index,label,path; got {reader.fieldnames}")
            for line, r in enumerate(reader, start=2):
                try:
                    idx, lab, p = int(r["original_index"]), int(r["label"]), r["path"].strip()
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{path}, line {line}: bad row {r} ({e})") from e
                if not 0 <= lab < len(CLASSES) or not p.startswith(f"{split}/"):
                    raise ValueError(f"{path}, line {line}: label {lab} / path {p!r} not a {split} image")
                rows.append((idx, lab, p))
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    rows.sort()
    if len({p for _, _, p in rows}) != len(rows):
        raise ValueError(f"{path}: a path is listed twice")
    return rows


def _jpeg_members(archive: Path, split: str) -> Iterator[tuple[str, bytes]]:
    """(member path 'split/class/NNNN.jpg', bytes) for every image of ``split`` in the archive."""
    try:
        with tarfile.open(archive, "r:gz") as tf:
            for m in tf:
                name = m.name.lstrip("./")
                if not m.isfile() or not name.startswith(f"{split}/") or not name.lower().endswith(".jpg"):
                    continue
                f = tf.extractfile(m)
                yield name, (f.read() if f is not None else b"")
    except _ERRORS as e:
        raise ValueError(f"{archive}: cannot read archive, truncated or corrupted? ({type(e).__name__}: {e})"
                         ) from e


def _class_of(path: str, where: Path) -> int:
    parts = path.split("/")
    if len(parts) != 3 or parts[1] not in CLASSES:
        raise ValueError(f"{where}: member {path!r} is not <split>/<class>/<file>.jpg with a CIFAR-10 class")
    return CLASSES.index(parts[1])


def _decode_jpeg_split(folder: Path, split: str, progress: bool) -> tuple[np.ndarray, np.ndarray, str]:
    archive = folder / JPEG_ARCHIVE
    images: dict[str, np.ndarray] = {}
    with _cache.progress(SPLIT_SIZES[split], f"decoding CIFAR-10 {split}", "img", enabled=progress) as bar:
        for name, data in _jpeg_members(archive, split):
            _class_of(name, archive)
            images[name] = _decode_jpeg(data, f"{archive}:{name}")
            bar.update(1)
    if not images:
        raise ValueError(f"{archive}: no {split}/<class>/*.jpg images found")
    csv_path = folder / ORDER_CSV[split]
    head: list[str] = []
    order_note = "sha256 of the member path"
    if csv_path.is_file():
        rows = _read_order_csv(csv_path, split)
        missing = [p for _, _, p in rows if p not in images]
        if missing:
            raise ValueError(f"{csv_path}: {len(missing)} listed image(s) are not in {archive}, e.g. {missing[:3]}")
        wrong = [p for _, lab, p in rows if _class_of(p, archive) != lab]
        if wrong:
            raise ValueError(f"{csv_path}: label does not match the class folder for {wrong[:3]}")
        head = [p for _, _, p in rows]
        order_note = f"{ORDER_CSV[split]} ({len(head)} images) first, then the rest: " + order_note
    listed = set(head)
    rest = sorted((p for p in images if p not in listed), key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    order = head + rest
    x = np.stack([images[p] for p in order])
    y = np.asarray([_class_of(p, archive) for p in order], dtype=np.uint8)
    return x, y, order_note


def _decode_python_split(archive: Path, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    want = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    found: dict[str, dict] = {}
    try:
        with tarfile.open(archive, "r:gz") as tf:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in want:
                    f = tf.extractfile(m)
                    # plain dict/bytes/list/numpy data; read without running pickled code
                    found[base] = safe_pickle.load(f, encoding="bytes", where=f"{archive}:{m.name}")
    except safe_pickle.UnsafePickleError:
        raise
    except (*_ERRORS, pickle.UnpicklingError) as e:
        raise ValueError(f"{archive}: cannot read archive, truncated or corrupted? ({type(e).__name__}: {e})"
                         ) from e
    missing = [b for b in want if b not in found]
    if missing:
        raise ValueError(f"{archive}: missing batch file(s) {missing}")
    try:
        x = np.concatenate([np.asarray(found[b][b"data"], dtype=np.uint8) for b in want])
        y = np.concatenate([np.asarray(found[b][b"labels"], dtype=np.int64) for b in want])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{archive}: batches lack b'data'/b'labels' ({e})") from e
    if x.ndim != 2 or x.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE or y.shape != (x.shape[0],):
        raise ValueError(f"{archive}: unexpected batch shapes {x.shape}, {y.shape}")
    return x.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), y.astype(np.uint8), "original"


def _locate(root) -> tuple[Path, str]:
    folder = data_root(root) / "cifar10"
    if (folder / JPEG_ARCHIVE).is_file():
        return folder, "jpeg"
    if (folder / PYTHON_ARCHIVE).is_file():
        return folder, "python"
    raise FileNotFoundError(f"CIFAR-10: neither {str(folder / JPEG_ARCHIVE)!r} nor {str(folder / PYTHON_ARCHIVE)!r}"
                            " exists (expected under $METALEARN_DATA/cifar10/ or root=...)")


def source_key(root: str | os.PathLike | None, split: str) -> tuple[Path, str, list[Path], str]:
    """(folder, source kind 'jpeg'|'python', source files, cache key) of one split.

    The key changes when any source file's bytes or this loader's version change (also used by the CIFAR-10-C
    cache).

    Args:
        root: Data root holding ``cifar10/`` (default $METALEARN_DATA).
        split: "train" or "test".

    Raises:
        ValueError: Another split.
        FileNotFoundError: Neither archive exists.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    folder, kind = _locate(root)
    sources = [folder / (JPEG_ARCHIVE if kind == "jpeg" else PYTHON_ARCHIVE)]
    if kind == "jpeg" and (folder / ORDER_CSV[split]).is_file():
        sources.append(folder / ORDER_CSV[split])
    key = _cache.make_key("cifar10", _LOADER_VERSION, kind, split, _cache.file_checksums(sources))
    return folder, kind, sources, key


def load_cifar10(root: str | os.PathLike | None = None, split: str = "train",
                 cache_dir: str | os.PathLike | None = None, progress: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 split: ``(images uint8 (N, 3, 32, 32) RGB, labels int64 (N,))``, N = 50000 / 10000.

    Args:
        root: data root holding ``cifar10/`` (default $METALEARN_DATA).
        split: "train" or "test".
        cache_dir: where the decoded cache lives (default $METALEARN_CACHE or ~/.cache/metalearn).
        progress: show a progress bar while decoding.

    The first call decodes the archive (a few seconds to a minute) and writes the cache; later calls memory-map it
    (copy-on-write: the tensor is writable, the file is never changed). Order: see the module docstring.
    """
    folder, kind, sources, key = source_key(root, split)
    entry = _cache_dir(cache_dir) / f"cifar10_{kind}_{split}"

    def build() -> tuple[np.ndarray, dict]:
        if kind == "jpeg":
            x, y, note = _decode_jpeg_split(folder, split, progress)
        else:
            x, y, note = _decode_python_split(sources[0], split)
        # the labels (0..9) are stored in the json record beside the images
        return x, {"split": split, "source": kind, "order": note, "classes": list(CLASSES),
                   "labels": y.tolist()}

    images, meta = _cache.load_or_build(entry, key, build)
    labels = torch.as_tensor(meta["labels"], dtype=torch.int64)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"cache entry {entry}: {images.shape[0]} images but {labels.shape[0]} labels; delete it")
    return torch.from_numpy(images), labels
