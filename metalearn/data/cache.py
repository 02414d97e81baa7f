"""Checksums, atomic writes, the decoded-uint8 array cache, and small Hugging Face ``datasets`` helpers.

Cache format (``FORMAT_VERSION`` 1): a cache entry named ``<path>`` is two files side by side

* ``<path>.npy``  — the images, one uint8 array (any shape, typically (M, C, H, W)), plain ``np.save`` format,
  loaded back with ``mmap_mode="c"`` (copy-on-write memory map: nothing is read until used, and the tensor
  made from it is writable without touching the file);
* ``<path>.json`` — ``{"format": 1, "key": ..., "shape": [...], "dtype": "uint8", "npy_bytes": <file size>,
  "sha256": <sha256 of the .npy file>, "meta": {...}}``. ``meta`` is whatever the loader stores (class
  names, counts, ...). ``key`` identifies the inputs (checksums of the source files, image size, the loader's
  own format version; see [`make_key`][metalearn.data.cache.make_key]).

Both files are written with [`atomic_write`][metalearn.data.cache.atomic_write] (temp file in the same folder, fsync, ``os.replace``), the
``.npy`` first and the ``.json`` last, so the ``.json`` is the commit record: an interrupted build leaves the
previous entry (or nothing) in place, never a half-written file under the final name.

On load a missing entry or a key that differs (the sources or settings changed) returns ``None``: the caller
rebuilds and overwrites. A damaged entry (size or checksum mismatch, unreadable json/npy) raises
[`CacheDamagedError`][metalearn.data.cache.CacheDamagedError] naming the file; [`load_or_build`][metalearn.data.cache.load_or_build], whose caller has the source files, then
rebuilds it and says so (a [`CacheRebuildWarning`][metalearn.data.cache.CacheRebuildWarning]), so a damaged cache never needs deleting by hand.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

import numpy as np

from metalearn.data.paths import CACHE_DIR_SETTINGS, SettingError

FORMAT_VERSION = 1
_CHUNK = 1 << 20


class CacheDamagedError(ValueError):
    """A cache entry whose files are truncated or corrupted; ``file`` is the damaged file, ``why`` the finding."""

    def __init__(self, file: Path, why: str) -> None:
        self.file, self.why = Path(file), why
        super().__init__(f"cache file {str(file)!r} is damaged ({why}); delete it (and its .npy/.json twin) "
                         "to rebuild the cache")


class CacheRebuildWarning(UserWarning):
    """A damaged cache entry is being rebuilt from its source files."""


warnings.filterwarnings("always", category=CacheRebuildWarning)   # one line per rebuilt entry, every time


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def make_key(*parts: object) -> str:
    """A cache key: sha256 of the JSON of ``(FORMAT_VERSION, *parts)`` (parts must be JSON-serialisable).

    Typical parts: the loader name and version, ``{file name: sha256}`` of every source file, the image size.
    """
    blob = json.dumps([FORMAT_VERSION, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DiskFullError(OSError):
    """The device filled up while writing ``filename``; ``str()`` is "no space left on device while writing
    FILE". The file's previous content (or its absence) is kept: atomic writes never leave a partial file."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}", str(path))

    def __str__(self) -> str:
        return f"{self.strerror}; the previous {Path(self.filename).name} (if any) is unchanged. Free some space " \
               "and run the command again"


#: a temporary file of an interrupted write older than this is removed by the next write of its target even
#: when it cannot be shown to belong to a dead process (written on another host, or by an older metalearn)
STALE_TEMP_AGE_S = 3600.0
_HOST = re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname())[:32] or "host"


