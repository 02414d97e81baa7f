"""Omniglot (Lake et al. 2015): 1623 characters x 20 drawings, with the Vinyals split as ClassImages.

Sources (all decode to the *same* uint8 tensors; paper = 255, ink = 0, as in the original PNGs):

* ``"npz"``: ``<root>/omniglot/images_background.npz`` + ``images_evaluation.npz`` (``images`` bool
  (n, 20, 105, 105), True = paper; ``labels``) + ``omniglot_character_index.csv``
  (``char_id,split,alphabet,character,row_in_split_npz``: which npz row is which character).
* ``"zip"``: the original release, ``<root>/omniglot/images_background.zip`` + ``images_evaluation.zip``,
  holding ``images_background/<Alphabet>/characterNN/*.png`` (105x105; drawings sorted by file name).
* ``"folder"``: the release extracted, ``images_background/<Alphabet>/characterNN/*.png`` and
  ``images_evaluation/...``, in the first of the folders `FOLDER_CANDIDATES` that has both: torchvision's
  ``omniglot-py/`` (``<root>/omniglot/omniglot-py`` or ``<root>/omniglot-py``) or ``<root>/omniglot`` itself.
* ``"hf"``: a Hugging Face ``datasets`` dataset (see `HF_SCHEMA`): ``hf_name`` (a local
  ``save_to_disk`` folder, loaded with ``datasets.load_from_disk``, or a Hub id for ``datasets.load_dataset``),
  default ``<root>/omniglot_hf``. [`export_omniglot_hf`][metalearn.data.omniglot.export_omniglot_hf] writes one from
  the npz form.
* ``"auto"``: ``hf_name`` if given, else npz if present, else the zips, else the extracted folders, else
  ``<root>/omniglot_hf``.

Every source is decoded once, resized 105 -> ``image_size`` with PIL ``Image.resize((s, s), Image.BILINEAR)``
(``image_size=105`` keeps the originals) and cached as one uint8 array of all characters in split order
([`metalearn.data.cache`][metalearn.data.cache]); later calls only verify and slice the cache.

Split (Vinyals et al. 2016, as torchmeta; see docs BENCHMARKS.md): characters listed background first, then
evaluation; alphabets in plain string order, characters by number. The first 1200 are train+val, the last 423
test; val = the background alphabets in `VAL_ALPHABETS` (172 characters), train = the other 1028.
"""
from __future__ import annotations

import csv
import io
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from metalearn.data import cache as _cache
from metalearn.data.paths import cache_dir as _cache_dir
from metalearn.data.paths import data_root as _data_root
from metalearn.data.storage import ClassImages

SPLITS = ("train", "val", "test", "trainval", "all")
SOURCES = ("auto", "npz", "zip", "folder", "hf")
#: Where the extracted release may sit under the data root (torchvision's layout first).
FOLDER_CANDIDATES = ("omniglot/omniglot-py", "omniglot-py", "omniglot")
VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
N_BACKGROUND, N_EVALUATION, N_TRAINVAL, N_VAL = 964, 659, 1200, 172
DRAWINGS = 20
ORIGINAL_SIZE = 105
_PARTS = ("background", "evaluation")
_LOADER_VERSION = 1
_CHAR_RE = re.compile(r"^character(\d+)$")

#: Columns accepted from a Hugging Face dataset (a ``Dataset``, or a ``DatasetDict`` whose splits are
#: concatenated; a DatasetDict without a ``split`` column must have the keys "background"/"evaluation").
HF_SCHEMA = {
    "image": "datasets.Image() (PNG/any PIL-readable bytes), 105x105, grayscale or 1-bit; paper white",
    "alphabet": "string, e.g. 'Latin'",
    "character": "string 'characterNN' (numbered within its alphabet, from 1)",
    "split": "string, 'background' or 'evaluation' (the original release the character belongs to)",
    "drawing": "optional int, 0..19: order of the drawings in a character (else row order)",
}

