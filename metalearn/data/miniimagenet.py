"""miniImageNet (Vinyals et al. 2016; Ravi & Larochelle split): 64 / 16 / 20 classes x 600 images, 84x84 RGB.

Files under ``<root>/miniimagenet/``:

* ``train.csv``, ``val.csv``, ``test.csv``: ``filename,label`` (label = WordNet id); the split definition.
* images, one of
  - ``"tar"``: the archives ``images_train_1.tar.gz`` + ``images_train_2.tar.gz`` (train), ``images_val.tar.gz``,
    ``images_test.tar.gz``, each holding ``images/<filename>``; read in place with `tarfile` (nothing is
    extracted to disk);
  - ``"folder"``: an already extracted ``images/<filename>`` folder;
  - ``"hf"``: a Hugging Face Arrow dataset (see `HF_SCHEMA`), ``hf_name`` or ``<root>/miniimagenet_hf``;
    [`export_miniimagenet_hf`][metalearn.data.miniimagenet.export_miniimagenet_hf] writes one from the csv + archives
    (JPEG bytes copied as they are);
  - ``"l2l"``: learn2learn's pickled cache ``mini-imagenet-cache-{train,validation,test}.pkl`` (no csv needed):
    a dict with ``image_data`` (uint8 (N, 84, 84, 3)) and ``class_dict`` ({WordNet id: [row indices]}), read
    with [`metalearn.data.safe_pickle`][metalearn.data.safe_pickle] (plain data only: a crafted file cannot run code);
  - ``"h5"``: torchmeta's files ``{train,val,test}_data.hdf5`` (group ``datasets``: one uint8 (600, 84, 84, 3)
    array per WordNet id) + ``{split}_labels.json`` (the list of WordNet ids); needs ``h5py`` (the ``[h5py]``
    extra).
* ``"auto"``: ``hf_name`` if given, else the split's archives, else ``images/``, else the learn2learn pickle,
  else torchmeta's HDF5 file, else ``<root>/miniimagenet_hf``.

Each split is decoded once (PIL -> RGB uint8, resized to 84x84 with bilinear if it is not already) and cached as
a uint8 (M, 3, 84, 84) ``.npy`` (train: 38400 images, ~813 MB), memory-mapped on later loads. Classes are sorted
by WordNet id; the images of a class keep their csv order.
"""
from __future__ import annotations

import csv
import io
import os
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from metalearn.data import cache as _cache
from metalearn.data.paths import cache_dir as _cache_dir
from metalearn.data.paths import data_root as _data_root
from metalearn.data.storage import ClassImages

SPLITS = ("train", "val", "test")
SOURCES = ("auto", "tar", "folder", "hf", "l2l", "h5")
ARCHIVES = {"train": ("images_train_1.tar.gz", "images_train_2.tar.gz"), "val": ("images_val.tar.gz",),
            "test": ("images_test.tar.gz",)}
IMAGE_SIZE = 84
_LOADER_VERSION = 1
_HF_SPLIT_KEYS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
#: learn2learn's pickle of each split (under ``<root>/miniimagenet/``)
L2L_FILES = {"train": "mini-imagenet-cache-train.pkl", "val": "mini-imagenet-cache-validation.pkl",
             "test": "mini-imagenet-cache-test.pkl"}
#: torchmeta's HDF5 file and JSON class list of each split (under ``<root>/miniimagenet/``)
H5_FILES = {s: (f"{s}_data.hdf5", f"{s}_labels.json") for s in SPLITS}

#: Columns accepted from a Hugging Face dataset: a DatasetDict with keys "train", "val" (or "validation"),
#: "test", or one Dataset with an extra string column ``split`` holding those names.
HF_SCHEMA = {
    "image": "datasets.Image() (JPEG/any PIL-readable bytes), RGB, resized to 84x84 if it is not",
    "label": "WordNet id: a string ('n01532829'), or a ClassLabel whose names are WordNet ids",
    "filename": "optional string, the original file name (for messages)",
}

_ERRORS = (tarfile.TarError, zlib.error, EOFError, OSError, ValueError, SyntaxError)


def _mini_dir(root) -> Path:
    return _data_root(root) / "miniimagenet"


