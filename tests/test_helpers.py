"""torchmeta-style helpers: omniglot()/miniimagenet() + BatchMetaDataLoader (fast, CPU)."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn.data.helpers import BatchMetaDataLoader, MetaDataset, miniimagenet, omniglot
from metalearn.data.storage import ClassImages


def _classes(n_classes=6, per_class=7, size=8, rotations=(0,)) -> ClassImages:
    """Every image of class c is the constant c + 1 (so a batch tells which class an example came from)."""
    labels = np.repeat(np.arange(n_classes), per_class)
    images = np.broadcast_to((labels + 1).astype(np.uint8)[:, None, None, None], (len(labels), 1, size, size))
    return ClassImages.from_labels(images.copy(), labels, rotations=rotations)


def _check_batch(batch, B, N, K, Q, shape):
    (x, y), (xq, yq) = batch["train"], batch["test"]
    assert x.shape == (B, N * K, *shape) and xq.shape == (B, N * Q, *shape)
    assert x.dtype == xq.dtype == torch.float32 and y.dtype == yq.dtype == torch.int64
    assert y.shape == (B, N * K) and yq.shape == (B, N * Q)
    for t in range(B):
        assert sorted(y[t].tolist()) == sorted(list(range(N)) * K)
        assert sorted(yq[t].tolist()) == sorted(list(range(N)) * Q)


def test_shapes_dtypes_labels():
    ds = MetaDataset(_classes(), ways=3, shots=2, test_shots=4)
    loader = BatchMetaDataLoader(ds, batch_size=5, num_batches=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    for b in batches:
        _check_batch(b, 5, 3, 2, 4, (1, 8, 8))
    assert ds.num_classes_per_task == 3 and ds.num_classes == 6 and len(ds) == 20


def test_labels_consistent_with_images_under_shuffle():
    ds = MetaDataset(_classes(), ways=4, shots=3, test_shots=2, shuffle=True)
    b = next(iter(BatchMetaDataLoader(ds, batch_size=4)))
    (x, y), (xq, yq) = b["train"], b["test"]
    for t in range(4):
        cls_s = (x[t, :, 0, 0, 0] * 255).round().long()
        cls_q = (xq[t, :, 0, 0, 0] * 255).round().long()
        mapping = {}
        for lab, c in zip(y[t].tolist() + yq[t].tolist(), cls_s.tolist() + cls_q.tolist()):
            assert mapping.setdefault(lab, c) == c  # one class per label, in support and query alike
        assert len(set(mapping.values())) == 4
    assert any(y[t].tolist() != sorted(y[t].tolist()) for t in range(4))  # actually shuffled


def test_no_shuffle_is_class_grouped():
    ds = MetaDataset(_classes(), ways=3, shots=2, test_shots=1, shuffle=False)
    (x, y), (xq, yq) = next(iter(BatchMetaDataLoader(ds, batch_size=2))).values()
    assert y.tolist() == [[0, 0, 1, 1, 2, 2]] * 2 and yq.tolist() == [[0, 1, 2]] * 2


def test_same_seed_same_batches_and_stream_continues():
    ds = MetaDataset(_classes(rotations=(0, 90)), ways=3, shots=1, test_shots=2, seed=7)
    a = BatchMetaDataLoader(ds, batch_size=3, num_batches=2)
    b = BatchMetaDataLoader(ds, batch_size=3, num_batches=2)
    for ba, bb in zip(a, b):
        for k in ("train", "test"):
            assert torch.equal(ba[k][0], bb[k][0]) and torch.equal(ba[k][1], bb[k][1])
    c = BatchMetaDataLoader(ds, batch_size=3, seed=8)
    d = BatchMetaDataLoader(ds, batch_size=3, seed=7)
    first_c, first_d = next(iter(c)), next(iter(d))
    assert not torch.equal(first_c["train"][0], first_d["train"][0])
    assert not torch.equal(next(iter(d))["train"][0], first_d["train"][0])  # a second iter() continues


def test_loader_arguments():
    ds = MetaDataset(_classes(), ways=2, shots=1)
    assert ds.test_shots == 1  # torchmeta: test_shots defaults to shots
    loader = BatchMetaDataLoader(ds, batch_size=2, shuffle=False, num_workers=4, pin_memory=True)
    with pytest.raises(TypeError, match="infinite"):
        len(loader)
    with pytest.raises(ValueError, match="num_batches"):
        BatchMetaDataLoader(ds, batch_size=2, num_batches=0)
    with pytest.raises(TypeError, match="MetaDataset"):
        BatchMetaDataLoader(_classes(), batch_size=2)
    with pytest.raises(ValueError, match="ways"):
        MetaDataset(_classes(), ways=7, shots=1)
    with pytest.raises(ValueError, match="shots"):
        MetaDataset(_classes(), ways=2, shots=5, test_shots=5)


def test_meta_split_validation():
    with pytest.raises(ValueError, match="meta_split"):
        omniglot("unused", 1, 5, meta_split="training")
    with pytest.raises(ValueError, match="meta_train"):
        omniglot("unused", 1, 5, meta_train=True, meta_test=True)
    with pytest.raises(ValueError, match="contradicts"):
        miniimagenet("unused", 1, 5, meta_split="val", meta_test=True)
    with pytest.raises(TypeError, match="num_ways"):
        omniglot("unused", 1, 5, num_ways=5)
    with pytest.raises(ValueError, match="use_vinyals_split"):
        omniglot("unused", 1, 5, use_vinyals_split=False)


def _tiny_mini(root: Path, classes=("n02", "n01", "n03"), per_class=6) -> None:
    """A tiny extracted miniImageNet (csv + images/ folder): the same few classes in every split."""
    d = root / "miniimagenet"
    (d / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for c in classes:
        for i in range(per_class):
            fn = f"{c}{i:08d}.jpg"
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)).save(buf, format="JPEG")
            (d / "images" / fn).write_bytes(buf.getvalue())
            rows.append((fn, c))
    for split in ("train", "val", "test"):
        with open(d / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("filename", "label"), *rows])


def test_miniimagenet_helper_end_to_end(tmp_path):
    _tiny_mini(tmp_path / "data")
    with pytest.warns(UserWarning, match="transform"):
        ds = miniimagenet(tmp_path / "data", shots=1, ways=3, test_shots=2, meta_val=True,
                          transform=object(), cache_dir=tmp_path / "cache")
    assert ds.meta_split == "val" and ds.data.names == ("n01", "n02", "n03")
    b = next(iter(BatchMetaDataLoader(ds, batch_size=2)))
    _check_batch(b, 2, 3, 1, 2, (3, 84, 84))
    assert 0.0 <= float(b["train"][0].min()) and float(b["train"][0].max()) <= 1.0


def test_download_true_missing_files_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        miniimagenet(tmp_path, 1, 2, download=True, cache_dir=tmp_path / "c")


def test_omniglot_helper_real_data(tmp_path_factory):
    env = os.environ.get("METALEARN_DATA")
    if not env or not (Path(env) / "omniglot" / "images_background.npz").is_file():
        pytest.skip("real Omniglot: METALEARN_DATA not set / omniglot missing")
    cache = tmp_path_factory.getbasetemp() / "metalearn_cache"  # shared with test_data_omniglot
    ds = omniglot(env, shots=1, ways=5, test_shots=15, meta_train=True, download=True, cache_dir=cache)
    assert ds.num_classes == 4 * 1028 and ds.meta_split == "train"
    loader = BatchMetaDataLoader(ds, batch_size=4, num_batches=2)
    batches = list(loader)
    for b in batches:
        _check_batch(b, 4, 5, 1, 15, (1, 28, 28))
    again = list(BatchMetaDataLoader(ds, batch_size=4, num_batches=2))
    assert all(torch.equal(p["test"][0], q["test"][0]) for p, q in zip(batches, again))
    test = omniglot(env, 5, 20, meta_split="test", cache_dir=cache)
    assert test.num_classes == 4 * 423 and test.test_shots == 5
