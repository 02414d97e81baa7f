"""Readers of the formats users already have on disk, each on a tiny file the test writes:

* torchvision's Omniglot folders (``omniglot-py/images_background/<alphabet>/<character>/*.png``);
* torchmeta's miniImageNet HDF5 + JSON labels (needs h5py, skipped without it);
* the official CIFAR-10-C ``.npy`` files, and TTT evaluation on them (``eval.cifar10c=official``).

The csv + JPEG folder layout of miniImageNet is tested in test_data_miniimagenet.py (``source="folder"``), and
learn2learn's pickles in test_safe_pickle.py.
"""
from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from metalearn.data.cifar10c import OFFICIAL_EXTRA, load_cifar10c_official
from metalearn.data.miniimagenet import load_miniimagenet
from metalearn.data.omniglot import load_omniglot

from test_data_omniglot import make_tiny_omniglot


# ----------------------------------------------------------------------------- torchvision's Omniglot folders
def _extract(root: Path, into: Path) -> None:
    for part in ("background", "evaluation"):
        with zipfile.ZipFile(root / "omniglot" / f"images_{part}.zip") as zf:
            zf.extractall(into)


@pytest.mark.parametrize("where", ["omniglot/omniglot-py", "omniglot-py", "omniglot"])
def test_torchvision_omniglot_folders_match_the_zips(tmp_path, where):
    src = tmp_path / "src"
    make_tiny_omniglot(src, npz=False, zips=True)
    ref = load_omniglot(src, split="all", source="zip", cache_dir=tmp_path / "c1")
    root = tmp_path / "data"
    _extract(src, root / where)
    got = load_omniglot(root, split="all", cache_dir=tmp_path / "c2")           # auto finds the folders
    assert torch.equal(got.images, ref.images) and got.names == ref.names
    same = load_omniglot(root, split="all", source="folder", cache_dir=tmp_path / "c2", image_size=105)
    assert same.images.shape[-1] == 105


def test_torchvision_omniglot_folder_errors(tmp_path):
    src = tmp_path / "src"
    make_tiny_omniglot(src, npz=False, zips=True)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match="omniglot-py"):
        load_omniglot(root, split="all", source="folder", cache_dir=tmp_path / "c")
    _extract(src, root / "omniglot-py")
    victim = next((root / "omniglot-py" / "images_background").glob("*/character01"))
    next(victim.glob("*.png")).unlink()
    with pytest.raises(ValueError, match="19 drawings"):
        load_omniglot(root, split="all", source="folder", cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- torchmeta's miniImageNet HDF5
H5PY = importlib.util.find_spec("h5py") is not None
needs_h5py = pytest.mark.skipif(not H5PY, reason="h5py not installed (the [h5py] extra: pip install h5py)")


def _write_torchmeta_h5(folder: Path, split: str, classes: dict, seed: int = 0) -> dict:
    import h5py
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {wnid: rng.integers(0, 256, (n, 84, 84, 3), dtype=np.uint8) for wnid, n in classes.items()}
    with h5py.File(folder / f"{split}_data.hdf5", "w") as f:
        group = f.create_group("datasets")
        for wnid, arr in arrays.items():
            group.create_dataset(wnid, data=arr)
    (folder / f"{split}_labels.json").write_text(json.dumps(sorted(classes)))
    return arrays


@needs_h5py
def test_torchmeta_hdf5_split(tmp_path):
    root = tmp_path / "data"
    classes = {"n03000003": 3, "n01000001": 4, "n02000002": 2}
    arrays = _write_torchmeta_h5(root / "miniimagenet", "val", classes)
    data = load_miniimagenet(root, split="val", cache_dir=tmp_path / "c")        # auto finds the HDF5 file
    names = sorted(classes)
    assert data.names == tuple(names) and data.counts.tolist() == [classes[n] for n in names]
    want = np.concatenate([arrays[n].transpose(0, 3, 1, 2) for n in names])
    assert torch.equal(data.images, torch.from_numpy(want))
    again = load_miniimagenet(root, split="val", source="h5", cache_dir=tmp_path / "c")   # from the cache
    assert torch.equal(again.images, data.images)


@needs_h5py
def test_torchmeta_hdf5_errors(tmp_path):
    root = tmp_path / "data"
    folder = root / "miniimagenet"
    _write_torchmeta_h5(folder, "test", {"n01000001": 2})
    with pytest.raises(FileNotFoundError, match="train_data.hdf5"):
        load_miniimagenet(root, split="train", source="h5", cache_dir=tmp_path / "c")
    (folder / "test_labels.json").write_text(json.dumps(["n01000001", "n09999999"]))
    with pytest.raises(ValueError, match="n09999999"):
        load_miniimagenet(root, split="test", source="h5", cache_dir=tmp_path / "c")
    (folder / "test_data.hdf5").write_bytes(b"not an hdf5 file")
    (folder / "test_labels.json").write_text(json.dumps(["n01000001"]))
    with pytest.raises(ValueError, match="test_data.hdf5"):
        load_miniimagenet(root, split="test", source="h5", cache_dir=tmp_path / "c")


def test_hdf5_without_h5py_names_the_extra(tmp_path, monkeypatch):
    import sys
    from metalearn.extras import MissingExtraError
    root = tmp_path / "data"
    folder = root / "miniimagenet"
    folder.mkdir(parents=True)
    (folder / "val_data.hdf5").write_bytes(b"x")
    (folder / "val_labels.json").write_text('["n01000001"]')
    monkeypatch.setitem(sys.modules, "h5py", None)       # import h5py now raises ImportError
    with pytest.raises(MissingExtraError, match=r"\[h5py\]"):
        load_miniimagenet(root, split="val", source="h5", cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- official CIFAR-10-C
def _write_official(folder: Path, n: int = 20, names=("fog",), labels=None, seed: int = 0) -> dict:
    """Official-layout files with n test images per severity: <name>.npy (5n, 32, 32, 3), labels.npy (5n,)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        out[name] = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", out[name])
    lab = np.tile(rng.integers(0, 10, n) if labels is None else np.asarray(labels), 5).astype(np.uint8)
    np.save(folder / "labels.npy", lab)
    out["labels"] = lab
    return out


@pytest.mark.parametrize("folder", ["cifar10c", "CIFAR-10-C"])
def test_official_cifar10c_blocks(tmp_path, folder):
    arrays = _write_official(tmp_path / folder, n=20, names=("fog", "spatter"))
    for severity in (1, 3, 5):
        x, y = load_cifar10c_official("fog", severity, tmp_path)
        block = arrays["fog"][(severity - 1) * 20: severity * 20]
        assert x.dtype == torch.uint8 and x.shape == (20, 3, 32, 32)
        assert torch.equal(x, torch.from_numpy(block.transpose(0, 3, 1, 2).copy()))
        assert y.dtype == torch.int64 and y.tolist() == arrays["labels"][:20].tolist()
    x, _ = load_cifar10c_official("spatter", 2, tmp_path / folder, limit=7)     # the folder itself; an extra set
    assert x.shape[0] == 7 and "spatter" in OFFICIAL_EXTRA


def test_official_cifar10c_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metalearn data download cifar10c"):
        load_cifar10c_official("fog", 5, tmp_path)
    _write_official(tmp_path / "cifar10c")
    with pytest.raises(ValueError, match="unknown corruption"):
        load_cifar10c_official("rain", 5, tmp_path)
    with pytest.raises(FileNotFoundError, match="snow.npy"):
        load_cifar10c_official("snow", 5, tmp_path)
    with pytest.raises(ValueError, match="severities"):
        load_cifar10c_official("fog", 6, tmp_path)
    np.save(tmp_path / "cifar10c" / "fog.npy", np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected uint8 \(50000, 32, 32, 3\)"):
        load_cifar10c_official("fog", 1, tmp_path)


def _tiny_cifar10(root: Path) -> None:
    import io
    import tarfile
    from PIL import Image
    from metalearn.data.cifar10 import CLASSES
    folder = root / "cifar10"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with tarfile.open(folder / "cifar10_jpeg.tar.gz", "w:gz") as tf:
        for split, k in (("train", 2), ("test", 2)):
            for c, cls in enumerate(CLASSES):
                for i in range(k):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))


def test_ttt_eval_uses_the_official_cifar10c_files(tmp_path):
    """eval.cifar10c=official: the corrupted sets and their labels come from the .npy files."""
    from metalearn.ttt.config import ttt_config_from_dict
    from metalearn.ttt.run import eval_run, train_run
    from metalearn.ttt.tent import predict
    from metalearn.ttt.train import load_model
    root, cache = tmp_path / "data", tmp_path / "cache"
    _tiny_cifar10(root)
    cfg = ttt_config_from_dict({
        "model": {"depth": 8}, "train": {"epochs": 1, "batch_size": 8, "max_steps": 1, "log_every": 1,
                                         "checkpoint_every": 1},
        "eval": {"images": 20, "corruptions": "fog", "methods": "source", "severity": 2, "batch_size": 8},
        "data": {"root": str(root), "cache_dir": str(cache), "device": "cpu"}})
    out = tmp_path / "run"
    train_run(cfg, out)
    arrays = _write_official(root / "cifar10c", n=20, labels=np.zeros(20, dtype=np.uint8))  # every label 0
    res = eval_run(out, ["eval.cifar10c=official"])
    assert res["cifar10c"] == "official" and res["sets"]["fog"]["source"]["n"] == 20
    model, _ = load_model(out / "last.pt")
    x = torch.from_numpy(arrays["fog"][20:40].transpose(0, 3, 1, 2).copy())       # severity 2
    pred = predict(model, x, 8).argmax(-1)
    assert res["sets"]["fog"]["source"]["pred"] == pred.tolist()
    assert res["sets"]["fog"]["source"]["error"] == pytest.approx(float((pred != 0).float().mean()) * 100)
    with pytest.raises(Exception, match="eval.cifar10c"):
        eval_run(out, ["eval.cifar10c=downloaded"])
