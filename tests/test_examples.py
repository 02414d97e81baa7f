import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_omniglot() -> bool:
    root = os.environ.get("METALEARN_DATA")
    return bool(root) and (Path(root) / "omniglot" / "images_background.npz").exists()


@pytest.mark.skipif(not _has_omniglot(), reason="METALEARN_DATA not set or has no omniglot/ (CI sets it)")
def test_protonet_omniglot_example_smoke(tmp_path):
    env = dict(os.environ, METALEARN_CACHE=os.environ.get("METALEARN_CACHE", str(tmp_path)))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "protonet_omniglot.py"), "--smoke"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test 5-way 1-shot" in proc.stdout and "test 20-way 1-shot" in proc.stdout
