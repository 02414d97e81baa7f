"""benchmarks/gpu_suite.sh: its CPU dry run (--device cpu --tiny) runs every step and writes its JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_suite_cpu_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--device", "cpu", "--tiny"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "summary.txt").read_text()
    for name in ("maml_speed", "throughput", "ttt_speed", "protonet_wallclock"):
        assert f"{name} rc=0" in summary, summary
    speed = json.loads((tmp_path / "maml_speed.json").read_text())
    assert speed
    thr = json.loads(next(tmp_path.glob("cpu_throughput-*.json")).read_text())
    assert thr["device"] == "cpu" and thr["rows"][0]["workload"] == "ceiling_mm"
    assert json.loads((tmp_path / "ttt_speed.json").read_text())
    res = json.loads(next((tmp_path / "results").glob("protonet_digits_5w5s-*.json")).read_text())
    assert res["train"]["steps"] == 4 and res["episodes"] == 10


def test_gpu_suite_rejects_unknown_arguments(tmp_path):
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--bogus"], cwd=REPO,
                       env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr
