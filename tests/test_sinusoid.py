"""Sinusoid regression tasks and MAML on non-image (regression) meta-batches."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.data.sinusoid import SinusoidTasks
from metalearn.learners.maml import MAML
from metalearn.types import Episode


def test_tasks_are_sinusoids_in_range_and_seeded():
    ep = SinusoidTasks(shots=5, queries=7, batch_size=50, seed=3).sample()
    assert ep.batched and ep.support_x.shape == (50, 5, 1) and ep.query_y.shape == (50, 7, 1)
    x = torch.cat([ep.support_x, ep.query_x], 1)
    y = torch.cat([ep.support_y, ep.query_y], 1)
    assert x.min() >= -5 and x.max() <= 5 and y.abs().max() <= 5.0
    # y = A sin(x - phi): recover A and phi by least squares on sin/cos features, then check every point
    feats = torch.cat([torch.sin(x), torch.cos(x)], -1).double()                 # y = A cos(phi) sin x - A sin(phi) cos x
    coef = torch.linalg.lstsq(feats, y.double()).solution                        # (B, 2, 1)
    amp = coef.norm(dim=1).squeeze(-1)
    phi = torch.atan2(-coef[:, 1, 0], coef[:, 0, 0])
    assert torch.allclose(feats @ coef, y.double(), atol=1e-5)
    assert amp.min() >= 0.1 - 1e-5 and amp.max() <= 5.0 + 1e-5
    assert phi.min() >= -1e-5 and phi.max() <= math.pi + 1e-5
    again = SinusoidTasks(shots=5, queries=7, batch_size=50, seed=3).sample()
    assert torch.equal(again.support_x, ep.support_x) and torch.equal(again.query_y, ep.query_y)


def test_sampler_state_round_trip():
    a = SinusoidTasks(5, 5, 4, seed=0)
    a.sample()
    state = a.state_dict()
    first = a.sample()
    b = SinusoidTasks(5, 5, 4, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.sample().support_x, first.support_x)


@pytest.mark.parametrize("bad", [dict(shots=0, queries=1), dict(shots=1.5, queries=1), dict(shots=2, queries="3")])
def test_bad_arguments_name_the_argument(bad):
    with pytest.raises(ValueError, match="shots|queries"):
        SinusoidTasks(**bad)


def test_episode_batch_flag():
    x = torch.zeros(3, 4, 2)
    ep = Episode(x, x[..., :1], x, x[..., :1], ways=1, batch=True)
    assert ep.batched and len(ep) == 3
    assert not ep[0].batched and ep[0].support_x.shape == (4, 2)
    assert ep[1:].batched and len(ep[1:]) == 2
    with pytest.raises(ValueError, match="first \\(task\\) dimension"):
        Episode(x, x[:2, :, :1], x, x[..., :1], ways=1, batch=True)
    # images keep inferring: 5-d support_x is a batch
    img = torch.zeros(2, 5, 1, 28, 28)
    assert Episode(img, torch.zeros(2, 5), img, torch.zeros(2, 5), 5).batched


@pytest.mark.parametrize("learn_lr,first_order", [(False, False), (True, False), (False, True)])
def test_regression_meta_batch_vmap_equals_loop(learn_lr, first_order):
    """MAML / Meta-SGD / FOMAML on a (B, n, d) regression meta-batch: vmap meta-gradient = loop (float64)."""
    ep = SinusoidTasks(5, 5, batch_size=4, seed=0, dtype=torch.float64).sample()
    grads = {}
    for vmap in (True, False):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)).double()
        learner = MAML(net, ways=1, inner_lr=0.01, learn_lr=learn_lr, first_order=first_order, vmap=vmap,
                       loss_fn=F.mse_loss)
        loss, pred = learner.loss(ep)
        assert pred.shape == (4, 5, 1)
        loss.backward()
        grads[vmap] = [p.grad.clone() for p in learner.parameters()]
    for a, b in zip(grads[True], grads[False]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_regression_one_step_closed_form():
    """Linear model y = w x, one inner step: the adapted w and the MAML meta-gradient by hand."""
    x = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    y = torch.tensor([[[3.0], [5.0]]], dtype=torch.float64)
    qx = torch.tensor([[[1.5]]], dtype=torch.float64)
    qy = torch.tensor([[[2.0]]], dtype=torch.float64)
    net = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        net.weight.fill_(0.5)
    lr = 0.1
    learner = MAML(net, ways=1, inner_lr=lr, loss_fn=F.mse_loss)
    loss, _ = learner.loss(Episode(x, y, qx, qy, ways=1, batch=True))
    loss.backward()
    w = 0.5
    # support loss L_s = mean((w x - y)^2); dL_s/dw = mean(2 x (w x - y)); d2L_s/dw2 = mean(2 x^2)
    g = (2 * x * (w * x - y)).mean().item()
    h = (2 * x * x).mean().item()
    w1 = w - lr * g
    q = qx.item()
    expect_loss = (w1 * q - qy.item()) ** 2
    expect_grad = 2 * q * (w1 * q - qy.item()) * (1 - lr * h)
    assert loss.item() == pytest.approx(expect_loss, rel=1e-12)
    assert net.weight.grad.item() == pytest.approx(expect_grad, rel=1e-12)