def read_split_csv(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``filename,label`` csv -> (filenames, labels) in file order; ValueError naming the file if malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"miniImageNet split file {str(path)!r} not found")
    files, labels = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
                raise ValueError(f"expected columns filename,label, got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                if not row["filename"] or not row["label"]:
                    raise ValueError(f"line {line}: empty filename or label")
                files.append(row["filename"])
                labels.append(row["label"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: malformed miniImageNet split file ({e})") from e
    if not files:
        raise ValueError(f"{path}: no images listed")
    if len(set(files)) != len(files):
        dup = next(f for i, f in enumerate(files) if f in files[:i])
        raise ValueError(f"{path}: file {dup!r} is listed twice")
    return files, labels


def class_order(labels: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(class names sorted, order, counts): ``order`` puts the rows class by class (sorted WordNet ids), each
    class in its original row order; ``counts`` the images per class."""
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    cls = np.array([index[x] for x in labels], dtype=np.int64)
    order = np.argsort(cls, kind="stable")
    counts = np.bincount(cls, minlength=len(names))
    return names, order, counts


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    """Image bytes -> (3, 84, 84) uint8 RGB (bilinear resize if needed); ValueError naming ``where`` if broken."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = im.convert("RGB")
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            arr = np.asarray(im)
    except _ERRORS as e:
        raise ValueError(f"{where}: cannot decode image, corrupt JPEG? ({type(e).__name__}: {e})") from e
    return arr.transpose(2, 0, 1)


# ----------------------------------------------------------------------------- raw image bytes per source
def _iter_tar(archives: Sequence[Path], wanted: dict) -> Iterator[tuple[int, bytes, str]]:
    """(position, bytes, where) for every member of ``archives`` whose base name is in ``wanted`` {name: pos}."""
    found: set = set()
    for path in archives:
        try:
            with tarfile.open(path, "r:gz") as tf:
                for m in tf:
                    name = m.name.rsplit("/", 1)[-1]
                    if not m.isfile() or name not in wanted or name in found:
                        continue
                    f = tf.extractfile(m)
                    data = f.read() if f is not None else b""
                    found.add(name)
                    yield wanted[name], data, f"{path}:{m.name}"
        except _ERRORS as e:
            raise ValueError(f"{path}: cannot read archive, truncated or corrupted? ({type(e).__name__}: {e})"
                             ) from e
    missing = [n for n in wanted if n not in found]
    if missing:
        raise ValueError(f"{len(missing)} file(s) listed in the split csv are not in {[str(a) for a in archives]}"
                         f", e.g. {missing[:5]}")


def _iter_folder(folder: Path, files: Sequence[str]) -> Iterator[tuple[int, bytes, str]]:
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} file(s) listed in the split csv are not in {str(folder)!r}, "
                         f"e.g. {missing[:5]}")
    for pos, name in enumerate(files):
        path = folder / name
        yield pos, path.read_bytes(), str(path)


class _Split:
    """A located split: ``kind``, ``label``, ``key`` (cheap cache-key ingredients) and ``open()`` ->
    (labels per row, iterator of (row, bytes, where)); rows are in csv (or dataset) order."""

    def __init__(self, kind: str, label: str, key: object, opener: Callable[[], tuple]) -> None:
        self.kind, self.label, self.key, self.open = kind, label, key, opener


def _tar_split(folder: Path, split: str) -> _Split:
    csv_path = folder / f"{split}.csv"
    archives = [folder / a for a in ARCHIVES[split]]

    def opener():
        files, labels = read_split_csv(csv_path)
        return labels, _iter_tar(archives, {f: i for i, f in enumerate(files)})

    return _Split("tar", str(folder), _cache.file_checksums([csv_path, *archives]), opener)


def _folder_split(folder: Path, split: str) -> _Split:
    csv_path = folder / f"{split}.csv"
    images = folder / "images"
    files, labels = read_split_csv(csv_path)
    # key: the csv's checksum and (name, size, mtime) of the split's files: hashing 38k JPEGs each call is slow
    stats = []
    for f in files:
        try:
            st = (images / f).stat()
            stats.append((f, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((f, -1, -1))
    key = {"csv": _cache.sha256_file(csv_path), "files": _cache.make_key(stats)}
    return _Split("folder", str(images), key, lambda: (labels, _iter_folder(images, files)))


def _hf_split(hf_name, split: str) -> _Split:
    label = str(hf_name)
    key, load = _cache.locate_hf(hf_name)

    def opener():
        datasets = _cache.import_datasets()
        ds = load()
        if isinstance(ds, datasets.DatasetDict):
            keys = [k for k in _HF_SPLIT_KEYS[split] if k in ds]
            if not keys:
                raise ValueError(f"{label}: no split {split!r} (looked for keys {_HF_SPLIT_KEYS[split]}, found "
                                 f"{list(ds.keys())})")
            ds = ds[keys[0]]
        elif "split" in ds.column_names:
            names = set(_HF_SPLIT_KEYS[split])
            ds = ds.filter(lambda s: s in names, input_columns="split")
        else:
            raise ValueError(f"{label}: a single Dataset needs a 'split' column; or save a DatasetDict with keys "
                             "train/val/test")
        if len(ds) == 0:
            raise ValueError(f"{label}: split {split!r} is empty")
        ds = _cache.hf_dataset_columns(ds, label, ["image", "label"])
        feat = ds.features["label"]
        raw = list(ds["label"])
        labels = [feat.int2str(int(x)) for x in raw] if isinstance(feat, datasets.ClassLabel) else [str(x) for x in raw]
        fnames = list(ds["filename"]) if "filename" in ds.column_names else None
        images = list(ds["image"])  # [{"bytes", "path"}], materialised once

        def rows():
            for r in range(len(ds)):
                where = f"{label} [{split}] row {r}" + (f" ({fnames[r]})" if fnames else "")
                yield r, _cache.hf_image_bytes(images[r], where), where

        return labels, rows()

    return _Split("hf", label, key, opener)


def _read_l2l(path: Path) -> tuple[np.ndarray, list[str], list[int]]:
    """learn2learn's ``mini-imagenet-cache-<split>.pkl`` -> (images (M, 3, 84, 84) uint8 grouped by class, sorted
    WordNet ids, counts); rows of a class keep the order of its ``class_dict`` list."""
    from metalearn.data import safe_pickle
    try:
        with open(path, "rb") as f:
            data = safe_pickle.load(f, where=str(path))
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise ValueError(f"{path}: expected learn2learn's miniImageNet cache, a dict with 'image_data' and "
                         f"'class_dict'; got {type(data).__name__}"
                         + (f" with keys {sorted(map(str, data))}" if isinstance(data, dict) else ""))
    images, classes = data["image_data"], data["class_dict"]
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
            or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3)):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{path}: image_data: expected a uint8 array (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), got {got}")
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"{path}: class_dict: expected a non-empty dict {{WordNet id: [row indices]}}")
    names = sorted(str(k) for k in classes)
    by_name = {str(k): v for k, v in classes.items()}
    rows, counts = [], []
    for wnid in names:
        idx = by_name[wnid]
        if (not isinstance(idx, (list, tuple, np.ndarray)) or len(idx) == 0
                or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in idx)):
            raise ValueError(f"{path}: class_dict[{wnid!r}]: expected a non-empty list of row indices")
        rows.extend(int(i) for i in idx)
        counts.append(len(idx))
    bad = [i for i in rows if not 0 <= i < images.shape[0]]
    if bad:
        raise ValueError(f"{path}: class_dict lists row {bad[0]}, but image_data has {images.shape[0]} images")
    if len(set(rows)) != len(rows):
        raise ValueError(f"{path}: class_dict lists a row under two classes (or twice)")
    out = np.ascontiguousarray(images[np.asarray(rows, dtype=np.int64)].transpose(0, 3, 1, 2))
    return out, names, counts


