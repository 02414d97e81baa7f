"""miniImageNet loader on a tiny synthetic copy (csv + tar.gz archives / images folder / HF Arrow), and the
csv-level split facts of the real files when METALEARN_DATA is set (decoding 60k JPEGs is too slow for a test)."""
from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn.data import miniimagenet as mi
from metalearn.data.miniimagenet import export_miniimagenet_hf, load_miniimagenet, read_split_csv

# split -> {wnid: images}; csv rows interleave the classes and are not sorted by wnid
TINY = {"train": {"n03000003": 3, "n01000001": 4, "n02000002": 2}, "val": {"n05000005": 2, "n04000004": 3},
        "test": {"n06000006": 2, "n07000007": 2}}


def _jpeg(rng, size=(84, 84)) -> bytes:
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_tiny_mini(root: Path, archives: bool = True, folder: bool = False, seed: int = 0) -> dict:
    """Tiny miniImageNet under root/miniimagenet; returns {split: [(filename, wnid, jpeg bytes)] in csv order}."""
    rng = np.random.default_rng(seed)
    d = root / "miniimagenet"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, classes in TINY.items():
        rows, left = [], dict(classes)
        k = 0
        while any(left.values()):  # round robin: classes interleaved in the csv
            for wnid in classes:
                if left[wnid]:
                    left[wnid] -= 1
                    k += 1
                    size = (100, 90) if (split, k) == ("train", 2) else (84, 84)  # one image needs a resize
                    rows.append((f"{wnid}{k:08d}.jpg", wnid, _jpeg(rng, size)))
        out[split] = rows
        with open(d / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            w.writerows([r[:2] for r in rows])
        if archives:
            names = mi.ARCHIVES[split]
            first = set(sorted(classes)[: (len(classes) + 1) // 2])
            groups = [rows] if len(names) == 1 else [[r for r in rows if r[1] in first],
                                                     [r for r in rows if r[1] not in first]]
            for name, group in zip(names, groups):
                with tarfile.open(d / name, "w:gz") as tf:
                    _add(tf, "images/README", b"not an image")
                    for fn, _, data in group[::-1]:  # archive order must not matter
                        _add(tf, f"images/{fn}", data)
        if folder:
            (d / "images").mkdir(exist_ok=True)
            for fn, _, data in rows:
                (d / "images" / fn).write_bytes(data)
    return out


def _expected(rows) -> tuple[torch.Tensor, list, list]:
    names = sorted({w for _, w, _ in rows})
    imgs, counts = [], []
    for wnid in names:
        mine = [data for _, w, data in rows if w == wnid]
        counts.append(len(mine))
        for data in mine:
            im = Image.open(io.BytesIO(data)).convert("RGB")
            if im.size != (84, 84):
                im = im.resize((84, 84), Image.BILINEAR)
            imgs.append(np.asarray(im).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(imgs)), names, counts


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "data"
    return root, make_tiny_mini(root), tmp_path / "cache"


def test_tar_source_layout_and_pixels(tiny):
    root, rows, cache = tiny
    for split in ("train", "val", "test"):
        x = load_miniimagenet(root, split=split, cache_dir=cache)
        want, names, counts = _expected(rows[split])
        assert x.images.dtype == torch.uint8 and x.images.shape == (sum(counts), 3, 84, 84)
        assert x.names == tuple(names) and x.counts.tolist() == counts and x.rotations == (0,)
        assert torch.equal(x.images, want)
        assert (cache / f"miniimagenet_tar_{split}.npy").is_file()


def test_folder_and_hf_sources_identical(tiny, tmp_path):
    root, _, cache = tiny
    a = load_miniimagenet(root, split="train", source="tar", cache_dir=cache)
    make_tiny_mini(root, archives=False, folder=True)  # same seed -> same bytes, now also extracted
    b = load_miniimagenet(root, split="train", source="folder", cache_dir=cache)
    export_miniimagenet_hf(tmp_path / "mini_hf", root=root)
    c = load_miniimagenet(split="train", hf_name=tmp_path / "mini_hf", cache_dir=cache)
    for other in (b, c):
        assert torch.equal(a.images, other.images) and a.names == other.names
        assert torch.equal(a.counts, other.counts)
    v = load_miniimagenet(split="val", source="hf", hf_name=tmp_path / "mini_hf", cache_dir=cache)
    assert torch.equal(v.images, load_miniimagenet(root, split="val", source="tar", cache_dir=cache).images)


def test_hf_classlabel_and_split_column(tiny, tmp_path):
    datasets = pytest.importorskip("datasets")
    root, rows, cache = tiny
    r = rows["test"]
    names = sorted({w for _, w, _ in r})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for _, _, b in r], "label": [names.index(w) for _, w, _ in r],
         "split": ["test"] * len(r)},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names),
                                    "split": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "one"))
    x = load_miniimagenet(split="test", hf_name=tmp_path / "one", cache_dir=cache)
    assert torch.equal(x.images, _expected(r)[0]) and x.names == tuple(names)


