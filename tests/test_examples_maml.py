"""The MAML-on-your-own-model example runs (tiny setting, offline digits)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_maml_custom_model_example_smoke():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "maml_custom_model.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "iteration 3: query accuracy after adaptation" in proc.stdout
    assert "meta-test 5-way 1-shot on digits 5-9" in proc.stdout


def test_examples_are_short():
    for path in (ROOT / "examples").glob("*.py"):
        assert len(path.read_text().splitlines()) < 150, f"{path.name} is over 150 lines"
