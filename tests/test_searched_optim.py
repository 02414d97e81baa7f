"""PowerSign / AddSign (Bello et al. 2017): hand-computed steps, sign agreement, the sign decays' values, the
functional rules against the torch.optim classes, and their place in the optimizer benchmark."""
from __future__ import annotations

import math

import pytest
import torch

from metalearn.checks import ArgumentError
from metalearn.optim import BASELINES, ProblemBatch, QuadraticFamily, run_optimizer, sample_problems, tune_lr
from metalearn.optim.searched import (DECAYS, AddSign, PowerSign, SignState, adapt_stateful, addsign_rule,
                                      powersign_rule, searched_baselines, sign_decay)

E = math.e


def _steps(opt_cls, grads, p0, **kw):
    """Apply the given gradient sequence with the torch.optim class; returns the parameter after each step."""
    w = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = opt_cls([w], **kw)
    out = []
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(w.detach().clone())
    return out


def test_powersign_two_hand_computed_steps():
    # step 1: g = (0.5, -1), m = 0.1 g = (0.05, -0.1): both agree -> x e
    # step 2: g = (-0.2, -1), m = 0.9 m + 0.1 g = (0.025, -0.19): first disagrees (x 1/e), second agrees (x e)
    w1, w2 = _steps(PowerSign, [[0.5, -1.0], [-0.2, -1.0]], [1.0, -2.0], lr=0.1)
    exp1 = [1.0 - 0.1 * E * 0.5, -2.0 - 0.1 * E * -1.0]
    exp2 = [exp1[0] - 0.1 / E * -0.2, exp1[1] - 0.1 * E * -1.0]
    assert torch.allclose(w1, torch.tensor(exp1, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.allclose(w2, torch.tensor(exp2, dtype=torch.float64), rtol=0, atol=1e-15)
    assert abs(exp2[0] - 0.8714437) < 1e-6 and abs(exp2[1] - (-1.4563436)) < 1e-6   # the numbers, by hand


def test_addsign_two_hand_computed_steps():
    # alpha = 1: agree -> 2 lr g, disagree -> no step
    w1, w2 = _steps(AddSign, [[0.5, -1.0], [-0.2, -1.0]], [1.0, -2.0], lr=0.1)
    assert torch.allclose(w1, torch.tensor([0.9, -1.8], dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.allclose(w2, torch.tensor([0.9, -1.6], dtype=torch.float64), rtol=0, atol=1e-15)


def test_sign_agreement_cases():
    # beta = 0.5: g = 2 then g = -1 makes m exactly 0 -> sign(m) = 0 -> PowerSign x 1 (SGD), AddSign x alpha
    for cls, mult_agree, mult_zero in ((PowerSign, 3.0, 1.0), (AddSign, 1.0 + 1.0, 1.0)):
        kw = dict(lr=0.1, beta=0.5, alpha=3.0) if cls is PowerSign else dict(lr=0.1, beta=0.5, alpha=1.0)
        w1, w2 = _steps(cls, [[2.0], [-1.0]], [0.0], **kw)
        assert torch.allclose(w1, torch.tensor([-0.1 * mult_agree * 2.0], dtype=torch.float64), atol=1e-15)
        assert torch.allclose(w2 - w1, torch.tensor([0.1 * mult_zero * 1.0], dtype=torch.float64), atol=1e-15)
    # zero gradient: no step whatever m says
    w1, w2 = _steps(PowerSign, [[1.0], [0.0]], [0.0], lr=0.1)
    assert torch.equal(w1, w2)
    # disagreement: PowerSign shrinks by alpha^-1, AddSign with alpha = 1 does not move, alpha = 2 -> x 1
    w1, w2 = _steps(PowerSign, [[1.0], [-0.01]], [0.0], lr=1.0)            # m = 0.1, then 0.089: still > 0
    assert torch.allclose(w2 - w1, torch.tensor([0.01 / E], dtype=torch.float64), atol=1e-15)
    w1, w2 = _steps(AddSign, [[1.0], [-0.01]], [0.0], lr=1.0)
    assert torch.equal(w1, w2)
    w1, w2 = _steps(AddSign, [[1.0], [-0.01]], [0.0], lr=1.0, alpha=2.0)
    assert torch.allclose(w2 - w1, torch.tensor([0.01], dtype=torch.float64), atol=1e-15)


@pytest.mark.parametrize("decay,T,n,expected", [
    ("constant", None, None, {0: 1.0, 7: 1.0, 10 ** 6: 1.0}),
    ("linear", 100, None, {0: 1.0, 25: 0.75, 50: 0.5, 100: 0.0, 150: 0.0}),
    ("cyclic", 100, 1, {0: 1.0, 25: 0.5, 50: 0.0, 75: 0.5, 100: 1.0, 200: 1.0}),
    ("cyclic", 100, 2, {0: 1.0, 25: 0.0, 50: 1.0, 100: 1.0}),
    ("restart", 100, 1, {0: 1.0, 50: 0.5, 100: 1.0}),   # (n t) mod T: back to 1 at T
    ("restart", 100, 2, {0: 1.0, 25: 0.5, 49: 0.5 * (1 + math.cos(math.pi * 98 / 100)), 50: 1.0, 75: 0.5}),
])
def test_decay_values(decay, T, n, expected):
    for t, v in expected.items():
        assert float(sign_decay(decay, t, T, n)) == pytest.approx(v, abs=1e-12), (decay, t)


def test_decay_defaults_and_tensor_t():
    assert float(sign_decay("cyclic", 50, 100)) == pytest.approx(0.0, abs=1e-12)      # n = 1
    assert float(sign_decay("restart", 50, 100)) == pytest.approx(1.0, abs=1e-12)     # n = 2: restart at T/2
    t = torch.arange(5.0)
    assert torch.allclose(sign_decay("linear", t, 4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))


def test_linear_decay_ends_as_sgd():
    # f(T) = 0: PowerSign is SGD, AddSign is SGD with lr * alpha; the decay runs on the optimizer's step count
    T = 3
    grads = [[1.0], [1.0], [1.0], [1.0]]
    w = _steps(PowerSign, grads, [0.0], lr=0.1, decay="linear", total_steps=T)
    mults = [E ** (1 - t / T) for t in range(T)] + [1.0]
    exp = torch.tensor([-0.1 * sum(mults[:k + 1]) for k in range(4)], dtype=torch.float64)
    assert torch.allclose(torch.stack(w).squeeze(1), exp, atol=1e-14)
    w = _steps(AddSign, grads, [0.0], lr=0.1, alpha=0.5, decay="linear", total_steps=T)
    mults = [0.5 + (1 - t / T) for t in range(T)] + [0.5]
    exp = torch.tensor([-0.1 * sum(mults[:k + 1]) for k in range(4)], dtype=torch.float64)
    assert torch.allclose(torch.stack(w).squeeze(1), exp, atol=1e-14)


def _quadratic(seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    y = torch.randn(5, generator=g, dtype=torch.float64)
    p0 = {"w": torch.randn(5, generator=g, dtype=torch.float64), "b": torch.randn(3, generator=g, dtype=torch.float64)}
    return (lambda p: ((A @ p["w"] - y) ** 2).sum() + (p["b"] ** 4).sum() + (p["w"][:3] * p["b"]).sum()), p0


@pytest.mark.parametrize("cls,rule", [(PowerSign, powersign_rule), (AddSign, addsign_rule)])
@pytest.mark.parametrize("decay", DECAYS)
def test_functional_rule_equals_torch_optim(cls, rule, decay):
    loss_fn, p0 = _quadratic()
    kw = dict(lr=0.01, beta=0.8, decay=decay, total_steps=None if decay == "constant" else 4)
    params = {n: torch.nn.Parameter(v.clone()) for n, v in p0.items()}
    opt = cls(params.values(), **kw)
    r = rule(**kw)
    fparams, state = dict(p0), r.init(p0)
    for _ in range(6):                                      # past T = 4: the clipped decay too
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
        grads = torch.func.grad(loss_fn)(fparams)
        fparams, state = r.update(fparams, grads, state)
        for n in params:
            assert torch.allclose(params[n].detach(), fparams[n], rtol=0, atol=1e-13), (n, decay)
            assert torch.allclose(opt.state[params[n]]["exp_avg"], state.m[n], rtol=0, atol=1e-13)
    assert int(state.step) == 6 and opt.state[params["w"]]["step"] == 6


def test_functional_rule_pure_and_adapt_stateful():
    loss_fn, p0 = _quadratic(1)
    before = {n: v.clone() for n, v in p0.items()}
    rule = powersign_rule(0.01, decay="linear", total_steps=3)
    state0 = rule.init(p0)
    out, losses, state = adapt_stateful(loss_fn, p0, 3, rule)
    assert all(torch.equal(p0[n], before[n]) for n in p0)                 # inputs not mutated
    assert all(torch.equal(v, torch.zeros_like(v)) for v in state0.m.values()) and float(state0.step) == 0
    assert losses.shape == (3,) and int(state.step) == 3
    # the same as three manual updates
    p, s = dict(p0), rule.init(p0)
    for _ in range(3):
        p, s = rule.update(p, torch.func.grad(loss_fn)(p), s)
    assert all(torch.equal(out[n], p[n]) for n in p)
    # continuing from a state = running all steps at once
    a, _, sa = adapt_stateful(loss_fn, p0, 2, rule)
    b, _, _ = adapt_stateful(loss_fn, a, 1, rule, state=sa)
    assert all(torch.allclose(b[n], out[n], rtol=0, atol=0) for n in p)


def test_adapt_stateful_second_order_gradcheck():
    # the meta-gradient through 2 PowerSign steps w.r.t. the initial parameters, against finite differences
    A = torch.tensor([[2.0, 0.3], [0.1, 1.0]], dtype=torch.float64)
    rule = powersign_rule(0.05)

    def final_loss(w):
        loss_fn = lambda p: ((A @ p["w"]) ** 2).sum() + p["w"].pow(3).sum()
        out, _, _ = adapt_stateful(loss_fn, {"w": w}, 2, rule)
        return loss_fn(out)

    w = torch.tensor([0.7, -0.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(final_loss, (w,), eps=1e-6, atol=1e-7)


def test_vmap_over_tasks_equals_loop():
    rule = addsign_rule(0.02, decay="cyclic", total_steps=4)
    g = torch.Generator().manual_seed(3)
    targets = torch.randn(4, 6, generator=g, dtype=torch.float64)
    p0 = {"w": torch.zeros(6, dtype=torch.float64)}

    def one(target):
        out, _, _ = adapt_stateful(lambda p: ((p["w"] - target) ** 2).sum(), p0, 3, rule)
        return out["w"]

    batched = torch.func.vmap(one)(targets)
    loop = torch.stack([one(t) for t in targets])
    assert torch.allclose(batched, loop, rtol=0, atol=1e-14)


def test_state_dict_resume_equals_uninterrupted():
    loss_fn, p0 = _quadratic(2)

    def run(n_steps, opt_state=None, start=None):
        params = {n: torch.nn.Parameter((start or p0)[n].clone()) for n in p0}
        opt = AddSign(params.values(), lr=0.01, decay="restart", total_steps=5)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        for _ in range(n_steps):
            opt.zero_grad()
            loss_fn(params).backward()
            opt.step()
        return {n: v.detach().clone() for n, v in params.items()}, opt.state_dict()

    full, _ = run(6)
    half, sd = run(3)
    rest, _ = run(3, sd, half)
    assert all(torch.equal(full[n], rest[n]) for n in full)


def test_bad_arguments_name_themselves():
    w = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ArgumentError, match="decay"):
        PowerSign(w, decay="cosine")
    with pytest.raises(ArgumentError, match="total_steps"):
        AddSign(w, decay="linear")
    with pytest.raises(ArgumentError, match="total_steps"):
        powersign_rule(0.1, decay="restart", total_steps=0)
    with pytest.raises(ArgumentError, match="lr"):
        PowerSign(w, lr=-1.0)
    with pytest.raises(ArgumentError, match="beta"):
        addsign_rule(0.1, beta=1.0)
    with pytest.raises(ArgumentError, match="alpha"):
        PowerSign(w, alpha=0.0)
    with pytest.raises(ArgumentError, match="periods"):
        sign_decay("cyclic", 3, 10, periods=-1)
    rule = powersign_rule(0.1)
    with pytest.raises(ArgumentError, match="state"):
        rule.update({"a": torch.zeros(1)}, {"a": torch.zeros(1)}, SignState(torch.zeros(()), {}))


def test_in_the_benchmark_tables():
    assert {"PowerSign", "AddSign"} <= set(BASELINES)
    table = searched_baselines(20)
    assert set(table) == {f"{k}{s}" for k in ("PowerSign", "AddSign") for s in ("", "-ld", "-cd", "-rd")}
    fam = QuadraticFamily(dim=4)
    batch = ProblemBatch(fam, sample_problems(fam, 3, torch.Generator().manual_seed(0)))
    lr, scores = tune_lr("AddSign-ld", batch, 20, grid=(1e-3, 1e-2), log=None, baselines={**BASELINES, **table})
    assert lr in (1e-3, 1e-2) and set(scores) == {1e-3, 1e-2}
    losses, _ = run_optimizer(lambda ps: BASELINES["PowerSign"](ps, 1e-2), batch, 20)
    assert losses.shape == (21, 3) and bool((losses[-1] < losses[0]).all())
    with pytest.raises(ValueError, match="name"):
        tune_lr("PowerSign-ld", batch, 20, grid=(1e-3,), log=None)     # not in the default table


def test_benchmark_script_smoke(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "searched_optim.py"
    proc = subprocess.run([sys.executable, str(script), "quadratic", "--smoke", "--results", str(tmp_path),
                           "--img", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    rec = json.loads((tmp_path / "quadratic_smoke.json").read_text())
    assert rec["family"] == "quadratic" and rec["command"].startswith("python") and "machine" in rec
    assert {"SGD", "Adam", "PowerSign", "AddSign-ld", "AddSign-rd"} <= set(rec["result"]["optimizers"])
    assert (tmp_path / "searched_quadratic_smoke.png").is_file()
    table = subprocess.run([sys.executable, str(script), "table", str(tmp_path / "quadratic_smoke.json")],
                           capture_output=True, text=True, timeout=600, cwd=root).stdout
    assert "| PowerSign |" in table and "Paired on the same optimisees" in table
    bad = subprocess.run([sys.executable, str(script), "quadratic", "--decays", "xd"], capture_output=True,
                         text=True, timeout=600, cwd=root)
    assert bad.returncode == 2 and "--decays" in bad.stderr
