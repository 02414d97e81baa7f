"""CIFAR-10-C generated locally: the 15 corruptions of [`metalearn.data.corruptions`][metalearn.data.corruptions]
applied to the CIFAR-10
test set ([`metalearn.data.cifar10.load_cifar10`][metalearn.data.cifar10.load_cifar10]), one uint8 cache entry per
(corruption, severity).

Entries live under ``<cache_dir>/cifar10c/<source>_seed<seed>[_n<limit>]/<corruption>_<severity>.npy/.json``
(the uint8 cache format of [`metalearn.data.cache`][metalearn.data.cache]: atomic writes, json last), keyed on the
clean test set's
source checksums, the corruption code's ``VERSION``, the seed and the chunk size, so a stale entry is rebuilt and
an interrupted build leaves no half-written file.

Images are corrupted in chunks of `CHUNK` test images; chunk ``k`` uses seed ``seed * 1_000_000 + k`` (the
same at every severity, so severities share their noise pattern). The result does not depend on the device.

Examples:
    ```python
    from metalearn.data.cifar10c import build_cifar10c, load_cifar10c
    build_cifar10c(severities=(5,))                       # all 15 corruptions at level 5 (about a minute on CPU)
    x, y = load_cifar10c("fog", 5)                        # uint8 (10000, 3, 32, 32), int64 (10000,)
    ```

CLI: ``metalearn data cifar10c [--corruptions fog snow] [--severities 5] [--limit N]``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from metalearn.checks import check_device
from metalearn.data import cache as _cache
from metalearn.data import corruptions as _corr
from metalearn.data.cifar10 import load_cifar10, source_key
from metalearn.data.corruptions import CORRUPTIONS as CORRUPTIONS
from metalearn.data.paths import cache_dir as _cache_dir

CHUNK = 1000
SEVERITIES = (1, 2, 3, 4, 5)
_VERSION = 1


def _check_names(corruptions: Iterable[str]) -> tuple[str, ...]:
    if isinstance(corruptions, str):
        corruptions = (corruptions,)
    names = tuple(corruptions)
    bad = [c for c in names if c not in _corr.CORRUPTIONS]
    if bad or not names:
        raise ValueError(f"corruptions: unknown {bad or 'empty list'}; expected names from "
                         f"{', '.join(_corr.CORRUPTIONS)}")
    return tuple(dict.fromkeys(names))


def _check_severities(severities: Iterable[int]) -> tuple[int, ...]:
    if isinstance(severities, (int, np.integer)) and not isinstance(severities, bool):
        severities = (severities,)
    sev = tuple(severities)
    bad = [s for s in sev if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= 5]
    if bad or not sev:
        raise ValueError(f"severities: expected integers in 1..5, got {bad or 'an empty list'}")
    return tuple(sorted({int(s) for s in sev}))


def _check_limit(limit) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"limit: expected a positive integer or None, got {limit!r}")
    return int(limit)


def _entry(cache: Path, kind: str, seed: int, limit: int | None, name: str, severity: int) -> Path:
    sub = f"{kind}_seed{seed}" + (f"_n{limit}" if limit is not None else "")
    return cache / "cifar10c" / sub / f"{name}_{severity}"


def _key(clean_key: str, seed: int, limit: int | None, name: str, severity: int) -> str:
    return _cache.make_key("cifar10c", _VERSION, _corr.VERSION, clean_key, name, severity, seed, limit, CHUNK)


def _generate(clean: torch.Tensor, name: str, severity: int, seed: int, device, bar) -> np.ndarray:
    out = np.empty(tuple(clean.shape), dtype=np.uint8)
    for k, start in enumerate(range(0, clean.shape[0], CHUNK)):
        x = clean[start: start + CHUNK].to(device)
        y = _corr.corrupt(x, name, severity, seed=seed * 1_000_000 + k)
        out[start: start + x.shape[0]] = y.cpu().numpy()
        bar.update(x.shape[0])
    return out


def build_cifar10c(root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   severities: Sequence[int] = SEVERITIES, corruptions: Sequence[str] = CORRUPTIONS,
                   seed: int = 0, limit: int | None = None, device: str | torch.device = "cpu",
                   progress: bool = True, verify: bool = False) -> list[Path]:
    """Generate CIFAR-10-C (corruptions x severities of the CIFAR-10 test set) into the cache.

    Args:
        root: data root holding ``cifar10/`` (default $METALEARN_DATA).
        cache_dir: cache directory (default $METALEARN_CACHE or ~/.cache/metalearn).
        severities: levels 1..5 to build.
        corruptions: names from `CORRUPTIONS` (standard order).
        seed: the generation seed.
        limit: only the first ``limit`` test images (smoke tests).
        device: where the corruptions run ("cpu", "cuda"); the output does not depend on it.
        progress: show a tqdm bar.
        verify: check the sha256 of entries already built (else only their sizes).

    Returns:
        The ``.npy`` paths of all requested entries. Entries already built with the same key are skipped; a
        damaged one is rebuilt, with a [`CacheRebuildWarning`][metalearn.data.cache.CacheRebuildWarning] naming
        it.
    """
    names, sev, limit = _check_names(corruptions), _check_severities(severities), _check_limit(limit)
    device = check_device("device", device)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    _, kind, _, clean_key = source_key(root, "test")
    cache = _cache_dir(cache_dir)
    todo, paths = [], []
    for name in names:
        for s in sev:
            entry = _entry(cache, kind, seed, limit, name, s)
            paths.append(_cache.cache_entry_files(entry)[0])
            try:
                hit = _cache.load_uint8_cache(entry, _key(clean_key, seed, limit, name, s), verify=verify)
            except _cache.CacheDamagedError as e:
                warnings.warn(f"cache file {str(e.file)!r} is damaged ({e.why}); rebuilding it from the CIFAR-10 "
                              "test set", _cache.CacheRebuildWarning, stacklevel=2)
                hit = None
            if hit is None:
                todo.append((name, s, entry))
    if not todo:
        return paths
    images, labels = load_cifar10(root, "test", cache_dir, progress=progress)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    total = len(todo) * images.shape[0]
    with _cache.progress(total, "CIFAR-10-C", "img", enabled=progress) as bar:
        for name, s, entry in todo:
            out = _generate(images, name, s, seed, device, bar)
            meta = {"corruption": name, "severity": s, "seed": seed, "limit": limit, "source": kind,
                    "corruptions_version": _corr.VERSION, "chunk": CHUNK}
            _cache.save_uint8_cache(entry, out, meta, key=_key(clean_key, seed, limit, name, s))
    return paths


def load_cifar10c(name: str, severity: int, root: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, seed: int = 0, limit: int | None = None,
                  device: str | torch.device = "cpu", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of corruption ``name`` at ``severity``, memory-mapped from the cache.

    Built on demand (see [`build_cifar10c`][metalearn.data.cifar10c.build_cifar10c]).

    Args:
        name: The corruption, one of `CORRUPTIONS`.
        severity: 1..5.
        root: Data root holding ``cifar10/`` (default $METALEARN_DATA).
        cache_dir: Cache directory (default $METALEARN_CACHE or ~/.cache/metalearn).
        seed: The generation seed.
        limit: Only the first ``limit`` test images (smoke tests).
        device: Where the corruptions run when the entry is built; the output does not depend on it.
        progress: Show a tqdm bar.

    Returns:
        ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``, N = 10000 (or ``limit``).
    """
    (name,), (severity,) = _check_names((name,)), _check_severities((severity,))
    limit = _check_limit(limit)
    build_cifar10c(root, cache_dir, (severity,), (name,), seed=seed, limit=limit, device=device, progress=progress,
                   verify=True)
    _, kind, _, clean_key = source_key(root, "test")
    entry = _entry(_cache_dir(cache_dir), kind, seed, limit, name, severity)
    hit = _cache.load_uint8_cache(entry, _key(clean_key, seed, limit, name, severity), verify=False)
    if hit is None:  # pragma: no cover - build_cifar10c just wrote it
        raise ValueError(f"cache entry {entry} could not be read back after building it")
    images, _ = hit
    _, labels = load_cifar10(root, "test", cache_dir, progress=progress)
    labels = labels[: images.shape[0]]
    return torch.from_numpy(images), labels


