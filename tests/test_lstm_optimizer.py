"""The coordinatewise LSTM optimizer (Andrychowicz et al. 2016): preprocessing, update, meta-gradients,
meta-training, save/load, the torch.optim wrapper, optimisee families, bad input. Fast on CPU."""
import json
import math

import pytest
import torch
from torch import nn

from metalearn.optim import (BASELINES, LearnedOptimizer, LSTMOptimizer, LSTMState, MetaTrainConfig, MLPFamily,
                             ProblemBatch, QuadraticFamily, apply_updates, meta_train, preprocess_gradients,
                             run_optimizer, sample_problems, tune_lr, unroll)
from metalearn.optim.meta import _trajectory_no_meta


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return LSTMOptimizer(**kw)


# --- preprocessing -------------------------------------------------------------------------------------------
def test_preprocess_hand_computed_both_branches():
    e = math.e
    g = torch.tensor([1.0, -e ** 2, 2.0e-5, -2.0e-6, 0.0, math.exp(-10), -e ** -5], dtype=torch.float64)
    want = torch.tensor([
        [0.0, 1.0],                   # |g| >= e^-10: (log|g| / 10, sign g)
        [0.2, -1.0],                  # log(e^2) / 10 = 0.2
        [-1.0, 2.0e-5 * e ** 10],     # |g| < e^-10 (= 4.54e-5): (-1, e^10 g) = (-1, 0.44053)
        [-1.0, -2.0e-6 * e ** 10],    # (-1, -0.044053)
        [-1.0, 0.0],                  # zero gradient: second branch, no log(0)
        [-1.0, 1.0],                  # exactly e^-10: first branch, log = -10 -> -1; sign 1 (both branches agree)
        [-0.5, -1.0],                 # log(e^-5) / 10
    ], dtype=torch.float64)
    torch.testing.assert_close(preprocess_gradients(g, p=10.0), want, rtol=1e-12, atol=1e-12)
    assert abs(2.0e-5 * e ** 10 - 0.440529) < 1e-5          # the hand value of row 3


def test_preprocess_other_p_and_shapes():
    g = torch.tensor([0.5, 1e-3])            # p = 2: threshold e^-2 = 0.135
    out = preprocess_gradients(g, p=2.0)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.5) / 2, 1.0], [-1.0, 1e-3 * math.e ** 2]]))
    with pytest.raises(ValueError, match="p: expected > 0"):
        preprocess_gradients(g, p=0.0)