def _temp_prefix(path: Path) -> str:
    """``.<name>.<pid>-<host>.``: a temporary of ``path`` names the process that writes it (then 8 random
    characters of ``tempfile.mkstemp`` and ``.tmp``)."""
    if len(path.name) > 180:   # keep the temporary's name within the 255 bytes of common file systems
        return f".{path.name}."
    return f".{path.name}.{os.getpid()}-{_HOST}."


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still be running (True when that cannot be told)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no signal-0 probe: let the age rule decide
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's live process
        return True
    try:  # a killed child that was not reaped yet is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_temporaries(path: str | os.PathLike, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """The temporary files that interrupted [`atomic_write`][metalearn.data.cache.atomic_write] calls of ``path`` left.

    Such files stay behind after a ``kill -9`` during a checkpoint save or a cache build. They are
    ``.<name>.<pid>-<host>.XXXXXXXX.tmp`` of a process of this host that no longer runs, and any
    ``.<name>[.<pid>-<host>].XXXXXXXX.tmp`` not modified for ``max_age_s`` seconds. Nothing else matches: other
    files, temporaries of other targets, and those of live writers stay.

    Args:
        path: The target file the temporaries were written for.
        max_age_s: A temporary not modified for this many seconds counts as stale whoever wrote it.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)-([A-Za-z0-9_-]+)\.)?[a-z0-9_]{{8}}\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    now, out = time.time(), []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid, host = m.group(1), m.group(2)
        dead = pid is not None and host == _HOST and not _pid_alive(int(pid))
        if dead or age > max_age_s:
            out.append(Path(entry.path))
    return out


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete [`stale_temporaries`][metalearn.data.cache.stale_temporaries] of ``path``; returns what was removed."""
    removed = []
    for tmp in stale_temporaries(path):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` atomically: ``with atomic_write(p) as f: f.write(...)``.

    The data goes to a temp file in the same folder (so ``os.replace`` stays on one file system), which is
    flushed, fsynced and renamed over ``path`` only when the block finishes without an exception. On an
    exception the temp file is removed and ``path`` keeps its previous content (or stays absent); the
    temporaries a crash (``kill -9``) left are removed by the next write of ``path``
    ([`remove_stale_temporaries`][metalearn.data.cache.remove_stale_temporaries]).

    Args:
        path: The file to write.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8).

    Raises:
        ValueError: Another ``mode``.
        DiskFullError: The disk is full ([`DiskFullError`][metalearn.data.cache.DiskFullError] names ``path``).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = Path(path)
    ok, tmp = False, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache may be shared
        os.replace(tmp, path)
        ok = True
        _fsync_dir(path.parent)
    except OSError as e:
        if e.errno == errno.ENOSPC and not isinstance(e, DiskFullError):
            raise DiskFullError(path) from None
        raise
    finally:
        if not ok and tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class _HashingWriter:
    """File-like wrapper that hashes and counts what passes through (np.save writes via .write)."""

    def __init__(self, f: IO) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        mv = memoryview(b).cast("B")
        self.h.update(mv)
        self.n += mv.nbytes
        return self.f.write(mv)

    def flush(self) -> None:
        self.f.flush()


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    return p.with_name(p.name + ".npy"), p.with_name(p.name + ".json")


def save_uint8_cache(path: str | os.PathLike, images: np.ndarray, meta: dict, *, key: str = "") -> Path:
    """Store ``images`` and ``meta`` as ``<path>.npy`` + ``<path>.json``.

    Both writes are atomic; the json is written last.

    Args:
        path: The entry's path, without an extension.
        images: A uint8 array of any shape.
        meta: JSON-serialisable metadata.
        key: The key [`load_uint8_cache`][metalearn.data.cache.load_uint8_cache] checks.

    Returns:
        The ``.npy`` path.

    Raises:
        ValueError: ``images`` is not uint8.
        SettingError: The cache directory is not writable.
        DiskFullError: The disk is full.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images: expected a uint8 array, got {images.dtype}")
    npy, js = _paths(path)
    try:
        with atomic_write(npy) as f:
            w = _HashingWriter(f)
            np.save(w, np.ascontiguousarray(images), allow_pickle=False)
            w.flush()
        record = {"format": FORMAT_VERSION, "key": key, "shape": list(images.shape), "dtype": "uint8",
                  "npy_bytes": w.n, "sha256": w.h.hexdigest(), "meta": meta}
        with atomic_write(js, "w") as f:
            json.dump(record, f)
    except DiskFullError:
        raise
    except OSError as e:  # read-only or vanished cache directory
        raise SettingError(f"cannot write the cache file {str(npy)!r} ({e.strerror or e}); the "
                           f"cache directory must be writable: choose one with {CACHE_DIR_SETTINGS}") from None
    return npy


