"""Every learner's train step, evaluation and test-time training on CUDA (``make test-gpu``, ``pytest -m gpu``).

Each test runs the same computation on the CPU and on the GPU from the same seeds and compares them: a train
step's loss, gradients and updated weights, an evaluation's accuracy over the same episodes, and TTT / Tent /
norm adaptation's logits. Without CUDA every test is skipped with the reason. ``METALEARN_TEST_DEVICE=cpu``
runs the same tests with the CPU on both sides (a check of the tests themselves on a machine without a GPU).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from metalearn.data.bundled import load_bundled
from metalearn.episodes import EpisodeSampler
from metalearn.learners.maml import MAML
from metalearn.learners.matchnet import MatchingNet
from metalearn.learners.protonet import ProtoNet
from metalearn.learners.siamese import Siamese
from metalearn.nn import Conv4, MamlConv4
from metalearn.nn.resnet_cifar import ResNetCIFAR
from metalearn.optim import LSTMOptimizer, MetaTrainConfig, QuadraticFamily, meta_train
from metalearn.train.evaluator import evaluate
from metalearn.ttt import joint_loss, norm_adapt, tent, ttt, ttt_loop, ttt_online
from metalearn.wrapper import Adaptable

DEVICE = os.environ.get("METALEARN_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 matmuls/convolutions would make the GPU side differ from the CPU by ~1e-3; compare in full fp32."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def omniglot():
    """The bundled Omniglot (no data root needed): background alphabets to train, evaluation ones to test."""
    return load_bundled("background", rotations=(0, 90, 180, 270)), load_bundled("evaluation")


def _learners():
    return {
        "protonet": lambda: ProtoNet(Conv4(in_channels=1, hidden=32)),
        "matchnet": lambda: MatchingNet(Conv4(in_channels=1, hidden=32)),
        "matchnet_fce": lambda: MatchingNet(Conv4(in_channels=1, hidden=32), embed_dim=32, fce=True,
                                            process_steps=3),
        "siamese": lambda: Siamese(Conv4(in_channels=1, hidden=32), dim=32, fill=1.0, seed=0),
        "maml": lambda: MAML(MamlConv4(1, ways=5, hidden=32, pool="stride"), ways=5, inner_lr=0.4,
                             eval_inner_steps=2),
        "fomaml_loop": lambda: MAML(MamlConv4(1, ways=5, hidden=32, pool="stride"), ways=5, inner_lr=0.4,
                                    first_order=True, vmap=False),
        "metasgd": lambda: MAML(MamlConv4(1, ways=5, hidden=32, pool="stride"), ways=5, inner_lr=0.4,
                                learn_lr=True),
        "anil": lambda: MAML(MamlConv4(1, ways=5, hidden=32, pool="stride"), ways=5, inner_lr=0.4, adapt="head"),
    }


def _train_steps(make, data, device: str, steps: int = 2, precision: str = "fp32"):
    """``steps`` Adam steps of a freshly seeded learner on seeded 5-way 1-shot episodes on ``device``."""
    torch.manual_seed(0)
    learner = make().to(device)
    learner.precision = precision
    learner.train()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    sampler = EpisodeSampler(data.to(device), ways=5, shots=1, queries=3, batch_size=4, seed=0)
    losses = []
    for _ in range(steps):
        ep = sampler.sample()
        opt.zero_grad()
        loss, logits = learner.backward(ep)
        assert logits.device.type == torch.device(device).type
        grads = {n: p.grad.detach().cpu() for n, p in learner.named_parameters() if p.grad is not None}
        opt.step()
        losses.append(float(loss))
    weights = {n: p.detach().cpu() for n, p in learner.named_parameters()}
    return learner, losses, grads, weights


@pytest.mark.parametrize("name", list(_learners()))
def test_train_step_on_the_device_matches_the_cpu(omniglot, name):
    make, (train_split, _) = _learners()[name], omniglot
    _, cpu_losses, cpu_grads, cpu_w = _train_steps(make, train_split, "cpu")
    learner, dev_losses, dev_grads, dev_w = _train_steps(make, train_split, DEVICE)
    assert all(p.device.type == torch.device(DEVICE).type for p in learner.parameters())
    assert all(torch.isfinite(torch.tensor(dev_losses))), dev_losses
    torch.testing.assert_close(torch.tensor(dev_losses), torch.tensor(cpu_losses), rtol=1e-3, atol=1e-4)
    assert dev_grads.keys() == cpu_grads.keys() and dev_grads
    for n in cpu_grads:
        assert torch.isfinite(dev_grads[n]).all(), n
        torch.testing.assert_close(dev_grads[n], cpu_grads[n], rtol=2e-2, atol=1e-4, msg=f"{name}: grad {n}")
    for n in cpu_w:
        torch.testing.assert_close(dev_w[n], cpu_w[n], rtol=1e-3, atol=1e-4, msg=f"{name}: weight {n}")


@pytest.mark.parametrize("name", ["protonet", "matchnet", "siamese"])
def test_bf16_train_step_on_the_device(omniglot, name):
    """The metric learners' bf16 encoder (``precision: auto`` picks it on a bf16 GPU): finite, close to fp32."""
    if DEVICE.startswith("cuda") and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    make, (train_split, _) = _learners()[name], omniglot
    _, fp32, _, _ = _train_steps(make, train_split, DEVICE, steps=1)
    _, bf16, grads, _ = _train_steps(make, train_split, DEVICE, steps=1, precision="bf16")
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert abs(bf16[0] - fp32[0]) < 0.05 * abs(fp32[0]) + 0.05, (bf16, fp32)