def _l2l_split(folder: Path, split: str) -> _Split:
    path = folder / L2L_FILES[split]

    def opener():  # the pickle holds decoded pixels, not image files: load_miniimagenet reads it with _read_l2l
        raise ValueError(f"{path}: the learn2learn pickle holds decoded pixels, not the JPEG files this needs; "
                         "use the csv files with the archives or the images/ folder")

    return _Split("l2l", str(path), _cache.file_checksums([path]), opener)


def _read_h5(data_path: Path, labels_path: Path) -> tuple[np.ndarray, list[str], list[int]]:
    """Read torchmeta's ``<split>_data.hdf5`` + ``<split>_labels.json``; rows of a class keep their order in the file.

    Args:
        data_path: The ``<split>_data.hdf5`` file.
        labels_path: The ``<split>_labels.json`` file (the class list).

    Returns:
        (images (M, 3, 84, 84) uint8 grouped by class, sorted WordNet ids, counts).

    Raises:
        ValueError: A file that cannot be read or does not hold what torchmeta writes.
    """
    import json

    from metalearn.extras import require
    h5py = require("h5py", "h5py", "reading torchmeta's miniImageNet HDF5 files")
    try:
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{labels_path}: cannot read the class list ({e})") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{labels_path}: expected a JSON list of class names (WordNet ids)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{labels_path}: a class is listed twice")
    names = sorted(labels)
    parts, counts = [], []
    try:
        with h5py.File(data_path, "r") as f:
            if "datasets" not in f:
                raise ValueError(f"{data_path}: no group 'datasets' (found {sorted(f.keys())}): not torchmeta's "
                                 "miniImageNet file")
            group = f["datasets"]
            missing = [n for n in names if n not in group]
            if missing:
                raise ValueError(f"{data_path}: classes listed in {labels_path.name} are missing, e.g. {missing[:3]}")
            for n in names:
                arr = group[n][()]
                if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) \
                        or arr.shape[0] == 0:
                    raise ValueError(f"{data_path}: datasets/{n} holds {arr.dtype} {arr.shape}, expected uint8 "
                                     f"(n, {IMAGE_SIZE}, {IMAGE_SIZE}, 3)")
                parts.append(arr.transpose(0, 3, 1, 2))
                counts.append(arr.shape[0])
    except OSError as e:
        raise ValueError(f"{data_path}: cannot read the HDF5 file, truncated or corrupted? ({e})") from None
    return np.ascontiguousarray(np.concatenate(parts)), names, counts


