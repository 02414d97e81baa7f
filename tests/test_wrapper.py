"""The wrapper for users' own modules: same gradients as the functional core; agrees with `higher`."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.inner import meta_sgd, sgd
from metalearn.learners.maml import task_loss
from metalearn.wrapper import Adaptable

D64 = torch.float64


class ConvBNLSTM(nn.Module):
    """A user's model: conv -> BatchNorm -> ReLU, rows read by an LSTM, GroupNorm/LayerNorm, linear head."""

    def __init__(self, ways: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.lstm = nn.LSTM(input_size=4 * 6, hidden_size=5, batch_first=True)
        self.ln = nn.LayerNorm(5)
        self.head = nn.Linear(5, ways)

    def forward(self, x):
        z = self.gn(F.relu(self.bn(self.conv(x))))             # (N, 4, 6, 6)
        seq = z.permute(0, 2, 1, 3).reshape(x.shape[0], 6, 24)  # rows as a sequence
        out, _ = self.lstm(seq)
        return self.head(self.ln(out[:, -1]))


def data(seed=0, n=6, ways=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways).repeat(n // ways)
    return (torch.randn(n, 1, 6, 6, generator=g, dtype=D64), y,
            torch.randn(n, 1, 6, 6, generator=g, dtype=D64), y)


@pytest.mark.parametrize("kw", [dict(), dict(learn_lr=True), dict(adapt="head"), dict(first_order=True)])
def test_wrapper_gives_the_functional_cores_gradients_with_batchnorm_and_lstm(kw):
    torch.manual_seed(0)
    model = ConvBNLSTM().double()
    sx, sy, qx, qy = data()
    steps, lr = 2, 0.3
    maml = Adaptable(model, lr, **kw)
    task = maml.clone()
    for _ in range(steps):
        task.adapt(F.cross_entropy(task(sx), sy))
    q_wrap = F.cross_entropy(task(qx), qy)
    g_wrap = torch.autograd.grad(q_wrap, list(maml.parameters()))

    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    rule = meta_sgd(lr) if kw.get("learn_lr") else sgd(lr)
    hyper = dict(zip(maml.names, maml.step_sizes)) if kw.get("learn_lr") else {}
    q_core, _, _ = task_loss(model, params, buffers, hyper, maml.names, sx, sy, qx, qy, steps=steps, rule=rule,
                             first_order=kw.get("first_order", False))
    g_core = torch.autograd.grad(q_core, list(maml.parameters()))
    torch.testing.assert_close(q_wrap, q_core, rtol=1e-12, atol=1e-12)
    assert len(g_wrap) == len(list(model.parameters())) + len(maml.step_sizes)
    for a, b in zip(g_wrap, g_core):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert any(g.abs().max() > 0 for g in g_wrap[:3])  # the conv/BN body gets a meta-gradient in every mode


def test_wrapper_leaves_the_module_alone_and_trains_it():
    torch.manual_seed(0)
    model = ConvBNLSTM().double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    maml = Adaptable(model, 0.3)
    sx, sy, qx, qy = data()
    task = maml.clone()
    task.adapt(F.cross_entropy(task(sx), sy)).adapt(F.cross_entropy(task(sx), sy))
    assert task.steps == 2
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])          # adapting never touches the module
        assert task.params[n] is not p
    F.cross_entropy(task(qx), qy).backward()
    assert all(p.grad is not None for p in model.parameters())
    # a fresh clone starts again from the module's own parameters
    assert all(t is p for t, p in zip(maml.clone().params.values(), model.parameters()))


def test_wrapper_bad_input():
    model = ConvBNLSTM().double()
    with pytest.raises(ValueError, match="selects no parameters"):
        Adaptable(model, 0.1, adapt="decoder")
    model.head.bias.requires_grad_(False)
    with pytest.raises(ValueError, match="do not require grad"):
        Adaptable(model, 0.1, adapt="head")
    model.head.bias.requires_grad_(True)
    maml = Adaptable(model, 0.1)
    sx, sy, _, _ = data()
    task = maml.clone()
    with pytest.raises(FloatingPointError, match="inner step 0"):
        task.adapt(F.cross_entropy(task(sx), sy) * float("nan"))
    with pytest.raises(ValueError, match="scalar"):
        task.adapt(F.cross_entropy(task(sx), sy, reduction="none"))
    with torch.no_grad():
        loss = F.cross_entropy(task(sx), sy)
    with pytest.raises(ValueError, match="does not require grad"):
        task.adapt(loss)
    # a parameter the loss does not use: an error unless allow_unused
    extra = nn.ModuleDict({"net": ConvBNLSTM().double(), "unused": nn.Linear(2, 2).double()})
    wrapped = Adaptable(extra, 0.1)
    t = wrapped.clone()
    with pytest.raises(RuntimeError, match="allow_unused"):
        t.adapt(F.cross_entropy(t.owner.module["net"](sx) * 0 + t.params["net.head.bias"].sum(), sy))
    ok = Adaptable(extra, 0.1, allow_unused=True, adapt="unused")
    t = ok.clone()
    t.adapt((t.params["unused.weight"] ** 2).sum())
    assert torch.equal(t.params["unused.bias"], extra["unused"].bias)


def test_meta_gradients_agree_with_higher():
    higher = pytest.importorskip("higher", reason="the peer cross-check needs the optional extra: "
                                                  "pip install 'torch-metalearn[peers]'")
    torch.manual_seed(0)
    model = ConvBNLSTM().double()
    sx, sy, qx, qy = data(seed=3)
    steps, lr = 3, 0.2
    maml = Adaptable(model, lr)
    task = maml.clone()
    for _ in range(steps):
        task.adapt(F.cross_entropy(task(sx), sy))
    ours = torch.autograd.grad(F.cross_entropy(task(qx), qy), list(model.parameters()))

    inner_opt = torch.optim.SGD(model.parameters(), lr=lr)
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(steps):
            diffopt.step(F.cross_entropy(fmodel(sx), sy))
        theirs = torch.autograd.grad(F.cross_entropy(fmodel(qx), qy), list(model.parameters()))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