_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError, SyntaxError)


# ----------------------------------------------------------------------------- split logic
def _char_number(character: str, where: str = "") -> int:
    m = _CHAR_RE.match(character)
    if not m:
        raise ValueError(f"character name {character!r}{where}: expected 'characterNN'")
    return int(m.group(1))


def vinyals_order(chars: Sequence[tuple[str, str, str]]) -> list[int]:
    """Positions of ``chars`` = [(part, alphabet, character)] in Vinyals order: background first, then
    evaluation, alphabets in plain string order, characters by number."""
    for p, _, _ in chars:
        if p not in _PARTS:
            raise ValueError(f"split column: expected 'background' or 'evaluation', got {p!r}")
    return sorted(range(len(chars)), key=lambda i: (_PARTS.index(chars[i][0]), chars[i][1],
                                                    _char_number(chars[i][2])))


def split_indices(parts: Sequence[str], alphabets: Sequence[str], split: str) -> np.ndarray:
    """Indices of the characters of ``split`` in a Vinyals-ordered list (parts/alphabets per character)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    n = len(parts)
    if split == "all":
        return np.arange(n)
    n_bg = sum(p == "background" for p in parts)
    if (n_bg, n - n_bg) != (N_BACKGROUND, N_EVALUATION):
        raise ValueError(f"split={split!r} needs the full Omniglot ({N_BACKGROUND} background + {N_EVALUATION} "
                         f"evaluation characters) but the data has {n_bg} + {n - n_bg}; use split='all'")
    if split == "test":
        return np.arange(N_TRAINVAL, n)
    if split == "trainval":
        return np.arange(N_TRAINVAL)
    is_val = np.array([parts[i] == "background" and alphabets[i] in VAL_ALPHABETS for i in range(N_TRAINVAL)])
    if int(is_val.sum()) != N_VAL:
        raise ValueError(f"the validation alphabets {VAL_ALPHABETS} have {int(is_val.sum())} characters, "
                         f"expected {N_VAL}: the Omniglot files are incomplete or renamed")
    return np.flatnonzero(is_val) if split == "val" else np.flatnonzero(~is_val)


# ----------------------------------------------------------------------------- decoding
def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """(105, 105) uint8 -> (size, size) uint8 with PIL bilinear (identity at 105). The one resize for all sources."""
    if img.shape == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _decode_png(data: bytes, where: str) -> np.ndarray:
    """PNG (or any PIL image) bytes -> (105, 105) uint8 grayscale; ValueError naming ``where`` if broken."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.asarray(im.convert("L"))
    except _ERRORS as e:
        raise ValueError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e
    if arr.shape != (ORIGINAL_SIZE, ORIGINAL_SIZE):
        raise ValueError(f"{where}: image is {arr.shape[1]}x{arr.shape[0]}, expected 105x105")
    return arr


class _Source:
    """A located source: ``kind`` ("npz"/"zip"/"hf"), ``label`` (for messages), ``key`` (cache-key ingredients,
    cheap: file checksums) and ``open()`` -> (chars, get, close), called only when the cache must be built:
    chars = [(part, alphabet, character)], get(i) = the drawings of chars[i] as (20, 105, 105) uint8."""

    def __init__(self, kind: str, label: str, key: object, opener: Callable[[], tuple]) -> None:
        self.kind, self.label, self.key, self.open = kind, label, key, opener


def _omniglot_dir(root) -> Path:
    return _data_root(root) / "omniglot"


def _npz_files(folder: Path) -> list[Path]:
    return [folder / "images_background.npz", folder / "images_evaluation.npz",
            folder / "omniglot_character_index.csv"]


def _zip_files(folder: Path) -> list[Path]:
    return [folder / "images_background.zip", folder / "images_evaluation.zip"]


def _missing(files: Sequence[Path]) -> list[str]:
    return [str(f) for f in files if not f.is_file()]


