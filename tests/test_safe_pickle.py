"""Data pickles are read without running pickled code: the restricted unpickler itself, the CIFAR-10 python
release, learn2learn's miniImageNet cache, and the refusal of a checkpoint that holds code."""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from metalearn.cli import main
from metalearn.data import safe_pickle
from metalearn.data.cifar10 import load_cifar10
from metalearn.data.miniimagenet import L2L_FILES, load_miniimagenet
from metalearn.train.checkpoint import load_checkpoint


class _RunsCode:
    """Pickles as a call of ``os.system``: loading it with ``pickle.load`` runs the shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips_at_every_protocol(protocol):
    data = {b"data": (np.arange(2 * 3072) % 256).astype(np.uint8).reshape(2, 3072), b"labels": [3, 7],
            "f": np.float32(2.5), "i": np.int64(-4), "t": (1, "a", b"x", None, True), "s": {1, 2}, "x": 1.5e-3,
            "nested": {"a": [np.zeros((2, 2), np.float64)]}}
    out = safe_pickle.loads(pickle.dumps(data, protocol=protocol))
    assert np.array_equal(out[b"data"], data[b"data"]) and out[b"data"].dtype == np.uint8
    assert out[b"labels"] == [3, 7] and out["f"] == np.float32(2.5) and out["i"] == -4
    assert out["t"] == data["t"] and out["s"] == {1, 2} and out["x"] == 1.5e-3
    assert np.array_equal(out["nested"]["a"][0], np.zeros((2, 2)))


@pytest.mark.parametrize("payload", ["system", "eval", "object_array", "class"])
def test_code_is_refused_before_it_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    blob = {"system": lambda: pickle.dumps({"x": _RunsCode(marker)}),
            "eval": lambda: b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR.",
            "object_array": lambda: pickle.dumps(np.array([1, "x"], dtype=object)),
            "class": lambda: pickle.dumps(torch.nn.Linear(1, 1))}[payload]()
    with pytest.raises(safe_pickle.UnsafePickleError, match="evil.pkl"):
        safe_pickle.loads(blob, where="evil.pkl")
    assert not marker.exists()
    with pytest.raises(ValueError, match="truncated or corrupted"):
        safe_pickle.loads(pickle.dumps({"a": [1, 2, 3]})[:-3])


def test_cifar10_python_release_with_code_is_refused(tmp_path, capsys):
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    marker = tmp_path / "ran"
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tf:
        _add(tf, "cifar-10-batches-py/test_batch", pickle.dumps({**good, b"x": _RunsCode(marker)}, protocol=2))
        for i in range(1, 6):
            _add(tf, f"cifar-10-batches-py/data_batch_{i}", pickle.dumps(good, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch: refusing to load (posix|os|nt)\.system"):
        load_cifar10(tmp_path / "data", "test", tmp_path / "cache", progress=False)
    assert not marker.exists()
    # through the CLI: exit 2, one line, nothing run, nothing cached
    code = main(["data", "cifar10c", "--data-dir", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"),
                 "--corruptions", "fog", "--severities", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to load" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not list((tmp_path / "cache").rglob("*.npy"))
    # the train batches are plain data and load
    x, y = load_cifar10(tmp_path / "data", "train", tmp_path / "cache", progress=False)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == [0, 1] * 5


def _write_l2l(folder, split, rng, classes):
    """learn2learn's layout: one pickle per split, image_data (N, 84, 84, 3) uint8, class_dict {wnid: rows}."""
    n = sum(classes.values())
    images = rng.integers(0, 256, size=(n, 84, 84, 3), dtype=np.uint8)
    rows = rng.permutation(n).tolist()
    class_dict, k = {}, 0
    for wnid, c in classes.items():
        class_dict[wnid] = rows[k:k + c]
        k += c
    with open(folder / L2L_FILES[split], "wb") as f:
        pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
    return images, class_dict


def test_l2l_miniimagenet_pickles(tmp_path):
    folder = tmp_path / "data" / "miniimagenet"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    made = {s: _write_l2l(folder, s, rng, c) for s, c in
            {"train": {"n03": 3, "n01": 4, "n02": 2}, "val": {"n05": 2, "n04": 3}, "test": {"n06": 2, "n07": 2}}.items()}
    for split, source in (("train", "auto"), ("val", "l2l"), ("test", "auto")):
        images, class_dict = made[split]
        data = load_miniimagenet(tmp_path / "data", split=split, source=source, cache_dir=tmp_path / "cache")
        names = sorted(class_dict)
        assert data.names == tuple(names) and data.counts.tolist() == [len(class_dict[n]) for n in names]
        want = np.concatenate([images[class_dict[n]] for n in names]).transpose(0, 3, 1, 2)
        assert torch.equal(data.images, torch.from_numpy(want)) and data.image_shape == (3, 84, 84)
    assert (tmp_path / "cache" / "miniimagenet_l2l_train.npy").is_file()   # decoded once, cached

    # malformed content names the file
    with open(folder / L2L_FILES["test"], "wb") as f:
        pickle.dump({"image_data": np.zeros((2, 32, 32, 3), np.uint8), "class_dict": {"n1": [0, 1]}}, f)
    with pytest.raises(ValueError, match=r"mini-imagenet-cache-test.pkl: image_data: expected a uint8 array"):
        load_miniimagenet(tmp_path / "data", split="test", source="l2l", cache_dir=tmp_path / "cache")
    with open(folder / L2L_FILES["test"], "wb") as f:
        pickle.dump({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": [0, 5]}}, f)
    with pytest.raises(ValueError, match="lists row 5, but image_data has 2 images"):
        load_miniimagenet(tmp_path / "data", split="test", source="l2l", cache_dir=tmp_path / "cache")
    # a missing file for source='l2l'
    (folder / L2L_FILES["val"]).unlink()
    with pytest.raises(FileNotFoundError, match="mini-imagenet-cache-validation.pkl"):
        load_miniimagenet(tmp_path / "data", split="val", source="l2l", cache_dir=tmp_path / "cache")


def test_l2l_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "data" / "miniimagenet"
    folder.mkdir(parents=True)
    marker = tmp_path / "ran"
    with open(folder / L2L_FILES["test"], "wb") as f:
        pickle.dump({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": [0, 1]},
                     "x": _RunsCode(marker)}, f)
    with pytest.raises(safe_pickle.UnsafePickleError, match="mini-imagenet-cache-test.pkl: refusing to load"):
        load_miniimagenet(tmp_path / "data", split="test", cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_checkpoint_with_code_is_refused_without_suggesting_unsafe_loading(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "x": _RunsCode(tmp_path / "ran")}, path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "not a metalearn checkpoint or is corrupted" in msg and "evil.pt" in msg
    assert "weights_only" not in msg and "will likely succeed" not in msg and "\n" not in msg
    assert not (tmp_path / "ran").exists()
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a metalearn checkpoint or is corrupted"):
        load_checkpoint(path)