def _h5_split(folder: Path, split: str) -> _Split:
    paths = [folder / f for f in H5_FILES[split]]

    def opener():  # the file holds decoded pixels: load_miniimagenet reads it with _read_h5
        raise ValueError(f"{paths[0]}: torchmeta's HDF5 file holds decoded pixels, not the JPEG files this needs; "
                         "use the csv files with the archives or the images/ folder")

    return _Split("h5", str(paths[0]), _cache.file_checksums(paths), opener)


def _resolve(root, split: str, source: str, hf_name) -> _Split:
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
    if source == "hf" or (source == "auto" and hf_name is not None):
        if hf_name is None:
            hf_name = _data_root(root) / "miniimagenet_hf"
            if not hf_name.is_dir():
                raise FileNotFoundError(f"miniImageNet (source='hf'): no Arrow dataset folder {str(hf_name)!r}; pass "
                                        "hf_name=<folder or Hub id> or write one with export_miniimagenet_hf")
        return _hf_split(hf_name, split)
    folder = _mini_dir(root)
    csv_path = folder / f"{split}.csv"
    archives = [folder / a for a in ARCHIVES[split]]
    have_tars = all(a.is_file() for a in archives)
    if source == "tar" or (source == "auto" and have_tars):
        missing = [str(p) for p in [csv_path, *archives] if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"miniImageNet (source='tar', split={split!r}): missing {missing}")
        return _tar_split(folder, split)
    if source == "folder" or (source == "auto" and (folder / "images").is_dir()):
        missing = [str(p) for p in [csv_path, folder / "images"] if not p.exists()]
        if missing:
            raise FileNotFoundError(f"miniImageNet (source='folder', split={split!r}): missing {missing}")
        return _folder_split(folder, split)
    l2l = folder / L2L_FILES[split]
    if source == "l2l" or (source == "auto" and l2l.is_file()):
        if not l2l.is_file():
            raise FileNotFoundError(f"miniImageNet (source='l2l', split={split!r}): missing {str(l2l)!r} "
                                    "(learn2learn's mini-imagenet-cache-<split>.pkl)")
        return _l2l_split(folder, split)
    h5 = [folder / f for f in H5_FILES[split]]
    if source == "h5" or (source == "auto" and h5[0].is_file()):
        missing = [str(p) for p in h5 if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"miniImageNet (source='h5', split={split!r}): missing {missing} (torchmeta's "
                                    "<split>_data.hdf5 and <split>_labels.json)")
        return _h5_split(folder, split)
    hf_dir = folder.parent / "miniimagenet_hf"
    if hf_dir.is_dir():
        return _hf_split(hf_dir, split)
    raise FileNotFoundError(
        f"miniImageNet split {split!r} not found; looked for {csv_path} with the archives "
        + ", ".join(map(str, archives)) + f" or the folder {folder / 'images'}; the learn2learn file {l2l}; "
        f"torchmeta's {h5[0]}; and an Arrow dataset folder {hf_dir}")


