import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.learners.protonet import ProtoNet, prototypes, protonet_logits, squared_euclidean
from metalearn.nn import Conv4
from metalearn.types import Episode


def test_prototypes_and_logits_by_hand():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    c = prototypes(z, y, 2)
    assert torch.equal(c, torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    q = torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    logits = protonet_logits(z, y, q, 2)
    # ||(1,1)-(1,0)||^2 = 1, ||(1,1)-(0,4)||^2 = 1+9 = 10; ||(0,3)-(1,0)||^2 = 10, ||(0,3)-(0,4)||^2 = 1
    assert torch.equal(logits, -torch.tensor([[1.0, 10.0], [10.0, 1.0]], dtype=torch.float64))
    # the loss is the cross-entropy of those logits: log(1 + e^-9) for both queries
    loss = F.cross_entropy(logits, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(torch.log1p(torch.exp(torch.tensor(-9.0, dtype=torch.float64))).item())


def test_squared_euclidean_matches_broadcast_and_batches():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 7, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    ref = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
    assert torch.allclose(squared_euclidean(a, b), ref, atol=1e-12)


def test_missing_support_class_is_an_error():
    with pytest.raises(ValueError, match="class 2 has no support example"):
        prototypes(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]), 3)


class Identity(nn.Module):
    def forward(self, x):
        return x.flatten(-3)


def test_learner_loss_with_identity_encoder_and_batch_equals_loop():
    g = torch.Generator().manual_seed(1)
    sx, qx = torch.rand(2, 6, 1, 2, 2, generator=g), torch.rand(2, 9, 1, 2, 2, generator=g)
    sy = torch.tensor([0, 1, 2] * 2).expand(2, 6)
    qy = torch.tensor([0, 1, 2] * 3).expand(2, 9)
    ep = Episode(sx, sy, qx, qy, 3)
    learner = ProtoNet(Identity())
    loss, logits = learner.loss(ep)
    per_task = [learner.loss(ep[i])[1] for i in range(2)]
    assert torch.allclose(logits, torch.stack(per_task), atol=1e-6)
    ref = -((qx.flatten(-3)[:, :, None] - prototypes(sx.flatten(-3), sy, 3)[:, None]) ** 2).sum(-1)
    assert torch.allclose(logits, ref, atol=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(ref.reshape(-1, 3), qy.reshape(-1)).item(), rel=1e-5)


def test_conv4_shapes_and_every_parameter_gets_a_gradient():
    net = Conv4(in_channels=1)
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 64)
    assert Conv4(in_channels=3)(torch.zeros(2, 3, 84, 84)).shape == (2, 1600)
    learner = ProtoNet(net)
    ep = Episode(torch.rand(5, 1, 28, 28), torch.arange(5), torch.rand(10, 1, 28, 28), torch.arange(5).repeat(2), 5)
    before = ep.support_x.clone()
    loss, _ = learner.loss(ep)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in learner.parameters())
    assert torch.equal(ep.support_x, before)  # inputs not mutated
    with pytest.raises(ValueError, match="x: expected"):
        net(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="image shapes differ"):
        learner.loss(Episode(torch.rand(5, 1, 28, 28), torch.arange(5), torch.rand(5, 1, 20, 20), torch.arange(5), 5))
