"""The fused BatchNorm -> 2x2 max-pool -> ReLU kernel (metalearn.kernels) against the eager modules."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from metalearn import kernels
from metalearn.engine import channels_last, fused_kernels
from metalearn.nn import Conv4
from metalearn.nn.conv4 import ConvBlock

CL = torch.channels_last


@pytest.fixture(scope="module")
def lib():
    lib = kernels.load()
    if lib is None:
        pytest.skip(f"the kernel could not be built here: {kernels.error()}")
    return lib


def _input(shape, dtype=torch.float32, seed=0, flat=True):
    """Random conv-like activations; with ``flat``, constant patches (an image's blank background) make ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2 + 0.5
    if flat:
        x[:, :, : shape[2] // 2, : shape[3] // 2] = 0.75
        x[0, :, -2:, -2:] = -1.25
    return x.to(dtype).contiguous(memory_format=CL)


def _tail(c, momentum=0.1, affine=True, track=True):
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(c, momentum=momentum, affine=affine, track_running_stats=track)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(-1.5, 1.5)        # negative scales: the pool picks the smallest input
            bn.bias.uniform_(-0.5, 0.5)
    return bn


def _both(x, bn, grad_seed=3):
    """(output, x grad, weight grad, bias grad, running mean, running var) eager and fused, same inputs."""
    res = []
    for fused in (False, True):
        b = copy.deepcopy(bn)
        xi = x.detach().clone().requires_grad_()
        if fused:
            y = kernels.bn_pool_relu(xi, b)
            assert y is not None
        else:
            y = torch.relu(nn.functional.max_pool2d(b(xi), 2))
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y.dtype)
        y.backward(g)
        res.append((y.detach(), xi.grad, None if b.weight is None else b.weight.grad,
                    None if b.bias is None else b.bias.grad, b.running_mean, b.running_var))
    return res


@pytest.mark.parametrize("shape", [(6, 8, 28, 28), (5, 16, 7, 7), (9, 4, 3, 3), (2, 64, 6, 10)])
def test_fp32_matches_the_eager_modules(lib, shape):
    """float32: output, gradients of x / weight / bias and the running statistics equal the eager
    BatchNorm -> MaxPool2d(2) -> ReLU (odd sizes drop the last row and column, as the pool does; ties in the
    constant patches go to the first maximum of the window, as max_pool2d sends them)."""
    x = _input(shape)
    (ye, gxe, gwe, gbe, rme, rve), (yf, gxf, gwf, gbf, rmf, rvf) = _both(x, _tail(shape[1]))
    assert yf.shape == ye.shape and yf.is_contiguous(memory_format=CL)
    torch.testing.assert_close(yf, ye, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gxf, gxe, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gwf, gwe, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gbf, gbe, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rmf, rme, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rvf, rve, rtol=1e-5, atol=1e-6)


def test_fp32_gradient_against_float64_eager(lib):
    """The fused float32 gradients are those of the float64 eager modules to float32 accuracy."""
    x = _input((4, 8, 12, 12), flat=False)
    bn = _tail(8)
    x64, bn64 = x.double().requires_grad_(), copy.deepcopy(bn).double()
    y64 = torch.relu(nn.functional.max_pool2d(bn64(x64), 2))
    g = torch.randn(y64.shape, generator=torch.Generator().manual_seed(4))
    y64.backward(g.double())
    b = copy.deepcopy(bn)
    xf = x.detach().clone().requires_grad_()
    kernels.bn_pool_relu(xf, b).backward(g.contiguous(memory_format=CL))
    torch.testing.assert_close(xf.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.weight.grad.double(), bn64.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.bias.grad.double(), bn64.bias.grad, rtol=1e-5, atol=1e-5)


def test_bf16_matches_the_eager_modules(lib):
    """bfloat16 activations (fp32 parameters, as under autocast): the same values up to one bf16 rounding, the
    same windows' maxima (so the gradient reaches the same inputs), statistics in float."""
    x = _input((6, 16, 14, 14), dtype=torch.bfloat16)
    (ye, gxe, gwe, gbe, rme, rve), (yf, gxf, gwf, gbf, rmf, rvf) = _both(x, _tail(16))
    assert yf.dtype == torch.bfloat16 and gxf.dtype == torch.bfloat16
    torch.testing.assert_close(yf.float(), ye.float(), rtol=8e-3, atol=8e-3)
    assert ((gxf != 0) == (gxe != 0)).float().mean() > 0.99
    torch.testing.assert_close(gxf.float(), gxe.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gwf, gwe, rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(gbf, gbe, rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(rmf, rme, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rvf, rve, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw", [{"momentum": None}, {"affine": False}, {"track": False}])
def test_batchnorm_options(lib, kw):
    """Cumulative running averages (momentum None), no affine parameters, no running statistics."""
    x = _input((4, 8, 8, 8))
    bn = _tail(8, **kw)
    for _ in range(2):                                 # two steps: the cumulative average divides by 2
        (ye, gxe, *_, rme, rve), (yf, gxf, *_, rmf, rvf) = _both(x, bn)
        torch.testing.assert_close(yf, ye, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gxf, gxe, rtol=1e-4, atol=1e-5)
        if bn.track_running_stats:
            torch.testing.assert_close(rmf, rme)
            torch.testing.assert_close(rvf, rve, rtol=1e-5, atol=1e-6)
        else:
            assert rmf is None and rme is None
        bn(x)                                          # move the module on, as a training step would
    if bn.track_running_stats:
        assert int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_gives_nan_as_the_eager_modules(lib, bad):
    """A NaN or infinite input makes its channel's output NaN, as the eager modules do; others are untouched."""
    x = _input((3, 4, 6, 6), flat=False)
    x[1, 2, 3, 3] = bad
    (ye, *_), (yf, *_) = _both(x, _tail(4))
    assert torch.isnan(ye[:, 2]).all() and torch.isnan(yf[:, 2]).all()
    torch.testing.assert_close(yf, ye, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_overflowing_statistics_give_nan(lib, dtype):
    """A channel whose variance overflows float32 (a diverging run's activations) is NaN, so that the loss is
    NaN and the trainer stops the run, rather than normalised by infinity into a constant (which the eager
    float32 kernel does); the other channels are those of the eager modules."""
    x = _input((3, 4, 6, 6), flat=False).to(dtype)
    x[1, 2, 3, 3] = 3e30
    (ye, gxe, *_), (yf, gxf, *_) = _both(x, _tail(4))
    assert torch.isnan(yf[:, 2]).all() and torch.isnan(gxf).any()
    keep = [0, 1, 3]
    torch.testing.assert_close(yf[:, keep].float(), ye[:, keep].float(), rtol=1e-2, atol=1e-2)


def test_inputs_not_mutated(lib):
    x = _input((3, 8, 6, 6))
    bn = _tail(8)
    before = x.clone()
    kernels.bn_pool_relu(x.requires_grad_(), bn).sum().backward()
    assert torch.equal(x.detach(), before)


def test_where_the_kernel_does_not_apply_the_modules_run(lib, monkeypatch):
    """NCHW strides, float64, a module in eval mode, METALEARN_KERNELS=off: no kernel, the same numbers."""
    bn = _tail(8)
    x = _input((3, 8, 6, 6))
    assert kernels.bn_pool_relu(x.contiguous(), bn) is None                  # NCHW
    assert kernels.bn_pool_relu(x.double(), bn) is None
    assert not kernels.fusable_tail(copy.deepcopy(bn).eval(), nn.MaxPool2d(2), nn.ReLU())
    assert not kernels.fusable_tail(bn, nn.MaxPool2d(3), nn.ReLU())
    assert not kernels.fusable_tail(bn, nn.MaxPool2d(2, ceil_mode=True), nn.ReLU())
    assert kernels.fusable_tail(bn, nn.MaxPool2d((2, 2), stride=2), nn.ReLU())
    monkeypatch.setenv("METALEARN_KERNELS", "off")
    assert kernels.bn_pool_relu(x, bn) is None


def test_a_build_failure_warns_once_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as ext

    def broken(*a, **k):
        raise RuntimeError("Ninja is required to load C++ extensions")
    monkeypatch.setattr(ext, "load", broken)
    monkeypatch.setattr(kernels, "_state", {"tried": False, "lib": None, "error": None})
    monkeypatch.setattr(kernels.sys, "platform", "linux")
    with pytest.warns(RuntimeWarning, match="Ninja is required"):
        assert kernels.load() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.load() is None                                         # said once
    block = fused_kernels(channels_last(Conv4(1, hidden=8))).encoder[0]
    x = torch.rand(4, 1, 8, 8)
    assert block.fused and block.training
    ref = copy.deepcopy(block)
    ref.fused = False
    torch.testing.assert_close(block(x), ref(x))


def test_conv4_training_step_same_with_and_without(lib):
    """A Conv4 training forward/backward with the kernel gives the eager loss, gradients and running stats."""
    torch.manual_seed(0)
    net = channels_last(Conv4(1, hidden=16))
    fused = fused_kernels(copy.deepcopy(net))
    assert all(isinstance(b, ConvBlock) and b.fused for b in fused.encoder)
    assert not any(b.fused for b in fused_kernels(copy.deepcopy(fused), enable=False).encoder)
    x = torch.rand(2, 10, 1, 28, 28)
    for model in (net, fused):
        model.zero_grad()
        model(x).pow(2).sum().backward()
    torch.testing.assert_close(fused(x).detach(), net(x).detach(), rtol=1e-4, atol=1e-5)
    scale = max(float(p.grad.abs().max()) for p in net.parameters())
    for (n, p), q in zip(net.named_parameters(), fused.parameters()):
        # float32 summation order only (the conv biases' gradients, zero in exact arithmetic under BatchNorm,
        # are that rounding noise): within 2e-5 of the largest gradient
        assert float((q.grad - p.grad).abs().max()) <= 2e-5 * scale, n
    for b, c in zip(net.buffers(), fused.buffers()):
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6)
    net.eval()
    fused.load_state_dict(net.state_dict())
    fused.eval()                                   # eval: the modules, identical
    assert torch.equal(fused(x), net(x))
    assert net.state_dict().keys() == fused.state_dict().keys()


def test_bf16_autocast_step_keeps_fp32_parameters(lib):
    net = fused_kernels(channels_last(Conv4(1, hidden=8)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = net(torch.rand(12, 1, 28, 28))
    assert z.dtype == torch.bfloat16
    z.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_a_lock_left_by_a_killed_build_is_cleared(tmp_path, monkeypatch):
    """A build interrupted mid-way leaves torch's lock file; the next load removes it once it is stale (torch
    would wait for it forever) and leaves a fresh one (another process building now) alone."""
    import os
    import time

    import torch.utils.cpp_extension as ext
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    seen = []

    def fake_load(name, **kw):
        seen.append((tmp_path / name / "lock").exists())
        return "lib"
    monkeypatch.setattr(ext, "load", fake_load)
    monkeypatch.setattr(kernels.sys, "platform", "linux")
    name = f"metalearn_bn_pool_relu_{kernels._fingerprint()}"
    (tmp_path / name).mkdir()
    lock = tmp_path / name / "lock"
    for age, kept in ((2 * kernels.STALE_LOCK_S, False), (5.0, True)):
        lock.touch()
        t = time.time() - age
        os.utime(lock, (t, t))
        monkeypatch.setattr(kernels, "_state", {"tried": False, "lib": None, "error": None})
        assert kernels.load() == "lib"
        assert seen[-1] is kept