def _decode_split(src: _Split, split: str) -> tuple[np.ndarray, list, list]:
    """-> images (M, 3, 84, 84) uint8 grouped by class (sorted WordNet id, csv order inside), names, counts."""
    labels, items = src.open()
    names, order, counts = class_order(labels)
    n = len(labels)
    dest = np.empty(n, dtype=np.int64)
    dest[order] = np.arange(n)  # row r of the csv goes to dest[r]
    out = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    done = np.zeros(n, dtype=bool)
    with _cache.progress(n, f"decoding miniImageNet {split} ({src.kind})", "img", enabled=n >= 1000) as bar:
        for r, data, where in items:
            out[dest[r]] = _decode_jpeg(data, where)
            done[r] = True
            bar.update(1)
    if not done.all():  # pragma: no cover - the iterators raise first
        raise ValueError(f"{src.label}: {int((~done).sum())} images of split {split!r} were not found")
    return out, names, counts.tolist()


def load_miniimagenet(root: str | os.PathLike | None = None, split: str = "train", source: str = "auto",
                      cache_dir: str | os.PathLike | None = None, hf_name: str | os.PathLike | None = None
                      ) -> ClassImages:
    """One miniImageNet split as [`ClassImages`][metalearn.data.storage.ClassImages].

    Args:
        root: data root holding ``miniimagenet/`` (default $METALEARN_DATA). Not needed for a Hub ``hf_name``.
        split: "train" (64 classes), "val" (16) or "test" (20); 600 images per class in the standard files.
        source: "auto", "tar", "folder", "hf", "l2l" or "h5" (see the module docstring).
        cache_dir: where the decoded cache lives (default $METALEARN_CACHE or ~/.cache/metalearn).
        hf_name: a ``save_to_disk`` folder or a Hub id for the "hf" source.

    Returns:
        ClassImages with images (M, 3, 84, 84) uint8 RGB grouped by class (sorted WordNet id; csv order inside
        a class), names = WordNet ids, rotations (0,). A cached split comes back memory-mapped (copy-on-write).
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    src = _resolve(root, split, source, hf_name)
    key = _cache.make_key("miniimagenet", _LOADER_VERSION, src.kind, split, src.key, IMAGE_SIZE)
    tag = src.kind if src.kind != "hf" else "hf_" + _cache.make_key(src.label)[:8]
    entry = _cache_dir(cache_dir) / f"miniimagenet_{tag}_{split}"

    def build() -> tuple[np.ndarray, dict]:
        if src.kind == "l2l":
            images, names, counts = _read_l2l(Path(src.label))
        elif src.kind == "h5":
            images, names, counts = _read_h5(*(Path(src.label).parent / f for f in H5_FILES[split]))
        else:
            images, names, counts = _decode_split(src, split)
        return images, {"names": names, "counts": counts, "split": split}

    images, meta = _cache.load_or_build(entry, key, build)
    names, counts = meta["names"], meta["counts"]
    counts_t = torch.as_tensor(counts, dtype=torch.int64)
    offsets = torch.cumsum(counts_t, 0) - counts_t
    return ClassImages(torch.from_numpy(images), offsets, counts_t, tuple(names), (0,))


def export_miniimagenet_hf(out_dir: str | os.PathLike, root: str | os.PathLike | None = None,
                           splits: Sequence[str] = SPLITS, source: str = "auto") -> Path:
    """Write miniImageNet as a Hugging Face Arrow ``DatasetDict`` (``save_to_disk``) at ``out_dir``.

    Keys = ``splits``; columns ``image`` (the original JPEG bytes, not re-encoded), ``label`` (WordNet id string),
    ``filename``; rows in csv order. ``load_miniimagenet(source="hf", hf_name=out_dir)`` then gives tensors
    identical to the archives. The folder is replaced atomically.

    Args:
        out_dir: The folder written.
        root: Data root holding ``miniimagenet/`` (default $METALEARN_DATA).
        splits: The splits exported.
        source: "auto", "tar" or "folder": where the JPEG files are read from.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: Another ``source``, or an unknown split.
    """
    datasets = _cache.import_datasets()
    if source not in ("auto", "tar", "folder"):
        raise ValueError(f"source: expected 'auto', 'tar' or 'folder', got {source!r}")
    folder = _mini_dir(root)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string"),
                                  "filename": datasets.Value("string")})
    out = {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"splits: {split!r} is not one of {SPLITS}")
        src = _resolve(root, split, source, None)
        files, labels = read_split_csv(folder / f"{split}.csv")
        blobs: list = [None] * len(files)
        for r, data, _ in src.open()[1]:
            blobs[r] = {"bytes": data, "path": None}
        out[split] = datasets.Dataset.from_dict({"image": blobs, "label": labels, "filename": files},
                                                features=features)
    return _cache.save_dataset_atomically(datasets.DatasetDict(out), Path(out_dir))