@pytest.mark.parametrize("name", ["protonet", "matchnet_fce", "siamese", "maml"])
def test_evaluation_on_the_device_matches_the_cpu(omniglot, name):
    """The evaluator on the same seeded test episodes: the same per-episode accuracies on both devices."""
    make, (train_split, test_split) = _learners()[name], omniglot
    learner, _, _, _ = _train_steps(make, train_split, "cpu", steps=3)
    results = {}
    for device in ("cpu", DEVICE):
        sampler = EpisodeSampler(test_split.to(device), ways=5, shots=1, queries=5, batch_size=5, seed=1234)
        results[device] = evaluate(learner.to(device), sampler, episodes=20, precision="fp32")
    cpu, dev = results["cpu"], results[DEVICE]
    assert dev.episodes == 20 and 0.0 <= dev.accuracy <= 100.0
    assert abs(dev.accuracy - cpu.accuracy) <= 2.0, (cpu, dev)      # a query or two may flip on a near tie


def test_adaptable_wrapper_on_the_device():
    """MAML around a plain module with the wrapper: the meta-gradient on the device equals the CPU's."""
    grads = {}
    for device in ("cpu", DEVICE):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).to(device)
        x = torch.randn(12, 8, generator=torch.Generator().manual_seed(1)).to(device)
        y = torch.arange(12).remainder(3).to(device)
        maml = Adaptable(model, lr=0.1)
        task = maml.clone()
        task.adapt(F.cross_entropy(task(x[:6]), y[:6])).adapt(F.cross_entropy(task(x[:6]), y[:6]))
        F.cross_entropy(task(x[6:]), y[6:]).backward()
        grads[device] = {n: p.grad.cpu() for n, p in model.named_parameters()}
    for n in grads["cpu"]:
        torch.testing.assert_close(grads[DEVICE][n], grads["cpu"][n], rtol=1e-3, atol=1e-5)


def _resnet(norm="gn", rotation_head=True):
    torch.manual_seed(0)
    return ResNetCIFAR(8, classes=10, norm=norm, rotation_head=rotation_head)


def _cifar_like(n=6, seed=1):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_ttt_joint_training_step_on_the_device():
    out = {}
    for device in ("cpu", DEVICE):
        model = _resnet().to(device)
        x = _cifar_like(8).to(device).float() / 255
        y = torch.arange(8).remainder(10).to(device)
        loss, metrics = joint_loss(model, x, y)
        loss.backward()
        out[device] = float(loss.detach()), {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
    assert torch.isfinite(torch.tensor(out[DEVICE][0]))
    assert abs(out[DEVICE][0] - out["cpu"][0]) < 1e-3 * abs(out["cpu"][0]) + 1e-4
    for n, g in out["cpu"][1].items():
        torch.testing.assert_close(out[DEVICE][1][n], g, rtol=2e-2, atol=1e-4, msg=n)


def test_ttt_batched_loop_and_online_on_the_device():
    """Standard TTT vmapped over images equals the per-image loop on the device, and both equal the CPU's."""
    kw = dict(steps=2, lr=0.01, copies=4, seed=3)
    x = _cifar_like(4)
    cpu = ttt(_resnet(), x, chunk_size=2, **kw)
    model = _resnet().to(DEVICE)
    batched = ttt(model, x.to(DEVICE), chunk_size=2, **kw)
    loop = ttt_loop(model, x.to(DEVICE), **kw)
    assert batched.logits.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(batched.logits, loop.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batched.logits.cpu(), cpu.logits, rtol=1e-3, atol=1e-3)
    online_cpu = ttt_online(_resnet(), x, **kw)
    online = ttt_online(model, x.to(DEVICE), **kw)
    torch.testing.assert_close(online.logits.cpu(), online_cpu.logits, rtol=1e-3, atol=1e-3)


def test_tent_and_norm_adapt_on_the_device():
    x = _cifar_like(8)
    model_cpu = _resnet("bn", rotation_head=False)
    model = _resnet("bn", rotation_head=False).to(DEVICE)
    torch.testing.assert_close(norm_adapt(model, x.to(DEVICE), batch_size=4).cpu(),
                               norm_adapt(model_cpu, x, batch_size=4), rtol=1e-3, atol=1e-3)
    dev, cpu = tent(model, x.to(DEVICE), lr=1e-3, batch_size=4), tent(model_cpu, x, lr=1e-3, batch_size=4)
    assert dev.logits.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(dev.logits.cpu(), cpu.logits, rtol=1e-3, atol=1e-3)


def test_lstm_optimizer_meta_training_on_the_device():
    torch.manual_seed(0)
    net = LSTMOptimizer().to(DEVICE)
    cfg = MetaTrainConfig(steps=20, unroll=10, optimisees=4, iterations=3, val_every=3, val_optimisees=4)
    res = meta_train(net, QuadraticFamily(dim=10, device=DEVICE), cfg, log=None)
    assert res.iterations_done == 3 and res.skipped_unrolls == 0
    assert all(p.device.type == torch.device(DEVICE).type and torch.isfinite(p).all() for p in net.parameters())
