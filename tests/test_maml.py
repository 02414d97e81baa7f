"""The functional core and the MAML family: gradients proven right (float64), vmap against the loop."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.functional import call, check_vmap_safe, combine, partition, select
from metalearn.inner import adapt, check_finite, meta_sgd, sgd
from metalearn.learners.maml import MAML, meta_batch, task_loss
from metalearn.nn import BatchNorm2d, MamlConv4
from metalearn.types import Episode

D64 = torch.float64


def make_episode(b=3, ways=5, shots=1, queries=2, size=28, channels=1, dtype=D64, seed=1):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat(shots)[None].expand(b, -1).contiguous()
    qy = torch.arange(ways).repeat(queries)[None].expand(b, -1).contiguous()
    return Episode(torch.randn(b, ways * shots, channels, size, size, generator=g, dtype=dtype), sy,
                   torch.randn(b, ways * queries, channels, size, size, generator=g, dtype=dtype), qy, ways)


def small_net(norm="batch", hidden=8, ways=5, **kw):
    torch.manual_seed(0)
    return MamlConv4(1, ways, hidden=hidden, pool="stride", norm=norm, **kw).double()


def grads_of(loss, params):
    return torch.autograd.grad(loss, list(params))


# ---------------------------------------------------------------- closed form / finite differences

def test_one_step_linear_regression_matches_closed_form_meta_gradient():
    torch.manual_seed(0)
    d, n, m, lr = 4, 6, 5, 0.07
    X, y = torch.randn(n, d, dtype=D64), torch.randn(n, dtype=D64)
    Z, t = torch.randn(m, d, dtype=D64), torch.randn(m, dtype=D64)
    model = nn.Linear(d, 1, bias=False).double()
    w = model.weight.detach().reshape(d)
    params = dict(model.named_parameters())
    mse = lambda out, target: ((out.reshape(-1) - target) ** 2).mean()
    q_loss, _, s_losses = task_loss(model, params, {}, {}, ["weight"], X, y, Z, t, steps=1, rule=sgd(lr),
                                    loss_fn=mse)
    (g,) = grads_of(q_loss, params.values())
    # w' = w - lr * 2/n X^T (X w - y);  dLq/dw = (I - 2 lr/n X^T X)^T  2/m Z^T (Z w' - t)
    w1 = w - lr * 2 / n * X.T @ (X @ w - y)
    expected = (torch.eye(d, dtype=D64) - 2 * lr / n * X.T @ X).T @ (2 / m * Z.T @ (Z @ w1 - t))
    torch.testing.assert_close(g.reshape(d), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_losses, ((X @ w - y) ** 2).mean()[None])
    torch.testing.assert_close(q_loss, ((Z @ w1 - t) ** 2).mean())
    # first order: the gradient of the query loss at w', with no (I - ...) factor
    fo_loss, _, _ = task_loss(model, params, {}, {}, ["weight"], X, y, Z, t, steps=1, rule=sgd(lr),
                              loss_fn=mse, first_order=True)
    (g_fo,) = grads_of(fo_loss, params.values())
    torch.testing.assert_close(g_fo.reshape(d), 2 / m * Z.T @ (Z @ w1 - t), rtol=1e-12, atol=1e-12)


def _tiny():
    torch.manual_seed(0)
    net = MamlConv4(1, 3, hidden=2, blocks=2, image_size=6, pool="stride").double()
    ep = make_episode(b=1, ways=3, shots=2, queries=2, size=6)
    return net, ep


@pytest.mark.parametrize("learn_lr", [False, True])
def test_gradcheck_and_gradgradcheck_through_three_inner_steps(learn_lr):
    net, ep = _tiny()
    names = [n for n, _ in net.named_parameters()]
    rule = meta_sgd(0.3) if learn_lr else sgd(0.3)
    base = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    lrs = [t.requires_grad_(True) for t in rule.init(dict(zip(names, base))).values()]

    def f(*flat):
        params = dict(zip(names, flat[:len(names)]))
        hyper = dict(zip(names, flat[len(names):]))
        q, _, _ = task_loss(net, params, {}, hyper, names, ep.support_x[0], ep.support_y[0], ep.query_x[0],
                            ep.query_y[0], steps=3, rule=rule)
        return q

    inputs = tuple(base + lrs)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)
    if not learn_lr:  # third derivatives: once is enough (the step sizes enter the same way as the weights)
        assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-4)


def test_first_order_meta_gradient_equals_query_gradient_at_adapted_params():
    net = small_net()
    ep = make_episode(b=1)
    params = dict(net.named_parameters())
    names = list(params)
    sx, sy, qx, qy = ep.support_x[0], ep.support_y[0], ep.query_x[0], ep.query_y[0]
    q, _, _ = task_loss(net, params, {}, {}, names, sx, sy, qx, qy, steps=2, rule=sgd(0.4), first_order=True)
    g_fo = grads_of(q, params.values())
    # adapt by hand, then differentiate the query loss at the adapted point
    p = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
    for _ in range(2):
        gs = torch.autograd.grad(F.cross_entropy(call(net, p, None, sx), sy), list(p.values()))
        p = {n: (t - 0.4 * g).detach().requires_grad_(True) for (n, t), g in zip(p.items(), gs)}
    expected = torch.autograd.grad(F.cross_entropy(call(net, p, None, qx), qy), list(p.values()))
    for a, b in zip(g_fo, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and it differs from the second-order meta-gradient
    q2, _, _ = task_loss(net, params, {}, {}, names, sx, sy, qx, qy, steps=2, rule=sgd(0.4))
    g2 = grads_of(q2, params.values())
    assert max((a - b).abs().max() for a, b in zip(g_fo, g2)) > 1e-4


# ---------------------------------------------------------------- vmap against the loop

@pytest.mark.parametrize("kw", [dict(), dict(learn_lr=True), dict(adapt="head"), dict(first_order=True),
                                dict(chunk_size=2)])
def test_vmap_equals_loop_for_conv4_with_batchnorm(kw):
    net = small_net()
    ep = make_episode(b=4)
    out = {}
    for vm in (True, False):
        learner = MAML(net, 5, inner_lr=0.4, inner_steps=2, vmap=vm, **kw)
        loss, logits = learner.loss(ep)
        out[vm] = (loss, logits, grads_of(loss, learner.parameters()))
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-10, atol=1e-12)
    for a, b in zip(out[True][2], out[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_primitive_batchnorm_equals_torch_batchnorm_in_the_loop_to_second_order():
    ours, theirs = small_net("batch"), small_net("torch")
    theirs.load_state_dict(ours.state_dict())
    ep = make_episode(b=2)
    g = []
    for net in (ours, theirs):
        learner = MAML(net, 5, inner_lr=0.4, inner_steps=2, vmap=False)
        g.append(grads_of(learner.loss(ep)[0], net.parameters()))
    for a, b in zip(*g):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    x = torch.randn(6, 3, 4, 4, dtype=D64)
    torch.testing.assert_close(BatchNorm2d(3).double()(x), nn.BatchNorm2d(3, track_running_stats=False).double()(x))


def test_vmap_through_torch_batchnorm_is_refused_for_second_order():
    net = small_net("torch")
    with pytest.raises(ValueError, match="wrong second-order"):
        MAML(net, 5)
    MAML(net, 5, vmap=False)           # the loop is fine
    MAML(net, 5, first_order=True)     # and so is first order
    check_vmap_safe(small_net("batch"))
    for layer in (nn.LayerNorm(4), nn.InstanceNorm2d(4)):   # also wrong at second order under vmap
        with pytest.raises(ValueError, match="wrong second-order"):
            check_vmap_safe(nn.Sequential(nn.Conv2d(1, 4, 3), layer))
    check_vmap_safe(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4)))   # exact under vmap
    with pytest.raises(ValueError, match="running statistics"):
        check_vmap_safe(nn.BatchNorm2d(4), second_order=False)


# ---------------------------------------------------------------- purity, evaluation

def test_adapt_never_mutates_its_inputs():
    net = small_net()
    ep = make_episode(b=1)
    params = dict(net.named_parameters())
    before = {n: (t.detach().clone(), t._version) for n, t in params.items()}
    keys = list(params)
    new, losses = adapt(lambda p: F.cross_entropy(call(net, p, None, ep.support_x[0]), ep.support_y[0]),
                        params, 3, sgd(0.4))
    assert list(params) == keys and all(params[n] is t for n, t in net.named_parameters())
    for n, (v, ver) in before.items():
        assert torch.equal(params[n], v) and params[n]._version == ver
    assert all(not torch.equal(new[n], params[n]) for n in ("head.weight", "features.0.weight"))
    assert losses.shape == (3,) and bool(losses[2] < losses[0])


def test_predict_adapts_with_eval_steps_and_keeps_no_graph():
    net = small_net()
    ep = make_episode(b=2)
    learner = MAML(net, 5, inner_lr=0.4, inner_steps=1, eval_inner_steps=3)
    logits = learner.predict(ep)
    assert logits.shape == (2, 10, 5) and not logits.requires_grad
    params = dict(net.named_parameters())
    _, expected, _ = meta_batch(net, params, {}, {}, list(params), ep, steps=3, rule=sgd(0.4), first_order=True)
    torch.testing.assert_close(logits, expected.detach())
    # an unbatched episode gives the first task's logits
    one = Episode(ep.support_x[0], ep.support_y[0], ep.query_x[0], ep.query_y[0], 5)
    torch.testing.assert_close(learner.predict(one), logits[0])


def test_meta_training_reduces_query_loss():
    torch.manual_seed(0)
    net = MamlConv4(1, 3, hidden=8, blocks=2, image_size=8, pool="stride")
    learner = MAML(net, 3, inner_lr=0.4, inner_steps=1)
    # tasks: three fixed prototype images per task, noisy copies as support and query
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(3, 1, 8, 8, generator=g)

    def episode():
        perm = torch.randperm(3, generator=g)
        sx = protos[perm][None] + 0.3 * torch.randn(8, 3, 1, 8, 8, generator=g)
        qx = protos[perm][None] + 0.3 * torch.randn(8, 3, 1, 8, 8, generator=g)
        y = torch.arange(3)[None].expand(8, -1)
        return Episode(sx, y, qx, y, 3)

    opt = torch.optim.Adam(learner.parameters(), 1e-2)
    fixed = episode()
    first = learner.loss(fixed)[0].item()
    for _ in range(60):
        loss, _ = learner.loss(episode())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert learner.loss(fixed)[0].item() < 0.2 * first


# ---------------------------------------------------------------- bad input

def test_filter_that_selects_nothing_is_an_error():
    with pytest.raises(ValueError, match="selects no parameters"):
        MAML(small_net(), 5, adapt="classifier")
    assert select({"a.w": 1, "ab": 2, "b": 3}, "a") == ["a.w"]
    assert select({"a.w": 1, "b.w": 2}, ["b"]) == ["b.w"]
    with pytest.raises(TypeError, match="filter"):
        select({"a": 1}, 3)


def test_parameters_that_do_not_require_grad_are_an_error():
    net = small_net()
    net.head.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"do not require grad: \['head.weight'\]"):
        MAML(net, 5, adapt="head")


def test_nan_support_loss_names_task_and_step():
    net = small_net()
    ep = make_episode(b=3)
    sx = ep.support_x.clone()
    sx[2, 0, 0, 0, 0] = float("nan")
    bad = Episode(sx, ep.support_y, ep.query_x, ep.query_y, 5)
    for vm in (True, False):
        with pytest.raises(FloatingPointError, match="task 2 of the meta-batch at inner step 0"):
            MAML(net, 5, vmap=vm).loss(bad)
    with pytest.raises(FloatingPointError, match="task 2 of the meta-batch at inner step 0"):
        MAML(net, 5, chunk_size=2).backward(bad)    # task 2 is the first task of the second chunk
    losses = torch.tensor([[0.1, 0.2], [0.3, float("inf")]])
    with pytest.raises(FloatingPointError, match="task 1 of the meta-batch at inner step 1"):
        check_finite(losses)


def test_mismatched_parameter_names_are_an_error():
    net = small_net()
    params = dict(net.named_parameters())
    renamed = {("x." + n if n.startswith("head") else n): t for n, t in params.items()}
    with pytest.raises(ValueError, match=r"missing \['head.bias', 'head.weight'\]"):
        call(net, renamed, None, torch.zeros(2, 1, 28, 28, dtype=D64))
    with pytest.raises(ValueError, match="not in params"):
        partition(params, ["head.kernel"])
    with pytest.raises(ValueError, match="more than one dict"):
        combine(params, {"head.bias": params["head.bias"]})


def test_wrong_ways_and_unbatched_meta_batch_are_errors():
    learner = MAML(small_net(), 5)
    with pytest.raises(ValueError, match="5 outputs"):
        learner.loss(make_episode(ways=3))
    ep = make_episode(b=1)
    one = Episode(ep.support_x[0], ep.support_y[0], ep.query_x[0], ep.query_y[0], 5)
    with pytest.raises(ValueError, match="batch of tasks"):
        meta_batch(learner.model, dict(learner.model.named_parameters()), {}, {}, learner.names, one, steps=1,
                   rule=sgd(0.1))
    with pytest.raises(ValueError, match="lr"):
        sgd(0.0)


def test_chunked_backward_gives_the_full_meta_gradient():
    net = small_net()
    ep = make_episode(b=5)
    full = MAML(net, 5, inner_lr=0.4, inner_steps=2)
    loss, logits = full.backward(ep)
    g_full = [p.grad.clone() for p in full.parameters()]
    full.zero_grad()
    chunked = MAML(net, 5, inner_lr=0.4, inner_steps=2, chunk_size=2)   # chunks of 2, 2, 1 tasks
    loss_c, logits_c = chunked.backward(ep)
    torch.testing.assert_close(loss_c, loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits_c, logits.detach(), rtol=1e-12, atol=1e-12)
    for p, g in zip(chunked.parameters(), g_full):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------- through the config and the CLI

MAML_DIGITS = """
name: maml_digits_tiny
dataset: digits
learner: maml
model: {backbone: maml_conv4, hidden: 8, pool: max}
maml: {inner_lr: 0.4, inner_steps: 1, eval_inner_steps: 2, learn_lr: true}
train: {ways: 5, shots: 1, queries: 2, batch_size: 2, steps: 3, lr: 0.001, val_every: 0, log_every: 1,
        checkpoint_every: 3}
