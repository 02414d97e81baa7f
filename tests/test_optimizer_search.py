"""Neural Optimizer Search at small scale (metalearn.optim.search): the grammar's rules against hand-computed
steps and against the optimizers they spell, the batched lr grid against one run per lr, canonical forms, the
controller's masks and REINFORCE on a toy reward, and the benchmark script."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metalearn.checks import ArgumentError
from metalearn.optim import ProblemBatch, QuadraticFamily, run_optimizer, sample_problems
from metalearn.optim.search import (ADDSIGN, BINARY, OPERANDS, POWERSIGN, Controller, Rule, RuleOptimizer,
                                    proxy_score, random_search, reinforce_search, run_rule_grid, sample_uniform,
                                    top_rules)
from metalearn.optim.searched import AddSign, PowerSign

ROOT = Path(__file__).resolve().parents[1]
ADAM = Rule((("adam", "one", "id", "id", "left"),))
SGD = Rule((("g", "one", "id", "id", "left"),))
RMSPROP = Rule((("rmsprop", "one", "id", "id", "left"),))


def _run(opt_cls, w0, steps=15, **kw):
    w = torch.nn.Parameter(w0.clone())
    opt = opt_cls([w], **kw)
    for _ in range(steps):
        opt.zero_grad()
        (torch.sin(3 * w) * w + 0.1 * w ** 2).sum().backward()
        opt.step()
    return w.detach()


@pytest.mark.parametrize("rule,ref", [(POWERSIGN, PowerSign), (ADDSIGN, AddSign)])
def test_published_rules_in_the_grammar_equal_their_optimizers(rule, ref):
    w0 = torch.randn(7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = _run(lambda ps, lr: RuleOptimizer(ps, rule, lr), w0, lr=0.05)
    theirs = _run(ref, w0, lr=0.05)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("rule,ref,kw", [(ADAM, torch.optim.Adam, {}), (SGD, torch.optim.SGD, {}),
                                         (RMSPROP, torch.optim.RMSprop, {"alpha": 0.99, "eps": 1e-8})])
def test_adam_sgd_rmsprop_operands_equal_torch(rule, ref, kw):
    w0 = torch.randn(7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = _run(lambda ps, lr: RuleOptimizer(ps, rule, lr), w0, lr=0.01)
    theirs = _run(lambda ps, lr: ref(ps, lr=lr, **kw), w0, lr=0.01)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def _one_step(rule, theta=1.0, g=2.0, lr=0.1):
    w = torch.nn.Parameter(torch.tensor([theta], dtype=torch.float64))
    opt = RuleOptimizer([w], rule, lr=lr)
    w.grad = torch.tensor([g], dtype=torch.float64)
    opt.step()
    return float(w.detach())


def test_hand_computed_first_steps():
    # first step: bias-corrected averages equal the current g, g², g³ (v̂ = 4, γ̂ = 8)
    assert _one_step(Rule((("gamma", "v", "id", "sqrt_abs", "div"),))) == pytest.approx(1 - 0.1 * 8 / (2 + 1e-8))
    # clip(g, 1e-3) − 0.1·θ = 0.001 − 0.1
    assert _one_step(Rule((("g", "wd1", "clip3", "id", "sub"),))) == pytest.approx(1 - 0.1 * (0.001 - 0.1))
    # two groups: o0 = g² · 2 = 8, o1 = log|o0| − sign(g) = log 8 − 1
    r = Rule((("g2", "two", "id", "id", "mul"), ("o0", "sign_g", "log_abs", "id", "sub")))
    assert _one_step(r) == pytest.approx(1 - 0.1 * (math.log(8) - 1))
    # pow, neg, exp: (−g)^2 · ... = exp(1)^(g) -> e²
    assert _one_step(Rule((("one", "g", "exp", "id", "pow"),))) == pytest.approx(1 - 0.1 * math.e ** 2)
    assert _one_step(Rule((("g3", "one", "neg", "id", "left"),))) == pytest.approx(1 + 0.1 * 8)


def test_second_step_uses_the_running_averages():
    w = torch.nn.Parameter(torch.tensor([0.0], dtype=torch.float64))
    opt = RuleOptimizer([w], Rule((("m", "one", "id", "id", "left"),)), lr=1.0)
    for g in (1.0, -3.0):
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    m2 = (0.9 * 0.1 * 1.0 + 0.1 * -3.0) / (1 - 0.9 ** 2)     # m̂ after two steps
    assert float(w.detach()) == pytest.approx(-1.0 - m2)


def test_formulas():
    assert POWERSIGN.formula() == "exp(sign(g) · sign(m̂)) · g"
    assert ADDSIGN.formula() == "(1 + sign(g) · sign(m̂)) · g"
    assert ADAM.formula() == "Adam"
    assert Rule((("g", "v", "id", "sqrt_abs", "div"),)).formula() == "g / (√|v̂| + δ)"
    assert Rule.from_json(POWERSIGN.to_json()) == POWERSIGN


def test_canonical_drops_what_cannot_matter():
    a = Rule((("g", "v", "id", "sqrt_abs", "left"),))
    assert a.canonical() == SGD
    dead = Rule((("g2", "g3", "exp", "id", "mul"), ("sign_g", "sign_m", "id", "id", "mul"),
                 ("o1", "g", "exp", "id", "mul")))
    assert dead.canonical() == POWERSIGN                     # group 0 unused, group 1 renumbered to o0
    assert POWERSIGN.canonical() == POWERSIGN and ADDSIGN.canonical() == ADDSIGN
    # the canonical form takes the same steps
    w0 = torch.randn(5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(_run(lambda ps, lr: RuleOptimizer(ps, dead, lr), w0, lr=0.05),
                       _run(lambda ps, lr: RuleOptimizer(ps, dead.canonical(), lr), w0, lr=0.05))


@pytest.mark.parametrize("groups,match", [((), "groups"), ((("g", "g", "id", "id"),), r"groups\[0\]"),
                                          ((("grad", "g", "id", "id", "add"),), "operand 'grad'"),
                                          ((("o0", "g", "id", "id", "add"),), "operand 'o0'"),
                                          ((("g", "g", "id", "id", "add"), ("o1", "g", "id", "id", "add")),
                                           "operand 'o1'"),
                                          ((("g", "g", "tanh", "id", "add"),), "unary function 'tanh'"),
                                          ((("g", "g", "id", "id", "max"),), "binary function 'max'")])
def test_bad_rules_are_refused_with_the_reason(groups, match):
    with pytest.raises(ArgumentError, match=match):
        Rule(groups)


def test_optimizer_argument_errors():
    w = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ArgumentError, match="rule"):
        RuleOptimizer(w, "sign(g)")
    with pytest.raises(ArgumentError, match="lr"):
        RuleOptimizer(w, SGD, lr=-1.0)
    with pytest.raises(ArgumentError, match="betas"):
        RuleOptimizer(w, SGD, betas=(0.9, 1.0, 0.9))


def _quadratics(n=3, seed=0):
    fam = QuadraticFamily(dim=4, dtype=torch.float64)
    return ProblemBatch(fam, sample_problems(fam, n, torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("rule", [POWERSIGN, ADAM, Rule((("g", "gamma", "id", "exp", "mul"),))])
def test_lr_grid_in_one_run_equals_one_run_per_lr(rule):
    batch = _quadratics()
    lrs = (1e-3, 1e-2, 0.1, 3.0)                           # 3.0 diverges with the exp(γ̂) rule
    grid = run_rule_grid(rule, batch, 12, lrs)
    assert grid.shape == (13, 4, 3)
    for j, lr in enumerate(lrs):
        ref, _ = run_optimizer(lambda ps: RuleOptimizer(ps, rule, lr), batch, 12)
        ok = torch.isfinite(ref)                 # run_optimizer stops every optimisee once one diverges
        torch.testing.assert_close(grid[:, j][ok], ref[ok], rtol=1e-12, atol=1e-12)
        for t in range(13):                      # ... and the grid marks the one that did
            if not bool(ok[t].all()):
                assert bool(torch.isinf(grid[: t + 1, j]).any())


def test_repeat_tiles_every_kind_of_batch_along_the_stacked_dim():
    from metalearn.optim.search import _repeat
    x = torch.arange(6.0).view(2, 3)
    out = _repeat({"x": x, "pair": (x[:, 0], [x[:, 1]])}, 3)
    assert torch.equal(out["x"], torch.cat([x, x, x]))
    assert torch.equal(out["pair"][0], torch.tensor([0.0, 3.0] * 3)) and isinstance(out["pair"][1], list)
    with pytest.raises(ArgumentError, match="batch"):
        _repeat("images", 2)


def test_proxy_score():
    batch = _quadratics()
    s = proxy_score(SGD, batch, 10, (1e-3, 1e-2))
    losses, _ = run_optimizer(lambda ps: torch.optim.SGD(ps, lr=s["lr"]), batch, 10)
    assert s["score"] == pytest.approx(math.log(float(losses[0].mean()) / float(losses[-1].mean())))
    assert s["lr"] in (1e-3, 1e-2)
    ascent = proxy_score(Rule((("g", "one", "neg", "id", "left"),)), batch, 10, (1e-3, 1e-2))
    assert ascent["score"] == 0.0                           # gradient ascent never lowers the loss
    blow = proxy_score(Rule((("g", "one", "exp", "id", "left"),)), batch, 10, (1e3,))
    assert blow == {"score": 0.0, "lr": None, "final": math.inf, "initial": pytest.approx(blow["initial"])}


def test_controller_respects_the_group_order_and_is_reproducible():
    torch.manual_seed(0)
    c = Controller(groups=3)
    rules, logp, ent = c.sample(200, torch.Generator().manual_seed(0))
    for r in rules:
        for k, g in enumerate(r.groups):
            for op in g[:2]:
                assert op in OPERANDS or int(op[1:]) < k
    assert {g[0] for r in rules for g in r.groups[2:]} & {"o0", "o1"}       # later groups do use earlier ones
    again, _, _ = c.sample(200, torch.Generator().manual_seed(0))
    assert again == rules
    assert logp.shape == ent.shape == (200,) and bool((logp < 0).all()) and bool((ent > 0).all())
    logp.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in c.parameters())


def test_controller_log_prob_is_the_sum_over_tokens():
    torch.manual_seed(1)
    c = Controller(groups=1)
    with torch.no_grad():                                   # a uniform policy: every head outputs zeros
        for head in c.heads.values():
            head.weight.zero_()
            head.bias.zero_()
    rules, logp, ent = c.sample(4, torch.Generator().manual_seed(0))
    expect = -(2 * math.log(len(OPERANDS)) + 2 * math.log(9) + math.log(len(BINARY)))
    torch.testing.assert_close(logp, torch.full((4,), expect))
    torch.testing.assert_close(ent, torch.full((4,), -expect))


def test_reinforce_learns_a_toy_reward():
    # reward: 1 when the rule ends in a multiplication; the untrained policy picks it ~1/6 of the time
    score = lambda r: {"score": float(r.groups[-1][4] == "mul"), "lr": 1.0, "final": 0.0}   # noqa: E731
    torch.manual_seed(0)
    c = Controller(groups=1)
    res = reinforce_search(score, c, steps=40, batch_size=16, lr=0.05, generator=torch.Generator().manual_seed(0))
    first = res["history"][0]["mean_score"]
    late = np.mean([h["mean_score"] for h in res["history"][-5:]])
    assert first < 0.5 and late > 0.8
    assert res["samples"] == 640 and res["evaluations"] <= 640
    assert top_rules(res["rules"], 3)[0][1]["score"] == 1.0


def test_top_rules_merges_rules_with_the_same_proxy_run():
    rules = {"a + b": {"rule": [["g"] * 5], "score": 2.0, "lr": 0.01, "final": 0.25},
             "b − −a": {"rule": [["g"] * 5], "score": 2.0, "lr": 0.01, "final": 0.25},
             "c": {"rule": [["g"] * 5], "score": 1.5, "lr": 1.0, "final": 0.5},
             "d": {"rule": [["g"] * 5] * 2, "score": 1.5, "lr": 0.1, "final": 0.5},
             "never": {"rule": [["g"] * 5], "score": 0.0, "lr": None, "final": math.inf}}
    top = top_rules(rules, 5)
    assert [f for f, _ in top] == ["a + b", "c", "d"]
    assert top[0][1]["same_as"] == ["b − −a"] and top[1][1]["same_as"] == []
    assert [f for f, _ in top_rules(rules, 1)] == ["a + b"]


def test_random_search_is_seeded_and_monotone():
    score = lambda r: {"score": float(len(r.formula())) / 100, "lr": 1.0, "final": 0.0}     # noqa: E731
    a = random_search(score, 2, 30, torch.Generator().manual_seed(3))
    b = random_search(score, 2, 30, torch.Generator().manual_seed(3))
    assert a["history"] == b["history"] and len(a["history"]) == 30
    best = [h["best_so_far"] for h in a["history"]]
    assert best == sorted(best)
    assert sample_uniform(2, torch.Generator().manual_seed(4)) == sample_uniform(2, torch.Generator().manual_seed(4))


@pytest.fixture
def fake_mnist(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 60000)
    x = (rng.random((60000, 28, 28)) * 40).astype(np.uint8)
    x[np.arange(60000), y * 2, :] = 255                      # learnable: the class is a bright row
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    np.savez(tmp_path / "data" / "mnist" / "mnist.npz", train_images=x, train_labels=y.astype(np.int64),
             test_images=x[:100], test_labels=y[:100].astype(np.int64))
    return tmp_path / "data"


def test_benchmark_script_smoke_and_bad_arguments(fake_mnist, tmp_path):
    script = ROOT / "benchmarks" / "optimizer_search.py"
    env = {"METALEARN_DATA": str(fake_mnist), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(out), "--plot",
                           str(tmp_path / "s.png")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["kind"] == "metalearn-optimizer-search" and rec["smoke"] is True
    assert rec["controller"]["samples"] == rec["random"]["samples"] == 6
    assert rec["heldout"][0]["best_baseline"] in ("SGD", "NAG", "RMSprop", "Adam", "PowerSign", "AddSign")
    assert (tmp_path / "s.png").is_file()
    bad = subprocess.run([sys.executable, str(script), "--groups", "0", "--out", str(tmp_path / "b.json")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--groups" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b.json").exists()
