"""Omniglot loader: npz / original zips / HF Arrow give identical tensors; the Vinyals split; bad inputs.

Synthetic tests build a tiny Omniglot (a few characters, 20 drawings of 105x105 each) in tmp_path. The split
tests need the real data: set METALEARN_DATA to the folder holding omniglot/ (e.g. ../shared/data).
"""
from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn.data import cache as cache_mod
from metalearn.data import omniglot as om
from metalearn.data.omniglot import export_omniglot_hf, load_omniglot

# part -> alphabets (deliberately not in sorted order) -> number of characters
TINY = {"background": {"Beta": 2, "Alpha": 3, "alpha_lower": 1}, "evaluation": {"Zeta": 2, "Eta": 1}}


def _tiny_arrays(seed: int = 0) -> dict:
    """{part: (list of (alphabet, character), bool images (n, 20, 105, 105), True = paper)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for part, alphabets in TINY.items():
        chars = [(a, f"character{c:02d}") for a, n in alphabets.items() for c in range(1, n + 1)]
        out[part] = (chars, rng.random((len(chars), 20, 105, 105)) > 0.2)
    return out


def make_tiny_omniglot(root: Path, npz: bool = True, zips: bool = True, seed: int = 0) -> dict:
    """Write the tiny Omniglot under root/omniglot as npz (+ index csv, rows scrambled) and/or original zips."""
    folder = root / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _tiny_arrays(seed)
    rng = np.random.default_rng(seed + 1)
    if npz:
        rows, char_id = [], 1
        for part, (chars, images) in arrays.items():
            perm = rng.permutation(len(chars))  # npz row r holds character perm[r]: not alphabetical
            np.savez_compressed(folder / f"images_{part}.npz", images=images[perm],
                                labels=np.repeat(np.arange(len(chars))[:, None], 20, axis=1))
            for r, c in enumerate(perm):
                rows.append([char_id, part, chars[c][0], chars[c][1], r])
                char_id += 1
        with open(folder / "omniglot_character_index.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["char_id", "split", "alphabet", "character", "row_in_split_npz"])
            w.writerows(rows)
    if zips:
        for part, (chars, images) in arrays.items():
            top = f"images_{part}"
            entries = []
            for i, (alphabet, character) in enumerate(chars):
                for d in range(20):
                    buf = io.BytesIO()
                    Image.fromarray(images[i, d]).save(buf, format="PNG")  # mode "1", as the originals
                    entries.append((f"{top}/{alphabet}/{character}/{1000 + i:04d}_{d + 1:02d}.png", buf.getvalue()))
            order = rng.permutation(len(entries))  # archive order must not matter
            with zipfile.ZipFile(folder / f"{top}.zip", "w") as zf:
                zf.writestr(f"{top}/", b"")
                for j in order:
                    zf.writestr(*entries[j])
    return arrays


def _expected_names():
    names = []
    for part in ("background", "evaluation"):
        for a in sorted(TINY[part]):
            names += [f"{a}/character{c:02d}" for c in range(1, TINY[part][a] + 1)]
    return names


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "data"
    arrays = make_tiny_omniglot(root)
    return root, arrays, tmp_path / "cache"


def test_three_sources_give_identical_tensors(tiny):
    root, _, cache = tiny
    a = load_omniglot(root, split="all", source="npz", cache_dir=cache)
    b = load_omniglot(root, split="all", source="zip", cache_dir=cache)
    export_omniglot_hf(root / "omniglot_hf", root=root)
    c = load_omniglot(root, split="all", source="hf", cache_dir=cache)
    d = load_omniglot(split="all", hf_name=root / "omniglot_hf", cache_dir=cache)  # auto + hf_name
    for other in (b, c, d):
        assert torch.equal(a.images, other.images)
        assert torch.equal(a.offsets, other.offsets) and torch.equal(a.counts, other.counts)
        assert a.names == other.names
    assert a.names == tuple(_expected_names())  # Vinyals order: plain string order ('Beta' < 'alpha_lower')


def test_pixels_order_and_shape(tiny):
    root, arrays, cache = tiny
    n = sum(sum(v.values()) for v in TINY.values())
    x = load_omniglot(root, split="all", image_size=105, rotations=None, cache_dir=cache)
    assert x.images.shape == (n * 20, 1, 105, 105) and x.images.dtype == torch.uint8
    assert x.rotations == (0,) and x.num_classes == n
    assert x.counts.tolist() == [20] * n and x.offsets.tolist() == list(range(0, 20 * n, 20))
    # 105 keeps the originals: paper 255, ink 0, drawings in drawer order
    for name_i, name in enumerate(x.names):
        alphabet, character = name.split("/")
        for part, (chars, images) in arrays.items():
            if (alphabet, character) in chars:
                want = np.where(images[chars.index((alphabet, character))], 255, 0).astype(np.uint8)
        got = x.images[name_i * 20:(name_i + 1) * 20, 0].numpy()
        np.testing.assert_array_equal(got, want)
    s = load_omniglot(root, split="all", cache_dir=cache)
    assert s.images.shape == (n * 20, 1, 28, 28) and s.rotations == (0, 90, 180, 270) and s.num_classes == 4 * n
    ref = np.asarray(Image.fromarray(x.images[0, 0].numpy()).resize((28, 28), Image.BILINEAR))
    np.testing.assert_array_equal(s.images[0, 0].numpy(), ref)


def test_cache_is_used_and_rebuilt_when_sources_change(tiny, monkeypatch):
    root, _, cache = tiny
    first = load_omniglot(root, split="all", cache_dir=cache)
    assert (cache / "omniglot_npz_28.npy").is_file() and (cache / "omniglot_npz_28.json").is_file()

    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(om, "_decode_all", no_decode)
    assert torch.equal(load_omniglot(root, split="all", cache_dir=cache).images, first.images)
    monkeypatch.undo()
    make_tiny_omniglot(root, zips=False, seed=5)  # new source files -> stale key -> rebuild
    again = load_omniglot(root, split="all", cache_dir=cache)
    assert not torch.equal(again.images, first.images)


def test_auto_falls_back_to_zips_then_hf(tmp_path):
    root = tmp_path / "data"
    make_tiny_omniglot(root, npz=False)
    z = load_omniglot(root, split="all", cache_dir=tmp_path / "c")
    assert (tmp_path / "c" / "omniglot_zip_28.npy").is_file()
    with pytest.raises(FileNotFoundError, match="images_background.npz"):
        load_omniglot(root, split="all", source="npz", cache_dir=tmp_path / "c")
    root2 = tmp_path / "data2"
    make_tiny_omniglot(root2, zips=False)
    export_omniglot_hf(root2 / "omniglot_hf", root=root2)
    for f in (root2 / "omniglot").iterdir():
        f.unlink()
    h = load_omniglot(root2, split="all", cache_dir=tmp_path / "c")
    assert torch.equal(z.images, h.images)


def test_missing_everything_names_the_files(tmp_path):
    (tmp_path / "omniglot").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        load_omniglot(tmp_path, split="all", cache_dir=tmp_path / "c")
    msg = str(e.value)
    for name in ("images_background.npz", "omniglot_character_index.csv", "images_evaluation.zip", "omniglot_hf"):
        assert name in msg
    with pytest.raises(FileNotFoundError, match="omniglot_hf"):
        load_omniglot(tmp_path, split="all", source="hf", cache_dir=tmp_path / "c")


def test_bad_arguments(tiny):
    root, _, cache = tiny
    with pytest.raises(ValueError, match="split"):
        load_omniglot(root, split="training", cache_dir=cache)
    with pytest.raises(ValueError, match="source"):
        load_omniglot(root, split="all", source="tfds", cache_dir=cache)
    with pytest.raises(ValueError, match="image_size"):
        load_omniglot(root, split="all", image_size=0, cache_dir=cache)
    with pytest.raises(ValueError, match="rotations"):
        load_omniglot(root, split="all", rotations=(0, 45), cache_dir=cache)
    with pytest.raises(ValueError, match="full Omniglot"):  # the tiny set has no Vinyals split
        load_omniglot(root, split="train", cache_dir=cache)


def test_truncated_npz(tiny):
    root, _, cache = tiny
    p = root / "omniglot" / "images_evaluation.npz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match="images_evaluation.npz"):
        load_omniglot(root, split="all", source="npz", cache_dir=cache)


def test_index_does_not_match_npz(tiny):
    root, _, cache = tiny
    p = root / "omniglot" / "omniglot_character_index.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:-1]) + "\n")  # one evaluation character missing from the index
    with pytest.raises(ValueError, match="images_evaluation.npz.*characters"):
        load_omniglot(root, split="all", source="npz", cache_dir=cache)


def test_truncated_zip(tiny):
    root, _, cache = tiny
    p = root / "omniglot" / "images_background.zip"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(ValueError, match="images_background.zip"):
        load_omniglot(root, split="all", source="zip", cache_dir=cache)


def test_corrupted_zip_member(tiny):
    root, _, cache = tiny
    p = root / "omniglot" / "images_evaluation.zip"
    with zipfile.ZipFile(p) as zf:
        info = [i for i in zf.infolist() if i.filename.endswith(".png")][0]
    b = bytearray(p.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in range(start + 8, start + 24):
        b[k] ^= 0x5A  # damage the stored data: CRC check fails on read
    p.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="images_evaluation.zip"):
        load_omniglot(root, split="all", source="zip", cache_dir=cache)


def test_wrong_number_of_drawings_in_zip(tmp_path):
    root = tmp_path / "data"
    make_tiny_omniglot(root, npz=False)
    p = root / "omniglot" / "images_background.zip"
    with zipfile.ZipFile(p) as zf:
        items = [(i.filename, zf.read(i)) for i in zf.infolist()]
    drop = next(n for n, _ in items if n.endswith("_05.png"))
    with zipfile.ZipFile(p, "w") as zf:
        for n, data in items:
            if n != drop:
                zf.writestr(n, data)
    with pytest.raises(ValueError, match="19 drawings"):
        load_omniglot(root, split="all", source="zip", cache_dir=tmp_path / "c")


def test_truncated_cache_is_rebuilt_naming_the_file(tiny):
    from metalearn.data.cache import CacheRebuildWarning
    root, _, cache = tiny
    good = load_omniglot(root, split="all", cache_dir=cache)
    npy = cache / "omniglot_npz_28.npy"
    whole = npy.read_bytes()
    npy.write_bytes(whole[:-100])
    with pytest.warns(CacheRebuildWarning, match="omniglot_npz_28.npy.*rebuilding it from the source files"):
        again = load_omniglot(root, split="all", cache_dir=cache)
    assert torch.equal(again.images, good.images) and npy.read_bytes() == whole


def test_interrupted_rebuild_keeps_previous_cache(tiny, monkeypatch):
    root, _, cache = tiny
    good = load_omniglot(root, split="all", cache_dir=cache)
    files = [cache / "omniglot_npz_28.npy", cache / "omniglot_npz_28.json"]
    before = [f.read_bytes() for f in files]
    calls = {"n": 0}
    real_resize = om._resize

    def failing_resize(img, size):
        calls["n"] += 1
        if calls["n"] > 30:
            raise KeyboardInterrupt
        return real_resize(img, size)

    monkeypatch.setattr(om, "_LOADER_VERSION", 999)  # the key changes -> a rebuild starts
    monkeypatch.setattr(om, "_resize", failing_resize)
    with pytest.raises(KeyboardInterrupt):
        load_omniglot(root, split="all", cache_dir=cache)
    monkeypatch.undo()
    assert [f.read_bytes() for f in files] == before
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(om, "_decode_all", lambda *a, **k: pytest.fail("cache not reused"))
    assert torch.equal(load_omniglot(root, split="all", cache_dir=cache).images, good.images)


def test_hf_schema_errors(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = datasets.Dataset.from_dict({"image": [b"x"], "alphabet": ["A"]})
    d.save_to_disk(str(tmp_path / "bad_hf"))
    with pytest.raises(ValueError, match="missing column"):
        load_omniglot(split="all", source="hf", hf_name=tmp_path / "bad_hf", cache_dir=tmp_path / "c")


def test_split_indices_validation():
    with pytest.raises(ValueError, match="split"):
        om.split_indices([], [], "meta-train")


# ----------------------------------------------------------------------------- real data
def _real_root() -> Path:
    env = os.environ.get("METALEARN_DATA")
    if not env or not (Path(env) / "omniglot" / "images_background.npz").is_file():
        pytest.skip("real Omniglot: METALEARN_DATA not set / omniglot missing")
    return Path(env)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = _real_root()
    cache = tmp_path_factory.getbasetemp() / "metalearn_cache"  # shared by the test files of one session
    return {s: load_omniglot(root, split=s, cache_dir=cache) for s in ("train", "val", "test", "trainval", "all")}


def test_real_split_sizes(real):
    sizes = {s: d.num_base_classes for s, d in real.items()}
    assert sizes == {"train": 1028, "val": 172, "test": 423, "trainval": 1200, "all": 1623}
    assert real["train"].num_classes == 4 * 1028
    assert real["train"].images.shape == (1028 * 20, 1, 28, 28)
    assert set(real["train"].counts.tolist()) == {20}


def test_real_split_membership(real):
    val_alphabets = {n.split("/")[0] for n in real["val"].names}
    assert val_alphabets == set(om.VAL_ALPHABETS)
    assert not val_alphabets & {n.split("/")[0] for n in real["train"].names}
    assert real["test"].names[:4] == tuple(f"Gurmukhi/character{c}" for c in (42, 43, 44, 45))
    assert real["trainval"].names[-1] == "Gurmukhi/character41"
    assert set(real["train"].names) | set(real["val"].names) == set(real["trainval"].names)
    assert real["trainval"].names + real["test"].names == real["all"].names
    assert len(set(real["all"].names)) == 1623
    alphabets = [n.split("/")[0] for n in real["all"].names[:964]]
    assert alphabets == sorted(alphabets)  # background alphabets in plain string order
    ev = [n.split("/")[0] for n in real["all"].names[964:]]
    assert ev == sorted(ev)


def test_real_pixels_match_npz(real):
    root = _real_root()
    index = list(csv.DictReader(open(root / "omniglot" / "omniglot_character_index.csv")))
    row = next(r for r in index if r["alphabet"] == "Hebrew" and r["character"] == "character03")
    with np.load(root / "omniglot" / "images_background.npz") as z:
        raw = z["images"][int(row["row_in_split_npz"])]
    val = real["val"]
    c = val.names.index("Hebrew/character03")
    want = np.stack([np.asarray(Image.fromarray(np.where(d, 255, 0).astype(np.uint8)).resize((28, 28),
                                                                                             Image.BILINEAR))
                     for d in raw])
    np.testing.assert_array_equal(val.images[c * 20:(c + 1) * 20, 0].numpy(), want)


def test_cache_module_used(tiny):
    # the cache record carries names/parts, so later loads need no decoding at all
    root, _, cache = tiny
    load_omniglot(root, split="all", cache_dir=cache)
    hit = cache_mod.load_uint8_cache(cache / "omniglot_npz_28")
    assert hit is not None and hit[1]["names"] == _expected_names()