eval: {ways: 5, shots: 1, queries: 3, episodes: 4, batch_size: 2, split: test}
"""


def test_maml_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    import json

    from metalearn.builders import build_learner
    from metalearn.cli import main
    from metalearn.config import ConfigError, load_config

    path = tmp_path / "maml.yaml"
    path.write_text(MAML_DIGITS)
    learner = build_learner(load_config(path), (1, 16, 16))
    assert isinstance(learner, MAML) and learner.ways == 5 and learner.eval_inner_steps == 2
    assert len(learner.step_sizes) == len(list(learner.model.parameters()))      # Meta-SGD step sizes
    with pytest.raises(ConfigError, match="eval.ways"):
        build_learner(load_config(path, ["eval.ways=3"]), (1, 16, 16))
    with pytest.raises(ConfigError, match="maml_conv4"):
        build_learner(load_config(path, ["model.backbone=conv4"]), (1, 16, 16))
    with pytest.raises(ConfigError, match="maml.adapt"):
        load_config(path, ["maml.adapt=body"])

    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(run), "--quiet"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["learner"] == "maml" and res["episodes"] == 4 and 0.0 <= res["accuracy"] <= 100.0
    assert main(["eval", "--checkpoint", str(run), "--json"]) == 0
    assert main(["eval", "--checkpoint", str(run), "--ways", "3"]) == 2          # the head has 5 outputs
    assert "5 outputs" in capsys.readouterr().err