def _damaged(file: Path, why: str) -> CacheDamagedError:
    return CacheDamagedError(file, why)


def load_uint8_cache(path: str | os.PathLike, key: str | None = None,
                     verify: bool = True) -> tuple[np.ndarray, dict] | None:
    """Load a cache entry written by [`save_uint8_cache`][metalearn.data.cache.save_uint8_cache].

    Args:
        path: The entry's path, without an extension.
        key: The expected key; ``None`` skips the key check.
        verify: Check the sha256 of the ``.npy`` (reads the whole file once); ``False`` checks sizes, shape and
            dtype only.

    Returns:
        ``(images, meta)`` with ``images`` a copy-on-write memory map (uint8, the saved shape), or ``None`` when
        the entry is absent or its key differs from ``key`` (stale: rebuild).

    Raises:
        ValueError: The entry is truncated or corrupted (a ``CacheDamagedError`` naming the file).
    """
    npy, js = _paths(path)
    if not js.is_file():
        return None
    try:
        record = json.loads(js.read_text(encoding="utf-8"))
        rec_key, shape, rec_bytes, rec_sha = record["key"], tuple(record["shape"]), record["npy_bytes"], \
            record["sha256"]
        meta = record["meta"]
        fmt = record["format"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _damaged(js, f"unreadable record: {e}") from e
    if fmt != FORMAT_VERSION or (key is not None and rec_key != key):
        return None
    if not npy.is_file():
        return None  # json without data (e.g. data deleted by hand): rebuild
    size = npy.stat().st_size
    if size != rec_bytes:
        raise _damaged(npy, f"{size} bytes, expected {rec_bytes}: truncated or overwritten")
    if verify:
        got = sha256_file(npy)
        if got != rec_sha:
            raise _damaged(npy, f"sha256 {got[:12]}... does not match the recorded {rec_sha[:12]}...")
    try:
        arr = np.load(npy, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _damaged(npy, f"unreadable .npy: {e}") from e
    if arr.dtype != np.uint8 or tuple(arr.shape) != shape:
        raise _damaged(npy, f"holds {arr.dtype} {tuple(arr.shape)}, expected uint8 {shape}")
    return arr, meta


_PROGRESS = True   # False inside progress_bars(False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress(total: int, desc: str, unit: str = "it", enabled: bool = True):
    """A tqdm progress bar for long decodes.

    A no-op object if disabled, turned off by [`progress_bars`][metalearn.data.cache.progress_bars], or tqdm is
    not installed.

    Args:
        total: The number of steps.
        desc: The bar's label.
        unit: The unit of a step.
        enabled: False gives the no-op object.
    """
    enabled = enabled and _PROGRESS
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            enabled = False
    if not enabled:
        yield _NoBar()
        return
    with tqdm(total=total, desc=desc, unit=unit, leave=False) as bar:
        yield bar


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Turn every data-decoding progress bar of [`progress`][metalearn.data.cache.progress] off (``enabled=False``, e.g. ``--quiet``) or
    leave them as each call asks, inside the block."""
    global _PROGRESS
    old, _PROGRESS = _PROGRESS, bool(enabled)
    try:
        yield
    finally:
        _PROGRESS = old


def cache_entry_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """The two files of cache entry ``path``: (``<path>.npy``, ``<path>.json``)."""
    return _paths(path)


def file_checksums(files: Sequence[str | os.PathLike]) -> dict:
    """``{file name: sha256}`` for each file (for [`make_key`][metalearn.data.cache.make_key])."""
    return {Path(f).name: sha256_file(f) for f in files}


# ----------------------------------------------------------------------------- Hugging Face datasets helpers
def dir_checksums(folder: Path) -> dict:
    """``{relative path: sha256}`` of every file under ``folder`` (cache key of a ``save_to_disk`` folder)."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def import_datasets():
    """The ``datasets`` module, or an ImportError saying how to install it."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is an optional extra
        raise ImportError("the Hugging Face source needs the `datasets` package: pip install 'torch-metalearn[hf]'") from e
    return datasets


def locate_hf(hf_name: str | os.PathLike) -> tuple[object, Callable[[], object]]:
    """(key ingredients, load()) for a local save_to_disk folder, else a Hub id (loaded now for its fingerprint)."""
    datasets = import_datasets()
    path = Path(hf_name).expanduser()
    if path.is_dir():
        def load():
            try:
                return datasets.load_from_disk(str(path))
            except Exception as e:  # datasets raises several types for broken folders
                raise ValueError(f"{path}: cannot load the Arrow dataset ({type(e).__name__}: {e})") from e
        return {"dir": dir_checksums(path)}, load
    ds = datasets.load_dataset(str(hf_name))
    parts = ds.values() if isinstance(ds, datasets.DatasetDict) else [ds]
    return {"hub": str(hf_name), "fingerprints": [d._fingerprint for d in parts]}, (lambda: ds)


def hf_dataset_columns(ds, label: str, required: Sequence[str], split_from_keys: Sequence[str] | None = None):
    """Concatenate a DatasetDict (adding a 'split' column from its keys if absent) and check the columns."""
    datasets = import_datasets()
    if isinstance(ds, datasets.DatasetDict):
        parts = []
        for k, d in ds.items():
            if "split" not in d.column_names and split_from_keys is not None:
                if k not in split_from_keys:
                    raise ValueError(f"{label}: DatasetDict key {k!r} is not one of {tuple(split_from_keys)} and "
                                     "there is no 'split' column")
                d = d.add_column("split", [k] * len(d))
            parts.append(d)
        ds = datasets.concatenate_datasets(parts) if parts else None
    if ds is None or not isinstance(ds, datasets.Dataset):
        raise ValueError(f"{label}: expected a datasets.Dataset or DatasetDict, got {type(ds).__name__}")
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise ValueError(f"{label}: missing column(s) {missing}; found {ds.column_names}; expected schema "
                         f"{list(required)}")
    if isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def hf_image_bytes(value, where: str) -> bytes:
    """Encoded bytes of one value of an ``Image(decode=False)`` column ({"bytes", "path"})."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path"):
            with open(value["path"], "rb") as f:
                return f.read()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"{where}: image column holds {type(value).__name__}, expected an Image feature")


def save_dataset_atomically(ds, out: str | os.PathLike) -> Path:
    """``ds.save_to_disk`` into a temp folder beside ``out``, then swap it in."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ds.save_to_disk(str(tmp))
        if out.exists():
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_or_build(path: str | os.PathLike, key: str, build: Callable[[], tuple[np.ndarray, dict]]
                  ) -> tuple[np.ndarray, dict]:
    """The cached ``(images, meta)`` under ``path`` if its key matches, else ``build()`` them and cache them.

    A damaged entry is rebuilt (the caller has the sources: ``build`` reads them), with a
    [`CacheRebuildWarning`][metalearn.data.cache.CacheRebuildWarning] naming the file.

    Args:
        path: The entry's path, without an extension.
        key: The key the entry must have.
        build: Makes ``(images, meta)`` from the sources.
    """
    try:
        hit = load_uint8_cache(path, key)
    except CacheDamagedError as e:
        warnings.warn(f"cache file {str(e.file)!r} is damaged ({e.why}); rebuilding it from the source files",
                      CacheRebuildWarning, stacklevel=2)
        hit = None
    if hit is not None:
        return hit
    images, meta = build()
    save_uint8_cache(path, images, meta, key=key)
    return images, meta
