"""Short full-pipeline runs, one per learner family (``make test-slow``, ``pytest -m slow``): minutes each.

Each runs the real commands on the real data (``metalearn train`` on a task file with a few hundred steps, then
its test evaluation; ``metalearn ttt train`` / ``ttt eval``; the learned optimizer's meta-training against a
tuned baseline) and asserts that the result is better than chance by a clear margin. They need
``METALEARN_DATA`` (Omniglot, CIFAR-10, as for the other real-data tests) and are skipped without it. The
margins leave room: the same settings with the full budgets reach the accuracies in docs/results.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from metalearn.cli import main

pytestmark = pytest.mark.slow


def _data(*parts: str) -> Path:
    root = os.environ.get("METALEARN_DATA")
    if not root or not Path(root, *parts).exists():
        pytest.skip(f"needs the real data: METALEARN_DATA with {'/'.join(parts)}/ (e.g. ../shared/data)")
    return Path(root)


# task file, overrides, the accuracy (%) the 5-way 1-shot test must exceed (chance: 20%)
FEW_SHOT = {
    "protonet": ("tasks/protonet_omniglot_5w1s.yaml", ["train.steps=300"], 70.0),
    "matchnet": ("tasks/matchnet_omniglot_5w1s.yaml", ["train.steps=300", "matchnet.scale=10"], 60.0),
    "siamese": ("tasks/siamese_omniglot_5w1s.yaml", ["train.steps=300"], 50.0),
    "maml": ("tasks/maml_omniglot_5w1s.yaml", ["train.steps=100", "train.batch_size=8", "eval.episodes=100"], 40.0),
}


@pytest.mark.parametrize("family", list(FEW_SHOT))
def test_few_shot_family_learns_on_omniglot(tmp_path, capsys, family):
    """``metalearn train`` + ``metalearn eval`` on Omniglot 5-way 1-shot: far above chance after a short run."""
    _data("omniglot")
    task, overrides, minimum = FEW_SHOT[family]
    common = ["train.val_every=0", "train.checkpoint_every=100", "train.log_every=50", "eval.episodes=200",
              "eval.batch_size=20"]
    sets = [a for kv in common + overrides for a in ("--set", kv)]
    run = tmp_path / family
    assert main(["train", "--config", task, "--out", str(run), "--quiet", *sets]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert (result["ways"], result["shots"]) == (5, 1)
    assert result["accuracy"] - result["ci95"] > minimum, (family, result)
    if family == "maml":         # its head has 5 outputs: it is evaluated 5-way only
        return
    # the saved model, loaded back from its run directory, on 20-way episodes (chance: 5%)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--ways", "20", "--episodes", "50", "--json"]) == 0
    twenty = json.loads(capsys.readouterr().out)
    assert twenty["ways"] == 20 and twenty["accuracy"] > 30.0, twenty


def test_lstm_optimizer_beats_tuned_sgd_on_quadratics():
    """Meta-train the LSTM optimizer on 10-d quadratics (the paper's setting, a third of the benchmark's
    iterations), then compare it with SGD at its grid-tuned learning rate on held-out problems: the mean loss
    over the 100-step trajectory (what meta-training minimises) is lower."""
    from metalearn.optim import (BASELINES, LearnedOptimizer, LSTMOptimizer, MetaTrainConfig, ProblemBatch,
                                 QuadraticFamily, meta_train, run_optimizer, sample_problems, tune_lr)
    torch.manual_seed(0)
    family = QuadraticFamily(dim=10)
    net = LSTMOptimizer()
    cfg = MetaTrainConfig(steps=100, unroll=20, optimisees=32, iterations=100, lr=3e-3, val_every=10,
                          val_optimisees=64, seed=0)
    res = meta_train(net, family, cfg, log=None)
    assert res.skipped_unrolls == 0
    tune = ProblemBatch(family, sample_problems(family, 32, torch.Generator().manual_seed(101)))
    test = ProblemBatch(family, sample_problems(family, 64, torch.Generator().manual_seed(202)))
    lr, _ = tune_lr("SGD", tune, 100, log=None)
    sgd, _ = run_optimizer(lambda ps: BASELINES["SGD"](ps, lr), test, 100)
    lstm, _ = run_optimizer(lambda ps: LearnedOptimizer(ps, net, check_finite=False), test, 100)
    untrained, _ = run_optimizer(lambda ps: LearnedOptimizer(ps, LSTMOptimizer(), check_finite=False), test, 100)
    sgd_mean, lstm_mean, untrained_mean = (float(x[1:].mean()) for x in (sgd, lstm, untrained))
    assert lstm_mean < sgd_mean, (lstm_mean, sgd_mean, lr)
    assert lstm_mean < 0.5 * untrained_mean, (lstm_mean, untrained_mean)


def test_ttt_pipeline_on_cifar10(tmp_path):
    """``metalearn ttt train`` (a small ResNet, a few hundred SGD steps) then ``metalearn ttt eval`` with the
    source model, standard TTT and TTT-Online on clean and corrupted test images."""
    _data("cifar10")
    run, out = tmp_path / "ttt", tmp_path / "eval.json"
    train = ["model.depth=8", "train.batch_size=64", "train.max_steps=200", "train.checkpoint_every=100",
             "train.log_every=50"]
    assert main(["ttt", "train", "--config", "tasks/ttt_cifar10_gn.yaml", "--out", str(run), "--device", "cpu",
                 "--quiet", *[a for kv in train for a in ("--set", kv)]]) == 0
    evals = ["eval.corruptions=clean,gaussian_noise", "eval.images=200", "eval.ttt_images=20",
             "eval.methods=source,ttt,ttt_online", "ttt.steps=3", "ttt.copies=8"]
    assert main(["ttt", "eval", "--checkpoint", str(run), "--device", "cpu", "--quiet", "--json", str(out),
                 *[a for kv in evals for a in ("--set", kv)]]) == 0
    res = json.loads(out.read_text())
    assert set(res["sets"]) == {"clean", "gaussian_noise"}
    for name, row in res["sets"].items():
        assert set(row) == {"source", "ttt", "ttt_online"}, row.keys()
        for method, m in row.items():
            assert 0.0 <= m["error"] <= 100.0, (name, method, m)
    assert res["sets"]["clean"]["source"]["error"] < 80.0, res["sets"]["clean"]   # chance: 90% error
    assert res["sets"]["clean"]["ttt_online"]["error"] < 85.0, res["sets"]["clean"]
