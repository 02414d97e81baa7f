"""CIFAR-10 loader and CIFAR-10-C generation: tiny synthetic archives in both published layouts (JPEG tar of the
shared copy, the original python pickles), order rules, cache round trip, bad input, the CLI; plus the real test
split when $METALEARN_DATA has cifar10/ (decoding the 50k training images takes ~20 s: only checked when its cache
is already built)."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn.cli import main
from metalearn.data import cifar10 as c10
from metalearn.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, CLASSES, load_cifar10, normalize
from metalearn.data.cifar10c import CHUNK, build_cifar10c, load_cifar10c
from metalearn.data.corruptions import corrupt

PER_CLASS = {"train": 3, "test": 2}


def _img(cls: int, k: int) -> np.ndarray:
    """A smooth 32x32 RGB image (JPEG-friendly) that encodes class and index in its colours."""
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    r = 25 * cls + 20 * xx
    g = 40 + 60 * k + 30 * yy
    b = np.full_like(xx, 128.0)
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _jpeg_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def jpeg_root(tmp_path) -> Path:
    """<root>/cifar10/cifar10_jpeg.tar.gz with 3 train / 2 test images per class (members in scrambled order),
    train_original_order.csv (a permutation) and test_first1000_original_order.csv (3 test images)."""
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    members = [(split, c, k) for split in ("test", "train") for c in range(10) for k in range(PER_CLASS[split])]
    rng = np.random.default_rng(0)
    with tarfile.open(folder / "cifar10_jpeg.tar.gz", "w:gz") as tf:
        for i in rng.permutation(len(members)):
            split, c, k = members[i]
            _add(tf, f"{split}/{CLASSES[c]}/{k:04d}.jpg", _jpeg_bytes(_img(c, k)))
    train = [(c, k) for c in range(10) for k in range(PER_CLASS["train"])]
    perm = rng.permutation(len(train))
    with open(folder / "train_original_order.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["original_index", "label", "path"])
        for idx, j in enumerate(perm):
            c, k = train[j]
            w.writerow([idx, c, f"train/{CLASSES[c]}/{k:04d}.jpg"])
    with open(folder / "test_first1000_original_order.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["original_index", "label", "path"])
        for idx, (c, k) in enumerate([(3, 0), (8, 1), (0, 0)]):
            w.writerow([idx, c, f"test/{CLASSES[c]}/{k:04d}.jpg"])
    return tmp_path / "data"


def _expected_labels(root: Path, split: str) -> list[int]:
    rows = list(csv.DictReader(open(root / "cifar10" / c10.ORDER_CSV[split])))
    head = [int(r["label"]) for r in rows]
    if split == "train":
        return head
    listed = {r["path"] for r in rows}
    rest = [f"test/{CLASSES[c]}/{k:04d}.jpg" for c in range(10) for k in range(PER_CLASS["test"])]
    rest = sorted((p for p in rest if p not in listed), key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    return head + [CLASSES.index(p.split("/")[1]) for p in rest]


def test_jpeg_archive_order_and_shapes(jpeg_root, tmp_path):
    cache = tmp_path / "cache"
    for split in ("train", "test"):
        x, y = load_cifar10(jpeg_root, split, cache, progress=False)
        n = 10 * PER_CLASS[split]
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8
        assert y.shape == (n,) and y.dtype == torch.int64
        assert y.tolist() == _expected_labels(jpeg_root, split)
        assert torch.bincount(y, minlength=10).tolist() == [PER_CLASS[split]] * 10
    # the test order: csv rows first (cat/0000, ship/0001, airplane/0000), then by sha256 of the member path
    x, y = load_cifar10(jpeg_root, "test", cache, progress=False)
    ref = torch.from_numpy(_img(8, 1)).permute(2, 0, 1).int()
    assert (x[1].int() - ref).abs().float().mean() < 3  # JPEG q95 of the same picture
    assert y[:3].tolist() == [3, 8, 0]


def test_cache_round_trip(jpeg_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    x1, y1 = load_cifar10(jpeg_root, "test", cache, progress=False)
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["cifar10_jpeg_test.json", "cifar10_jpeg_test.npy"]  # no temp files left

    def boom(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(c10, "_decode_jpeg_split", boom)
    x2, y2 = load_cifar10(jpeg_root, "test", cache)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x2[0] = 0  # copy-on-write memory map: writable, the file is unchanged
    x3, _ = load_cifar10(jpeg_root, "test", cache)
    assert torch.equal(x3, x1)


def test_without_order_csv_sha256_order(jpeg_root, tmp_path):
    (jpeg_root / "cifar10" / "train_original_order.csv").unlink()
    _, y = load_cifar10(jpeg_root, "train", tmp_path / "cache", progress=False)
    paths = [f"train/{CLASSES[c]}/{k:04d}.jpg" for c in range(10) for k in range(PER_CLASS["train"])]
    paths.sort(key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    assert y.tolist() == [CLASSES.index(p.split("/")[1]) for p in paths]


def test_python_release(tmp_path):
    """The original cifar-10-python.tar.gz layout (pickled batches), read in place, original order."""
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 5)]:
        batches[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tf:
        for name, d in batches.items():
            _add(tf, f"cifar-10-batches-py/{name}", pickle.dumps(d))
    x, y = load_cifar10(tmp_path / "data", "train", tmp_path / "cache", progress=False)
    assert x.shape == (20, 3, 32, 32)
    assert torch.equal(x[4].reshape(-1), torch.from_numpy(batches["data_batch_2"][b"data"][0]))
    assert y.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    xt, yt = load_cifar10(tmp_path / "data", "test", tmp_path / "cache", progress=False)
    assert xt.shape == (5, 3, 32, 32) and yt.tolist() == batches["test_batch"][b"labels"]


def test_bad_input(jpeg_root, tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_cifar10(jpeg_root, "val", tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_cifar10(tmp_path / "nowhere", "test", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cifar10_jpeg.tar.gz"):
        load_cifar10(tmp_path / "empty", "test", tmp_path)
    archive = jpeg_root / "cifar10" / "cifar10_jpeg.tar.gz"
    archive.write_bytes(archive.read_bytes()[:3000])  # truncated download
    with pytest.raises(ValueError, match="cifar10_jpeg.tar.gz"):
        load_cifar10(jpeg_root, "test", tmp_path / "cache2", progress=False)
    assert not list((tmp_path / "cache2").glob("*.npy"))  # nothing half-written


def test_missing_image_listed_in_csv(jpeg_root, tmp_path):
    path = jpeg_root / "cifar10" / "test_first1000_original_order.csv"
    path.write_text(path.read_text() + "3,5,test/dog/0099.jpg\n")
    with pytest.raises(ValueError, match="not in"):
        load_cifar10(jpeg_root, "test", tmp_path, progress=False)


def test_normalize():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    z = normalize(x)
    assert z.dtype == torch.float32 and z.shape == x.shape
    ref = (x.double() / 255 - torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(3, 1, 1)) / \
        torch.tensor(CIFAR10_STD, dtype=torch.float64).view(3, 1, 1)
    assert torch.allclose(normalize(x.double() / 255), ref)
    assert torch.allclose(z.double(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="images"):
        normalize(torch.zeros(2, 1, 8, 8))


# ----------------------------------------------------------------------------- CIFAR-10-C
def test_build_and_load_cifar10c(jpeg_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    paths = build_cifar10c(jpeg_root, cache, severities=(2, 5), corruptions=("fog", "contrast"), seed=3,
                           progress=False)
    assert len(paths) == 4 and all(p.is_file() for p in paths)
    assert not list(cache.rglob("*.tmp"))
    clean, labels = load_cifar10(jpeg_root, "test", cache)
    x, y = load_cifar10c("fog", 5, jpeg_root, cache, seed=3)
    assert x.shape == clean.shape and x.dtype == torch.uint8 and torch.equal(y, labels)
    assert torch.equal(x, corrupt(clean, "fog", 5, seed=3 * 1_000_000))  # chunk 0 of a 20-image set
    assert CHUNK >= clean.shape[0]
    # existing entries are skipped; a new one is built on demand
    import metalearn.data.cifar10c as c10c

    calls = []
    real = c10c._corr.corrupt
    monkeypatch.setattr(c10c._corr, "corrupt", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    build_cifar10c(jpeg_root, cache, severities=(2, 5), corruptions=("fog", "contrast"), seed=3, progress=False)
    assert calls == []
    xs, _ = load_cifar10c("snow", 1, jpeg_root, cache, seed=3, limit=7, progress=False)
    assert calls == ["snow"] and xs.shape == (7, 3, 32, 32)


def test_cifar10c_bad_input(jpeg_root, tmp_path):
    with pytest.raises(ValueError, match="corruptions"):
        build_cifar10c(jpeg_root, tmp_path, corruptions=("fgo",))
    with pytest.raises(ValueError, match="severities"):
        build_cifar10c(jpeg_root, tmp_path, severities=(0, 6))
    with pytest.raises(ValueError, match="limit"):
        build_cifar10c(jpeg_root, tmp_path, limit=0)
    with pytest.raises(ValueError, match="severities"):
        load_cifar10c("fog", 7, jpeg_root, tmp_path)


def test_cli_data_cifar10c(jpeg_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    rc = main(["data", "cifar10c", "--data-dir", str(jpeg_root), "--cache-dir", str(cache), "--corruptions",
               "frost", "jpeg_compression", "--severities", "5", "--limit", "4", "--quiet"])
    assert rc == 0 and "2 entries ready" in capsys.readouterr().out
    built = sorted(p.name for p in (cache / "cifar10c").rglob("*.npy"))
    assert built == ["frost_5.npy", "jpeg_compression_5.npy"]
    assert np.load(cache / "cifar10c" / "jpeg_seed0_n4" / "frost_5.npy").shape == (4, 3, 32, 32)
    rc = main(["data", "cifar10c", "--data-dir", str(tmp_path / "nowhere"), "--cache-dir", str(cache), "--quiet"])
    assert rc == 2 and "data root" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the real data
def _real_root() -> Path:
    env = os.environ.get("METALEARN_DATA")
    if not env or not (Path(env) / "cifar10" / "cifar10_jpeg.tar.gz").is_file():
        pytest.skip("real CIFAR-10: METALEARN_DATA not set or has no cifar10/cifar10_jpeg.tar.gz")
    return Path(env)


def test_real_test_split():
    root = _real_root()
    x, y = load_cifar10(root, "test", progress=False)  # default cache ($METALEARN_CACHE): decoded once, ~6 s
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    rows = list(csv.DictReader(open(root / "cifar10" / "test_first1000_original_order.csv")))
    assert y[:1000].tolist() == [int(r["label"]) for r in rows]
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # CIFAR-10's first test labels
    runs = (y[1:] == y[:-1]).double().mean().item()  # after the first 1000: no class runs, balanced prefixes
    assert runs < 0.15 and torch.bincount(y[:3000], minlength=10).min() > 250
    mean = x.double().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN, dtype=torch.float64), atol=0.01)


def test_real_train_split():
    root = _real_root()
    # a cold cache decodes the 50k JPEGs once (~20-40 s on 2 cores); the TTT example's smoke run reuses it
    x, y = load_cifar10(root, "train", progress=False)
    assert x.shape == (50000, 3, 32, 32) and torch.bincount(y).tolist() == [5000] * 10
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # the original training order