def test_preprocess_equals_the_clamped_form():
    """(log|g|/p, sign g) / (-1, e^p g) is the same map as (max(log|g|/p, -1), clamp(e^p g, -1, 1)), the form of
    the authors' released code (there with log(|g| + eps)); checked on gradients from 1e-12 to 1e3."""
    g = torch.logspace(-12, 3, 301, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(151)[:301]
    g = torch.cat([g, torch.zeros(1, dtype=torch.float64)])
    for p in (5.0, 10.0):
        first = torch.log(g.abs()).div(p).clamp_min(-1.0)
        second = (g * math.exp(p)).clamp(-1.0, 1.0)
        torch.testing.assert_close(preprocess_gradients(g, p=p), torch.stack([first, second], -1), rtol=1e-12,
                                   atol=1e-12)


# --- the update ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_shape_dtype_and_no_mutation(dtype):
    net = _net()
    params = {"w": torch.randn(3, 4, dtype=dtype), "b": torch.randn(5, dtype=dtype), "s": torch.randn((), dtype=dtype)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    grads_copy = {k: v.clone() for k, v in grads.items()}
    state = net.init(params)
    assert state.h.shape == (2, 20, 12 + 5 + 1) and state.c.shape == state.h.shape
    updates, new = net.update(grads, state)
    for k in params:
        assert updates[k].shape == params[k].shape and updates[k].dtype == dtype
        assert torch.equal(grads[k], grads_copy[k])
    assert new.layout == state.layout and torch.count_nonzero(state.h) == 0     # old state untouched
    out = apply_updates(params, updates)
    for k in params:
        torch.testing.assert_close(out[k], params[k] + updates[k])


def test_batched_equals_per_parameter_and_nn_lstm():
    """All coordinates in one call == each parameter on its own; the written-out cell == nn.LSTM."""
    net = _net().double()
    params = {"a": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(7, dtype=torch.float64)}
    grads = {k: torch.randn_like(v) * 10 ** torch.randint(-8, 1, v.shape).double() for k, v in params.items()}
    together, _ = net.update(grads, net.init(params))
    for k in params:
        alone, _ = net.update({k: grads[k]}, net.init({k: params[k]}))
        torch.testing.assert_close(together[k], alone[k], rtol=0, atol=1e-15)
    flat = torch.cat([g.reshape(-1) for g in grads.values()])
    h, c = torch.randn(2, 19, 20, dtype=torch.float64), torch.randn(2, 19, 20, dtype=torch.float64)
    u, h1, c1 = net(flat, h.transpose(1, 2), c.transpose(1, 2))           # ours: (layers, hidden, N)
    out, (h2, c2) = net.lstm(preprocess_gradients(flat)[None], (h, c))     # nn.LSTM: (layers, N, hidden)
    torch.testing.assert_close(h1, h2.transpose(1, 2))
    torch.testing.assert_close(c1, c2.transpose(1, 2))
    torch.testing.assert_close(u, net.head(out[0]).squeeze(-1) * 0.1)


def test_forget_bias_shifts_only_the_forget_gate_bias_at_init():
    plain, shifted = _net(4), _net(4, forget_bias=1.0)
    assert shifted.config == plain.config                         # an initialisation, not part of the config
    for name, p in plain.named_parameters():
        diff = dict(shifted.named_parameters())[name] - p
        want = torch.zeros_like(p)
        if name.startswith("lstm.bias_hh"):
            want[20:40] = 1.0                                     # gates i, f, g, o: rows 20-39 are f
        torch.testing.assert_close(diff, want, rtol=0, atol=1e-6)


def test_meta_gradient_reaches_every_lstm_weight_not_the_optimisee_gradient():
    net = _net()
    params = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    g = {k: torch.randn_like(v).requires_grad_(True) for k, v in params.items()}   # would get grads if not detached
    state = net.init(params)
    u1, state = net.update(g, state)
    u2, state = net.update(g, state)                    # two steps: h_hh weights matter from step 2 on
    (sum(v.pow(2).sum() for v in u2.values()) + sum(v.sum() for v in u1.values())).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(v.grad is None for v in g.values())


def test_unroll_meta_gradient_and_constant_optimisee_gradients():
    fam = QuadraticFamily(dim=3)
    batch = ProblemBatch(fam, sample_problems(fam, 4, torch.Generator().manual_seed(0)))
    net = _net()
    params = {k: v.clone().requires_grad_(True) for k, v in batch.params.items()}
    grads = dict(zip(params, torch.autograd.grad(batch.losses(params, 0).sum(), list(params.values()))))
    meta_loss, p_end, state, grads_end, losses = unroll(net, batch, params, net.init(params), grads, 0, 5)
    assert losses.shape == (5, 4)
    assert all(not g.requires_grad for g in grads_end.values())        # gradients are constants
    torch.testing.assert_close(meta_loss.detach(), losses.mean(1).sum())
    meta_loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_meta_training_reduces_meta_loss_on_1d_quadratic():
    """Seeded; the held-out meta-loss must fall to under half its value before training. Observed (seeds 0-2):
    ratios 0.29-0.37; an untrained or wrongly wired optimizer stays near 1."""
    fam = QuadraticFamily(dim=1)
    held_out = ProblemBatch(fam, sample_problems(fam, 64, torch.Generator().manual_seed(123)))
    net = _net(0)
    before = float(_trajectory_no_meta(net, held_out, 20)[1:].mean())
    cfg = MetaTrainConfig(steps=20, unroll=20, optimisees=16, iterations=40, lr=1e-2, val_every=40,
                          val_optimisees=16, seed=0)
    res = meta_train(net, fam, cfg, log=None)
    after = float(_trajectory_no_meta(net, held_out, 20)[1:].mean())
    assert res.iterations_done == 40 and res.optimisee_steps == 40 * 16 * 20
    assert after < 0.5 * before, (before, after)


# --- save / load, checkpoints, resume --------------------------------------------------------------------------
def test_save_load_round_trip_identical_updates(tmp_path):
    net = _net(3, hidden_size=7, num_layers=3, output_scale=0.05)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = net.save(tmp_path / "opt.pt", note="test")
    loaded = LSTMOptimizer.load(path)
    assert loaded.config == net.config
    params = {"w": torch.randn(6, 5)}
    s1, s2 = net.init(params), loaded.init(params)
    for _ in range(3):
        g = {"w": torch.randn(6, 5)}
        u1, s1 = net.update(g, s1)
        u2, s2 = loaded.update(g, s2)
        assert torch.equal(u1["w"], u2["w"])
    assert not list(tmp_path.glob(".*.tmp"))                   # atomic write left no temp file


def test_load_rejects_truncated_or_foreign_files(tmp_path):
    path = _net().save(tmp_path / "opt.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        LSTMOptimizer.load(tmp_path / "cut.pt")
    torch.save({"format": 1, "kind": "protonet"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an LSTM optimizer"):
        LSTMOptimizer.load(tmp_path / "other.pt")


def test_meta_train_checkpoints_and_exact_resume(tmp_path):
    fam = QuadraticFamily(dim=2)
    cfg = MetaTrainConfig(steps=10, unroll=5, optimisees=4, iterations=4, lr=1e-2, val_every=2, val_optimisees=4)
    full = _net(1)
    meta_train(full, fam, cfg, out_dir=tmp_path / "a", log=None)
    half = _net(1)
    meta_train(half, fam, MetaTrainConfig(**{**cfg.__dict__, "iterations": 2}), out_dir=tmp_path / "b", log=None)
    resumed = _net(1)
    res = meta_train(resumed, fam, cfg, out_dir=tmp_path / "b", resume=True, log=None)
    assert res.iterations_done == 4
    last_a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    last_b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    for k in last_a:
        assert torch.equal(last_a[k], last_b[k]), k
    lines = [json.loads(s) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [2, 4]
    best = LSTMOptimizer.load(tmp_path / "a" / "best.pt")
    assert best.config == full.config
    with pytest.raises(ValueError, match="another config"):
        meta_train(_net(1), fam, MetaTrainConfig(**{**cfg.__dict__, "lr": 0.5}), out_dir=tmp_path / "b",
                   resume=True, log=None)


def test_val_metric_last_unroll_chooses_by_the_last_unroll(tmp_path):
    fam = QuadraticFamily(dim=2)
    cfg = MetaTrainConfig(steps=10, unroll=5, optimisees=4, iterations=4, lr=1e-2, val_every=1, val_optimisees=4,
                          val_metric="last_unroll")
    net = _net(2)
    res = meta_train(net, fam, cfg, out_dir=tmp_path, log=None)
    hist = res.history
    assert res.best_val == min(r["val_last_unroll_loss"] for r in hist)
    best = min(hist, key=lambda r: r["val_last_unroll_loss"])
    assert res.best_iteration == best["iteration"]
    # the recorded scores are the mean over steps 1-10 and over steps 6-10 of the held-out trajectory
    held = ProblemBatch(fam, sample_problems(fam, 4, torch.Generator().manual_seed(cfg.seed + 1_000_003)))
    losses = _trajectory_no_meta(net, held, 10)                   # net holds the best weights
    assert abs(float(losses[6:].mean()) - best["val_last_unroll_loss"]) < 1e-6
    assert abs(float(losses[1:].mean()) - best["val_mean_loss"]) < 1e-6
    with pytest.raises(ValueError, match="val_metric: expected one of"):
        MetaTrainConfig(val_metric="final")


def test_resume_from_a_checkpoint_without_newer_settings(tmp_path):
    """A last.pt written before a setting existed resumes when the setting is at its default."""
    fam = QuadraticFamily(dim=2)
    cfg = MetaTrainConfig(steps=4, unroll=2, optimisees=2, iterations=2, lr=1e-2, val_every=1, val_optimisees=2)
    meta_train(_net(1), fam, MetaTrainConfig(**{**cfg.__dict__, "iterations": 1}), out_dir=tmp_path, log=None)
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    del ck["meta_config"]["val_metric"]
    torch.save(ck, tmp_path / "last.pt")
    res = meta_train(_net(1), fam, cfg, out_dir=tmp_path, resume=True, log=None)
    assert res.iterations_done == 2
    with pytest.raises(ValueError, match="another config"):
        meta_train(_net(1), fam, MetaTrainConfig(**{**cfg.__dict__, "val_metric": "last_unroll"}), out_dir=tmp_path,
                   resume=True, log=None)


# --- the torch.optim wrapper ---------------------------------------------------------------------------------
# --- the torch.optim wrapper ---------------------------------------------------------------------------------
def test_learned_optimizer_drives_a_module_like_the_functional_update():
    net = _net()
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = net.init(params)
    opt = LearnedOptimizer(model.parameters(), net)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        opt.step()
        with torch.no_grad():
            updates, state = net.update(grads, state)
        params = apply_updates(params, updates)
        for k, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), params[k], rtol=0, atol=1e-6)
    sd = opt.state_dict()
    opt2 = LearnedOptimizer(model.parameters(), net)
    opt2.load_state_dict(sd)
    first = next(iter(model.parameters()))
    assert torch.equal(opt2.state[first]["h"], opt.state[first]["h"])
    assert all(p.grad is None or not p.grad.requires_grad for p in model.parameters())


def test_learned_optimizer_with_changing_sets_of_gradients():
    """Coordinatewise: each parameter's state evolves on its own, whichever other parameters have gradients."""
    net = _net()
    a, b = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, 2))
    ref = {"a": (a.detach().clone(), net.init({"a": a})), "b": (b.detach().clone(), net.init({"b": b}))}
    opt = LearnedOptimizer([a, b], net)
    for step, which in enumerate([("a", "b"), ("a",), ("a", "b"), ("b",)]):
        g = {"a": torch.randn(3), "b": torch.randn(2, 2)}
        a.grad = g["a"].clone() if "a" in which else None
        b.grad = g["b"].clone() if "b" in which else None
        opt.step()
        if step == 2:
            opt.load_state_dict(opt.state_dict())          # round trip in the middle
        for k in which:
            p0, st = ref[k]
            with torch.no_grad():
                u, st = net.update({k: g[k]}, st)
            ref[k] = (p0 + u[k], st)
    torch.testing.assert_close(a.detach(), ref["a"][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(b.detach(), ref["b"][0], rtol=0, atol=1e-6)


# --- optimisee families and baselines --------------------------------------------------------------------------
def _fake_images(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 6, 6), generator=g, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("hidden,act", [((5,), "sigmoid"), ((4, 3), "relu")])
def test_mlp_family_vmap_equals_loop_and_batches_are_deterministic(hidden, act):
    x, y = _fake_images()
    fam = MLPFamily(x, y, hidden=hidden, activation=act, batch_size=16, eval_size=50)
    probs = sample_problems(fam, 3, torch.Generator().manual_seed(0))
    batch = ProblemBatch(fam, probs)
    torch.testing.assert_close(batch.losses(batch.params, 4), batch.losses_loop(batch.params, 4))
    assert torch.equal(probs[0].batch(7)[0], probs[0].batch(7)[0])
    assert not torch.equal(probs[0].batch(7)[0], probs[1].batch(7)[0])
    assert batch.eval_losses(batch.params).shape == (3,)
    assert batch.params["layers.0.weight"].shape == (3, hidden[0], 36)


def test_mlp_family_initialisations():
    x, y = _fake_images()
    gen = torch.Generator().manual_seed(0)
    uni = sample_problems(MLPFamily(x, y, hidden=(50,)), 4, gen)
    nor = sample_problems(MLPFamily(x, y, hidden=(50,), init="normal"), 4, gen)
    w_u = torch.stack([p.params["layers.0.weight"] for p in uni])
    assert w_u.abs().max() <= 1 / 6 and w_u.abs().max() > 0.9 / 6        # uniform ±1/√fan_in, fan_in 36
    b_u = torch.stack([p.params["layers.1.bias"] for p in uni])
    assert b_u.abs().max() <= 1 / math.sqrt(50)
    allw = torch.cat([torch.cat([v.reshape(-1) for v in p.params.values()]) for p in nor])   # 4 x 2370 values
    assert abs(float(allw.std()) - 0.01) < 0.0005 and abs(float(allw.mean())) < 0.0005
    assert abs(float(torch.stack([p.params["layers.1.bias"] for p in nor]).std()) - 0.01) < 0.003
    with pytest.raises(ValueError, match="init: expected 'uniform' or 'normal'"):
        MLPFamily(x, y, init="xavier")
    with pytest.raises(ValueError, match="init_std"):
        MLPFamily(x, y, init="normal", init_std=0.0)


def test_run_optimizer_stacked_equals_separate_runs_and_does_not_mutate():
    fam = QuadraticFamily(dim=4)
    probs = sample_problems(fam, 3, torch.Generator().manual_seed(0))
    batch = ProblemBatch(fam, probs)
    init = {k: v.clone() for k, v in batch.params.items()}
    stacked, _ = run_optimizer(lambda ps: BASELINES["Adam"](ps, 0.1), batch, 15)
    assert torch.equal(batch.params["theta"], init["theta"])
    for i, p in enumerate(probs):
        alone, _ = run_optimizer(lambda ps: BASELINES["Adam"](ps, 0.1), ProblemBatch(fam, [p]), 15)
        torch.testing.assert_close(alone[:, 0], stacked[:, i], rtol=1e-5, atol=1e-6)


def test_tune_lr_picks_the_best_and_survives_divergence():
    fam = QuadraticFamily(dim=3)
    batch = ProblemBatch(fam, sample_problems(fam, 8, torch.Generator().manual_seed(0)))
    best, scores = tune_lr("SGD", batch, 20, grid=(1e-4, 1e-2, 100.0), log=None)
    assert scores[100.0] == math.inf and best == min(scores, key=scores.get) and best == 1e-2
    with pytest.raises(ValueError, match="expected one of"):
        tune_lr("Adagrad", batch, 5, log=None)


# --- bad input -------------------------------------------------------------------------------------------------
def test_mixed_dtypes_rejected():
    net = _net()
    params = {"a": torch.zeros(2), "b": torch.zeros(3, dtype=torch.float64)}
    with pytest.raises(ValueError, match="mixed dtypes.*'a'.*'b'"):
        net.init(params)
    state = net.init({"a": torch.zeros(2), "b": torch.zeros(3)})
    with pytest.raises(ValueError, match="mixed dtypes"):
        net.update(params, state)
    with pytest.raises(TypeError, match="floating-point"):
        net.init({"a": torch.zeros(2, dtype=torch.int64)})


def test_mixed_devices_rejected():
    net = _net()
    params = {"a": torch.zeros(2), "b": torch.zeros(3, device="meta")}
    with pytest.raises(ValueError, match="mixed devices"):
        net.init(params)
    with pytest.raises(ValueError, match="LSTM optimizer is on cpu"):
        net.init({"a": torch.zeros(2, device="meta")})
    a, b = nn.Linear(2, 2), nn.Linear(2, 2).double()          # a user's model with mixed dtypes
    opt = LearnedOptimizer([*a.parameters(), *b.parameters()], net)
    (a(torch.ones(1, 2)).sum() + b(torch.ones(1, 2, dtype=torch.float64)).sum()).backward()
    with pytest.raises(ValueError, match="mixed dtypes"):
        opt.step()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_gradient_is_a_clear_error(bad):
    net = _net()
    params = {"w": torch.zeros(3), "b": torch.zeros(2)}
    state = net.init(params)
    grads = {"w": torch.tensor([1.0, bad, 0.0]), "b": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"non-finite values \(nan/inf\) in \['w'\]"):
        net.update(grads, state)
    model = nn.Linear(3, 1)
    opt = LearnedOptimizer(model.parameters(), net)
    model(torch.full((1, 3), bad)).sum().backward()
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        opt.step()
    assert torch.equal(model.weight.detach(), before)               # nothing was applied


def test_wrong_keys_or_shapes_rejected():
    net = _net()
    state = net.init({"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="do not match the state"):
        net.update({"w": torch.zeros(4)}, state)
    with pytest.raises(ValueError, match="do not match the state"):
        net.update({"v": torch.zeros(3)}, state)
    with pytest.raises(ValueError, match="at least one tensor"):
        net.init({})


def test_unroll_length_zero_and_bad_configs_rejected():
    with pytest.raises(ValueError, match="unroll: expected an integer >= 1"):
        MetaTrainConfig(unroll=0)
    with pytest.raises(ValueError, match="unroll: expected <= steps"):
        MetaTrainConfig(steps=10, unroll=20)
    with pytest.raises(ValueError, match="lr: expected > 0"):
        MetaTrainConfig(lr=0.0)
    fam = QuadraticFamily(dim=2)
    batch = ProblemBatch(fam, sample_problems(fam, 2, torch.Generator().manual_seed(0)))
    net = _net()
    params = dict(batch.params)
    with pytest.raises(ValueError, match="unroll length: expected >= 1, got 0"):
        unroll(net, batch, params, net.init(params), {k: torch.zeros_like(v) for k, v in params.items()}, 0, 0)
    with pytest.raises(ValueError, match="multiple of unroll"):
        meta_train(net, fam, MetaTrainConfig(steps=10, unroll=3), log=None)
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMOptimizer(hidden_size=0)
    with pytest.raises(ValueError, match="steps: expected >= 1"):
        run_optimizer(lambda ps: BASELINES["SGD"](ps, 0.1), batch, 0)


def test_diverging_meta_training_skips_instead_of_crashing():
    """A huge output scale makes the quadratics blow up: the unroll is skipped (counted), no nan weights."""
    net = _net(0, output_scale=1e30)
    fam = QuadraticFamily(dim=2)
    res = meta_train(net, fam, MetaTrainConfig(steps=4, unroll=2, optimisees=2, iterations=2, val_every=2,
                                               val_optimisees=2), log=None)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert res.skipped_unrolls >= 1