def _read_index(path: Path) -> dict:
    """The index csv -> {part: [(row_in_split_npz, alphabet, character), ...]}."""
    need = {"split", "alphabet", "character", "row_in_split_npz"}
    out: dict = {p: [] for p in _PARTS}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise ValueError(f"expected columns {sorted(need)}, got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                if row["split"] not in out:
                    raise ValueError(f"line {line}: split {row['split']!r} is not background/evaluation")
                out[row["split"]].append((int(row["row_in_split_npz"]), row["alphabet"], row["character"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed Omniglot index ({e})") from e
    return out


def _load_npz(path: Path) -> np.ndarray:
    """``images`` of one Omniglot npz: bool (n, 20, 105, 105), True = paper (or uint8, paper = 255)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise ValueError(f"no 'images' array (found {z.files})")
            images = z["images"]
    except _ERRORS as e:
        raise ValueError(f"{path}: cannot read Omniglot npz, truncated or corrupted? ({type(e).__name__}: {e})"
                         ) from e
    if images.ndim != 4 or images.shape[1:] != (DRAWINGS, ORIGINAL_SIZE, ORIGINAL_SIZE):
        raise ValueError(f"{path}: images has shape {images.shape}, expected (n, 20, 105, 105)")
    if images.dtype not in (np.bool_, np.uint8):
        raise ValueError(f"{path}: images has dtype {images.dtype}, expected bool (True = paper)")
    return images


def _as_u8(drawings: np.ndarray) -> np.ndarray:
    """bool (True = paper) -> uint8 paper 255 / ink 0; uint8 passes through."""
    return np.where(drawings, np.uint8(255), np.uint8(0)) if drawings.dtype == np.bool_ else drawings


def _open_npz(folder: Path) -> tuple:
    files = _npz_files(folder)
    index = _read_index(files[2])
    arrays, chars, where = {}, [], []
    for part, path in zip(_PARTS, files[:2]):
        arr = _load_npz(path)
        rows = index[part]
        if len(rows) != arr.shape[0] or sorted(r for r, _, _ in rows) != list(range(arr.shape[0])):
            raise ValueError(f"{path}: {arr.shape[0]} characters but {files[2].name} lists {len(rows)} "
                             f"{part} characters (rows must be 0..{arr.shape[0] - 1}, each once)")
        arrays[part] = arr
        for r, alphabet, character in rows:
            chars.append((part, alphabet, character))
            where.append((part, r))
    return chars, (lambda i: _as_u8(arrays[where[i][0]][where[i][1]])), (lambda: None)


def _npz_source(folder: Path) -> _Source:
    return _Source("npz", str(folder), _cache.file_checksums(_npz_files(folder)), lambda: _open_npz(folder))


def _open_zips(folder: Path) -> tuple:
    files = _zip_files(folder)
    handles, chars, members = [], [], []

    def close() -> None:
        for h in handles:
            h.close()

    try:
        for part, path in zip(_PARTS, files):
            top = f"images_{part}"
            try:
                zf = zipfile.ZipFile(path)
                names = zf.namelist()
            except _ERRORS as e:
                raise ValueError(f"{path}: cannot open zip, truncated or corrupted? ({type(e).__name__}: {e})"
                                 ) from e
            handles.append(zf)
            groups: dict = {}
            for name in names:
                p = name.split("/")
                if len(p) == 4 and p[0] == top and p[3].lower().endswith(".png"):
                    groups.setdefault((p[1], p[2]), []).append(name)
            if not groups:
                raise ValueError(f"{path}: no {top}/<alphabet>/<character>/*.png entries")
            for (alphabet, character), pngs in groups.items():
                _char_number(character, f" in {path}")
                if len(pngs) != DRAWINGS:
                    raise ValueError(f"{path}: {top}/{alphabet}/{character} has {len(pngs)} drawings, expected "
                                     f"{DRAWINGS}")
                chars.append((part, alphabet, character))
                members.append((len(handles) - 1, sorted(pngs, key=lambda s: s.rsplit("/", 1)[1])))
    except BaseException:
        close()
        raise

    def get(i: int) -> np.ndarray:
        h, names = members[i]
        out = []
        for name in names:
            where = f"{files[h]}:{name}"
            try:
                data = handles[h].read(name)
            except _ERRORS as e:
                raise ValueError(f"{where}: cannot read, zip corrupted? ({type(e).__name__}: {e})") from e
            out.append(_decode_png(data, where))
        return np.stack(out)

    return chars, get, close


def _zip_source(folder: Path) -> _Source:
    return _Source("zip", str(folder), _cache.file_checksums(_zip_files(folder)), lambda: _open_zips(folder))


def _folder_root(root) -> Path | None:
    """The first of `FOLDER_CANDIDATES` holding both ``images_background/`` and ``images_evaluation/``."""
    base = _data_root(root)
    for cand in FOLDER_CANDIDATES:
        folder = base / cand
        if all((folder / f"images_{p}").is_dir() for p in _PARTS):
            return folder
    return None


def _scan_folders(folder: Path) -> tuple[list, list]:
    """(chars [(part, alphabet, character)], drawings [[png paths sorted by name]]) of an extracted release."""
    chars, members = [], []
    for part in _PARTS:
        top = folder / f"images_{part}"
        n0 = len(chars)
        for alphabet in sorted(d for d in top.iterdir() if d.is_dir()):
            for character in sorted(d for d in alphabet.iterdir() if d.is_dir()):
                _char_number(character.name, f" in {alphabet}")
                pngs = sorted(f for f in character.iterdir() if f.suffix.lower() == ".png" and f.is_file())
                if len(pngs) != DRAWINGS:
                    raise ValueError(f"{character}: {len(pngs)} drawings (.png files), expected {DRAWINGS}")
                chars.append((part, alphabet.name, character.name))
                members.append(pngs)
        if len(chars) == n0:
            raise ValueError(f"{top}: no <alphabet>/<character>/*.png drawings")
    return chars, members


def _folder_source(folder: Path) -> _Source:
    chars, members = _scan_folders(folder)
    # key: (relative path, size, mtime) of every drawing; hashing 32k PNGs on every load would be slow
    stats = []
    for pngs in members:
        for f in pngs:
            st = f.stat()
            stats.append((str(f.relative_to(folder)), st.st_size, st.st_mtime_ns))

    def opener() -> tuple:
        def get(i: int) -> np.ndarray:
            return np.stack([_decode_png(f.read_bytes(), str(f)) for f in members[i]])
        return chars, get, (lambda: None)

    return _Source("folder", str(folder), _cache.make_key(stats), opener)


def _open_hf_omniglot(load: Callable[[], object], label: str) -> tuple:
    ds = _cache.hf_dataset_columns(load(), label, ["image", "alphabet", "character", "split"], split_from_keys=_PARTS)
    parts, alphabets, characters = list(ds["split"]), list(ds["alphabet"]), list(ds["character"])
    drawing = list(ds["drawing"]) if "drawing" in ds.column_names else list(range(len(ds)))
    groups: dict = {}
    for r, k in enumerate(zip(parts, alphabets, characters)):
        groups.setdefault(k, []).append((drawing[r], r))
    chars, rows = [], []
    for k, rs in groups.items():
        if len(rs) != DRAWINGS:
            raise ValueError(f"{label}: {k[1]}/{k[2]} ({k[0]}) has {len(rs)} drawings, expected {DRAWINGS}")
        chars.append(k)
        rows.append([r for _, r in sorted(rs)])
    images = list(ds["image"])  # [{"bytes", "path"}], materialised once

    def get(i: int) -> np.ndarray:
        return np.stack([_decode_png(_cache.hf_image_bytes(images[r], f"{label} row {r}"), f"{label} row {r}")
                         for r in rows[i]])

    return chars, get, (lambda: None)


def _hf_source(hf_name, label: str) -> _Source:
    key, load = _cache.locate_hf(hf_name)
    return _Source("hf", label, key, lambda: _open_hf_omniglot(load, label))


def _resolve_source(root, source: str, hf_name) -> _Source:
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
    if source == "hf" or (source == "auto" and hf_name is not None):
        if hf_name is None:
            path = _data_root(root) / "omniglot_hf"
            if not path.is_dir():
                raise FileNotFoundError(f"Omniglot (source='hf'): no Arrow dataset folder {str(path)!r}; pass "
                                        "hf_name=<folder or Hub id> or write one with export_omniglot_hf")
            hf_name = path
        return _hf_source(hf_name, str(hf_name))
    folder = _omniglot_dir(root)
    npz, zips = _npz_files(folder), _zip_files(folder)
    if source == "npz" or (source == "auto" and not _missing(npz)):
        if _missing(npz):
            raise FileNotFoundError(f"Omniglot (source='npz'): missing {_missing(npz)}")
        return _npz_source(folder)
    if source == "zip" or (source == "auto" and not _missing(zips)):
        if _missing(zips):
            raise FileNotFoundError(f"Omniglot (source='zip'): missing {_missing(zips)}")
        return _zip_source(folder)
    extracted = _folder_root(root)
    if source == "folder" or (source == "auto" and extracted is not None):
        if extracted is None:
            raise FileNotFoundError("Omniglot (source='folder'): no folder with images_background/ and "
                                    "images_evaluation/ among " + ", ".join(str(folder.parent / c)
                                                                             for c in FOLDER_CANDIDATES))
        return _folder_source(extracted)
    hf_dir = folder.parent / "omniglot_hf"
    if hf_dir.is_dir():
        return _hf_source(hf_dir, str(hf_dir))
    raise FileNotFoundError(
        "Omniglot not found; looked for the npz form " + ", ".join(map(str, npz)) + "; the original release "
        + ", ".join(map(str, zips)) + "; the extracted folders images_background/ + images_evaluation/ in "
        + ", ".join(str(folder.parent / c) for c in FOLDER_CANDIDATES) + "; and an Arrow dataset folder "
        + str(hf_dir))


def _decode_all(src: _Source, image_size: int) -> tuple[np.ndarray, list, list]:
    """All characters in Vinyals order -> (n*20, 1, s, s) uint8, names "Alphabet/characterNN", parts."""
    chars, get, close = src.open()
    try:
        order = vinyals_order(chars)
        n = len(order)
        names = [f"{chars[i][1]}/{chars[i][2]}" for i in order]
        if len(set(names)) != n:
            raise ValueError(f"{src.label}: duplicate Omniglot character names")
        out = np.empty((n, DRAWINGS, image_size, image_size), dtype=np.uint8)
        with _cache.progress(n, f"decoding Omniglot ({src.kind})", "char",
                             enabled=n >= 400 and src.kind != "npz") as bar:
            for pos, i in enumerate(order):
                drawings = get(i)
                for d in range(DRAWINGS):
                    out[pos, d] = _resize(drawings[d], image_size)
                bar.update(1)
    finally:
        close()
    parts = [chars[i][0] for i in order]
    return out.reshape(n * DRAWINGS, 1, image_size, image_size), names, parts


def _check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= 1024:
        raise ValueError(f"image_size: expected an integer in [1, 1024], got {image_size!r}")
    return image_size


def load_omniglot(root: str | os.PathLike | None = None, split: str = "train", image_size: int = 28,
                  rotations: Sequence[int] | None = (0, 90, 180, 270), source: str = "auto",
                  cache_dir: str | os.PathLike | None = None, hf_name: str | os.PathLike | None = None
                  ) -> ClassImages:
    """One Omniglot split as [`ClassImages`][metalearn.data.storage.ClassImages].

    Args:
        root: data root holding ``omniglot/`` (default $METALEARN_DATA). Not needed for a Hub ``hf_name``.
        split: "train" (1028 characters), "val" (172), "test" (423), "trainval" (1200) or "all" (1623).
        image_size: side s of the square images (28 for the benchmarks; 105 keeps the originals).
        rotations: class-augmentation angles (each character becomes len(rotations) classes); None = (0,).
        source: "auto", "npz", "zip", "folder" or "hf" (see the module docstring).
        cache_dir: where the decoded cache lives (default $METALEARN_CACHE or ~/.cache/metalearn).
        hf_name: a ``save_to_disk`` folder or a Hub id for the "hf" source.

    Returns:
        ClassImages with images (n_chars*20, 1, s, s) uint8 (paper 255, ink 0), 20 drawings per character in
        file order, names "Alphabet/characterNN" in Vinyals order, and the given rotations.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    image_size = _check_image_size(image_size)
    rotations = (0,) if rotations is None else tuple(rotations)
    src = _resolve_source(root, source, hf_name)
    key = _cache.make_key("omniglot", _LOADER_VERSION, src.kind, src.key, image_size)
    tag = src.kind if src.kind != "hf" else "hf_" + _cache.make_key(src.label)[:8]
    entry = _cache_dir(cache_dir) / f"omniglot_{tag}_{image_size}"

    def build() -> tuple[np.ndarray, dict]:
        images, names, parts = _decode_all(src, image_size)
        return images, {"names": names, "parts": parts, "drawings": DRAWINGS}

    images, meta = _cache.load_or_build(entry, key, build)
    names, parts = meta["names"], meta["parts"]
    alphabets = [n.split("/", 1)[0] for n in names]
    idx = split_indices(parts, alphabets, split)
    rows = (idx[:, None] * DRAWINGS + np.arange(DRAWINGS)).reshape(-1)
    x = torch.from_numpy(np.ascontiguousarray(images[rows]))
    k = len(idx)
    counts = torch.full((k,), DRAWINGS, dtype=torch.int64)
    offsets = torch.arange(k, dtype=torch.int64) * DRAWINGS
    return ClassImages(x, offsets, counts, tuple(names[i] for i in idx), rotations)


def export_omniglot_hf(out_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Write the npz form of Omniglot as a Hugging Face Arrow dataset (``save_to_disk``) at ``out_dir``.

    One ``datasets.Dataset`` with the columns of `HF_SCHEMA` (image = lossless grayscale PNG 105x105,
    alphabet, character, split, drawing), one row per drawing, in Vinyals order. ``load_omniglot(source="hf",
    hf_name=out_dir)`` gives tensors identical to the npz source. The folder is replaced atomically.

    Args:
        out_dir: The folder written.
        root: Data root holding ``omniglot/`` in its npz form (default $METALEARN_DATA).

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: The npz form is missing.
    """
    datasets = _cache.import_datasets()
    folder = _omniglot_dir(root)
    if _missing(_npz_files(folder)):
        raise FileNotFoundError(f"export_omniglot_hf needs the npz form: missing {_missing(_npz_files(folder))}")
    chars, get, _ = _open_npz(folder)
    cols: dict = {"image": [], "alphabet": [], "character": [], "split": [], "drawing": []}
    for i in vinyals_order(chars):
        part, alphabet, character = chars[i]
        for d, img in enumerate(get(i)):
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
            cols["image"].append({"bytes": buf.getvalue(), "path": None})
            cols["alphabet"].append(alphabet)
            cols["character"].append(character)
            cols["split"].append(part)
            cols["drawing"].append(d)
    features = datasets.Features({"image": datasets.Image(), "alphabet": datasets.Value("string"),
                                  "character": datasets.Value("string"), "split": datasets.Value("string"),
                                  "drawing": datasets.Value("int32")})
    ds = datasets.Dataset.from_dict(cols, features=features)
    return _cache.save_dataset_atomically(ds, Path(out_dir))