def test_cache_is_reused_memory_mapped(tiny, monkeypatch):
    root, _, cache = tiny
    first = load_miniimagenet(root, split="val", cache_dir=cache)
    monkeypatch.setattr(mi, "_decode_split", lambda *a, **k: pytest.fail("decoded again"))
    again = load_miniimagenet(root, split="val", cache_dir=cache)
    assert torch.equal(first.images, again.images)
    again.images[0].zero_()  # copy-on-write: the cache file is not modified
    assert torch.equal(load_miniimagenet(root, split="val", cache_dir=cache).images, first.images)


def test_bad_split_and_source(tiny):
    root, _, cache = tiny
    with pytest.raises(ValueError, match="split"):
        load_miniimagenet(root, split="validation", cache_dir=cache)
    with pytest.raises(ValueError, match="source"):
        load_miniimagenet(root, split="val", source="zip", cache_dir=cache)


def test_missing_csv_and_archive(tiny):
    root, _, cache = tiny
    (root / "miniimagenet" / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="test.csv"):
        load_miniimagenet(root, split="test", cache_dir=cache)
    (root / "miniimagenet" / "images_train_2.tar.gz").unlink()
    with pytest.raises(FileNotFoundError, match="images_train_2.tar.gz"):
        load_miniimagenet(root, split="train", source="tar", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="images_train_2.tar.gz"):  # auto: nothing else there either
        load_miniimagenet(root, split="train", cache_dir=cache)


def test_filename_not_in_archives(tiny):
    root, _, cache = tiny
    p = root / "miniimagenet" / "val.csv"
    p.write_text(p.read_text() + "n0400000499999999.jpg,n04000004\n")
    with pytest.raises(ValueError, match="n0400000499999999.jpg"):
        load_miniimagenet(root, split="val", cache_dir=cache)


def test_corrupt_jpeg_is_named(tiny):
    root, rows, cache = tiny
    bad = rows["val"][1][0]
    path = root / "miniimagenet" / "images_val.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for fn, _, data in rows["val"]:
            _add(tf, f"images/{fn}", data[: len(data) // 3] if fn == bad else data)
    with pytest.raises(ValueError, match=bad):
        load_miniimagenet(root, split="val", cache_dir=cache)


def test_truncated_archive_is_named(tiny):
    root, _, cache = tiny
    p = root / "miniimagenet" / "images_test.tar.gz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match="images_test.tar.gz"):
        load_miniimagenet(root, split="test", cache_dir=cache)


def test_malformed_csv(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("file,class\na.jpg,n1\n")
    with pytest.raises(ValueError, match="train.csv"):
        read_split_csv(p)
    p.write_text("filename,label\na.jpg,n1\na.jpg,n1\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_split_csv(p)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cache_is_rebuilt_naming_the_file(tiny, damage):
    from metalearn.data.cache import CacheRebuildWarning
    root, _, cache = tiny
    good = load_miniimagenet(root, split="test", cache_dir=cache)
    npy = cache / "miniimagenet_tar_test.npy"
    whole = npy.read_bytes()
    npy.write_bytes(whole[:-50] if damage == "truncate" else whole[:-1] + bytes([whole[-1] ^ 1]))
    with pytest.warns(CacheRebuildWarning, match="miniimagenet_tar_test.npy.*rebuilding it"):
        again = load_miniimagenet(root, split="test", cache_dir=cache)
    assert torch.equal(again.images, good.images) and npy.read_bytes() == whole


# ----------------------------------------------------------------------------- real data (csv level only)
@pytest.fixture(scope="module")
def real_csvs():
    env = os.environ.get("METALEARN_DATA")
    d = Path(env) / "miniimagenet" if env else None
    if d is None or not (d / "train.csv").is_file():
        pytest.skip("real miniImageNet: METALEARN_DATA not set / miniimagenet missing")
    return d, {s: read_split_csv(d / f"{s}.csv") for s in mi.SPLITS}


def test_real_split_facts(real_csvs):
    d, csvs = real_csvs
    classes = {}
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        files, labels = csvs[split]
        names, order, counts = mi.class_order(labels)
        assert len(names) == n and counts.tolist() == [600] * n
        assert all(f.startswith(lab) for f, lab in zip(files, labels))
        classes[split] = set(names)
        assert all((d / a).is_file() for a in mi.ARCHIVES[split])
    assert not classes["train"] & classes["val"] and not classes["train"] & classes["test"]
    assert not classes["val"] & classes["test"]
    all_files = [f for s in csvs.values() for f in s[0]]
    assert len(all_files) == len(set(all_files)) == 60000


def test_real_val_archive_matches_csv(real_csvs):
    d, csvs = real_csvs
    with tarfile.open(d / "images_val.tar.gz", "r:gz") as tf:
        members = {m.name.rsplit("/", 1)[-1] for m in tf if m.isfile()}
    assert set(csvs["val"][0]) <= members
