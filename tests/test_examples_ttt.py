"""The Test-Time Training example runs (tiny model, a few CIFAR-10 test images with a corruption; synthetic images
when $METALEARN_DATA has no cifar10/)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _has_cifar10() -> bool:
    root = os.environ.get("METALEARN_DATA")
    return bool(root) and (Path(root) / "cifar10" / "cifar10_jpeg.tar.gz").exists()


def test_ttt_cifar10c_example_smoke(tmp_path):
    env = dict(os.environ, METALEARN_CACHE=os.environ.get("METALEARN_CACHE", str(tmp_path / "cache")))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "ttt_cifar10c.py"), "--smoke",
                           "--out", str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert ("CIFAR-10 test images 0..7, gaussian_noise severity 5" in out if _has_cifar10()
            else "synthetic images" in out)
    assert "joint training: 2 steps" in out
    for line in ("source      error", "TTT         error", "TTT-Online  error", "Tent        error"):
        assert line in out
    assert "batched TTT == sequential loop on the first 2 images: True" in out
    assert list((tmp_path / "runs").glob("*/last.pt")), "the joint training checkpoint was not written"
