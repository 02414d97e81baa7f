"""benchmarks/ttt_layers.py: the attention baselines' recurrent steps equal their parallel forms (so the time per
token compares like with like), the synthetic tasks are what they say, and a tiny run writes its JSON."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ttt_layers_bench", ROOT / "benchmarks" / "ttt_layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("kind", ["linear_attention", "softmax_attention", "ttt_linear", "ttt_mlp"])
def test_recurrent_step_equals_the_parallel_form(bench, kind):
    torch.manual_seed(0)
    m = bench.mixer(kind, 8, 2, 3).double()
    if kind == "linear_attention":
        m.chunk = 3                                                  # several chunks of the parallel form
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        full, state, outs = m(x), None, []
        for t in range(7):
            y, state = m.step(x[:, t], state)
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), full, rtol=1e-9, atol=1e-10)


def test_tasks(bench):
    g = torch.Generator().manual_seed(0)
    (keys, vals), target = bench.mqar_batch(5, 3, 16, 16, g)
    assert keys.shape == vals.shape == (3, 10) and target.shape == (3, 5)
    assert (vals[:, 5:] == 16).all() and (vals[:, :5] < 16).all()
    for b in range(3):
        pairs = dict(zip(keys[b, :5].tolist(), vals[b, :5].tolist()))
        assert len(pairs) == 5 and [pairs[k] for k in keys[b, 5:].tolist()] == target[b].tolist()
    tokens, y, ctx = bench.regression_batch(10, 4, 3, 2, g)
    assert tokens.shape == (4, 12, 5) and y.shape == (4, 2)
    assert (tokens[:, 10:, 3] == 0).all() and (tokens[:, 10:, 4] == 1).all() and (tokens[:, :10, 4] == 0).all()
    pred, _ = bench.least_squares_predict(ctx)                      # noise-free, 10 examples in 3-d: exact
    torch.testing.assert_close(pred, y, rtol=1e-4, atol=1e-4)


def test_tiny_run_writes_results(bench, tmp_path):
    out = tmp_path / "r.json"
    assert bench.main(["--steps", "2", "--batch-size", "4", "--dim", "8", "--heads", "2", "--mini-batch", "2",
                       "--mqar-pairs", "2", "3", "--reg-context", "2", "--eval-sequences", "4", "--log-every", "1",
                       "--time-lengths", "8", "--time-repeats", "1", "--time-batch", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["tasks"]) == {"mqar", "regression"} and set(res["tasks"]["mqar"]) == set(bench.MODELS)
    assert res["tasks"]["mqar"]["ttt_linear"]["eval"]["3"]["length"] == 6 and res["git"] and res["machine"]
    assert set(res["time"]) == set(bench.MODELS) and "| ttt_mlp |" in bench.table(res)
