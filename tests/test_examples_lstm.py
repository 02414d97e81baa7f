import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_mnist() -> bool:
    root = os.environ.get("METALEARN_DATA")
    return bool(root) and (Path(root) / "mnist" / "mnist.npz").exists()


@pytest.mark.skipif(not _has_mnist(), reason="METALEARN_DATA not set or has no mnist/ (CI sets it)")
def test_lstm_optimizer_example_smoke():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "lstm_optimizer.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "meta-trained" in proc.stdout and "saved and reloaded" in proc.stdout
    assert "LSTM  mean training loss" in proc.stdout and "Adam  mean training loss" in proc.stdout
    assert "functional update ok" in proc.stdout


@pytest.mark.skipif(not _has_mnist(), reason="METALEARN_DATA not set or has no mnist/ (CI sets it)")
def test_load_mnist():
    from metalearn.data.mnist import load_mnist
    x, y = load_mnist("test")
    assert x.dtype.is_floating_point is False and x.shape[1:] == (28, 28) and y.shape == (x.shape[0],)
    assert int(y.min()) >= 0 and int(y.max()) <= 9
    with pytest.raises(ValueError, match="split"):
        load_mnist("val")


def test_load_mnist_errors(tmp_path):
    from metalearn.data.mnist import load_mnist
    with pytest.raises(FileNotFoundError, match="mnist.npz"):
        load_mnist("train", root=tmp_path)
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_mnist("train", root=tmp_path)