# ----------------------------------------------------------------------------- the official release
#: Corruptions of the official CIFAR-10-C release beyond the 15 of the benchmark (its "extra" set).
OFFICIAL_EXTRA = ("gaussian_blur", "saturate", "spatter", "speckle_noise")
#: Folders (under the data root) looked in for the official ``.npy`` files, in order: where
#: ``metalearn data download cifar10c`` puts them, and the folder the release's tar unpacks to.
OFFICIAL_FOLDERS = ("cifar10c", "CIFAR-10-C")


def official_folder(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the official CIFAR-10-C files (``labels.npy`` + ``<corruption>.npy``): the first of
    ``<root>/cifar10c/``, ``<root>/CIFAR-10-C/`` that has ``labels.npy``; ``root`` may also be that folder."""
    from metalearn.data.paths import data_root
    base = data_root(root)
    for folder in (base, *(base / f for f in OFFICIAL_FOLDERS)):
        if (folder / "labels.npy").is_file():
            return folder
    raise FileNotFoundError(
        f"official CIFAR-10-C not found: no labels.npy in {', '.join(str(base / f) for f in OFFICIAL_FOLDERS)}; "
        "get it with `metalearn data download cifar10c` (2.9 GB), or use the locally generated corruptions "
        "(load_cifar10c / `metalearn data cifar10c`)")


def _load_official_npy(path: Path, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"official CIFAR-10-C file {str(path)!r} not found")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: cannot read the .npy file, truncated or corrupted? ({type(e).__name__}: {e})"
                         ) from e
    if arr.dtype != np.uint8 or arr.ndim != ndim or arr.shape[0] % 5 or arr.shape[0] == 0:
        want = "(50000, 32, 32, 3)" if ndim == 4 else "(50000,)"
        raise ValueError(f"{path}: holds {arr.dtype} {tuple(arr.shape)}, expected uint8 {want} "
                         "(5 severities x 10000 test images)")
    if ndim == 4 and tuple(arr.shape[1:]) != (32, 32, 3):
        raise ValueError(f"{path}: images are {tuple(arr.shape[1:])}, expected (32, 32, 3) (HWC)")
    return arr


def load_cifar10c_official(name: str, severity: int, root: str | os.PathLike | None = None,
                           limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One corruption of the official CIFAR-10-C release (Hendrycks & Dietterich 2019) at ``severity``.

    The release holds ``<corruption>.npy``, uint8 (50000, 32, 32, 3): severities 1..5 one after the other, each
    the 10000 CIFAR-10 test images in their original order, and ``labels.npy`` (50000,) (the test labels five
    times). Nothing is decoded or cached: the block is read from a memory map.

    Args:
        name: a corruption of `CORRUPTIONS` or `OFFICIAL_EXTRA`.
        severity: 1..5.
        root: the data root holding ``cifar10c/`` (or ``CIFAR-10-C/``), default $METALEARN_DATA; or that folder.
        limit: only the first ``limit`` images (the first test images, as for the generated corruptions).

    Returns:
        ``(images uint8 (N, 3, 32, 32) RGB, labels int64 (N,))``, N = 10000 or ``limit``: the same layout as
        [`load_cifar10c`][metalearn.data.cifar10c.load_cifar10c], so TTT and Tent run on either.
    """
    if name not in CORRUPTIONS and name not in OFFICIAL_EXTRA:
        raise ValueError(f"name: unknown corruption {name!r}; expected one of "
                         f"{', '.join(CORRUPTIONS + OFFICIAL_EXTRA)}")
    (severity,), limit = _check_severities((severity,)), _check_limit(limit)
    folder = official_folder(root)
    images = _load_official_npy(folder / f"{name}.npy", 4)
    labels = _load_official_npy(folder / "labels.npy", 1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{folder}: {name}.npy has {images.shape[0]} images but labels.npy {labels.shape[0]} labels")
    per = images.shape[0] // 5   # 10000 in the release
    n = per if limit is None else min(limit, per)
    start = (severity - 1) * per
    x = np.ascontiguousarray(images[start:start + n].transpose(0, 3, 1, 2))
    y = np.asarray(labels[start:start + n], dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{folder / 'labels.npy'}: labels outside 0..9")
    return torch.from_numpy(x), torch.from_numpy(y)
