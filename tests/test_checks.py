"""Argument checks at the public API boundary (metalearn.checks): the helpers themselves and the entry points
that use them, each bad argument named in the message; plus the rotation and dtype fixes found with them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from metalearn import MAML, Adaptable, ClassImages, EpisodeSampler, LSTMOptimizer, adapt, meta_sgd, sgd
from metalearn.checks import ArgumentError, check_bool, check_device, check_float, check_int
from metalearn.nn import MamlConv4


def test_helpers():
    assert check_int("n", 3) == 3 and check_int("n", np.int64(4), 0) == 4 and check_int("n", torch.tensor(5)) == 5
    for bad in (1.5, 2.0, "3", True, None, torch.tensor(1.0)):
        with pytest.raises(ArgumentError, match="n: expected an integer"):
            check_int("n", bad)
    with pytest.raises(ArgumentError, match=r"n: expected an integer >= 1, got 0"):
        check_int("n", 0, 1)
    with pytest.raises(ArgumentError, match=r"n: expected an integer in \[1, 3\], got 4"):
        check_int("n", 4, 1, 3)
    assert check_float("x", 1) == 1.0 and check_float("x", np.float32(0.5)) == 0.5
    for bad, why in (("0.1", "expected a number"), (True, "expected a number"), (math.nan, "finite"),
                     (math.inf, "finite"), (0.0, "> 0"), (-1, "> 0")):
        with pytest.raises(ArgumentError, match=f"x: .*{why}"):
            check_float("x", bad, 0.0, strict=True)
    assert check_float("x", math.inf, finite=False) == math.inf
    assert check_bool("b", np.bool_(True)) is True
    with pytest.raises(ArgumentError, match="b: expected True or False"):
        check_bool("b", 1)
    # both a ValueError and a TypeError
    assert issubclass(ArgumentError, ValueError) and issubclass(ArgumentError, TypeError)


def test_device():
    assert check_device("d", "cpu") == torch.device("cpu")
    assert check_device("d", "auto").type in ("cpu", "cuda")
    for bad in ("tpu", "cuda:x", "gpu", "cpu:1", 3, ""):
        with pytest.raises(ArgumentError, match="d: expected auto, cpu, cuda or cuda:N"):
            check_device("d", bad)
    if not torch.cuda.is_available():
        with pytest.raises(ArgumentError, match="CUDA is not available"):
            check_device("d", "cuda:0")
    else:
        with pytest.raises(ArgumentError, match="GPU"):
            check_device("d", f"cuda:{torch.cuda.device_count()}")


def _split(rotations=(0,), classes=6, per_class=4, size=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (classes * per_class, 1, size, size), dtype=torch.uint8, generator=g)
    return ClassImages.from_labels(x, torch.arange(classes).repeat_interleave(per_class), rotations=rotations)


@pytest.mark.parametrize("kwargs,words", [
    ({"seed": "abc"}, "seed: expected an integer"), ({"seed": 1.5}, "seed: expected an integer, got 1.5"),
    ({"scale": "x"}, "scale: expected a number"), ({"scale": 0}, "scale: expected a number > 0"),
    ({"ways": 2.0}, "ways: expected an integer"), ({"shots": "1"}, "shots: expected an integer"),
    ({"queries": -1}, "queries: expected an integer >= 0"), ({"batch_size": 0}, "batch_size: expected an integer"),
])
def test_episode_sampler_arguments(kwargs, words):
    args = {"ways": 3, "shots": 1, "queries": 2, **kwargs}
    with pytest.raises(ArgumentError, match=words):
        EpisodeSampler(_split(), **args)


@pytest.mark.parametrize("rotations", [(90,), (180,), (270,), (0, 90)])
def test_every_configured_angle_is_applied(rotations):
    data = _split(rotations=rotations)
    sampler = EpisodeSampler(data, ways=data.num_classes, shots=1, queries=3, seed=0)
    rows, rot_k = sampler.sample_indices()
    x = sampler.gather(rows, rot_k)                                  # (1, N, S, C, H, W)
    for n in range(x.shape[1]):
        raw = data.images[rows[0, n]]
        want = torch.rot90(raw, int(rot_k[0, n]), dims=(-2, -1))
        assert torch.equal(x[0, n], want)
        if int(rot_k[0, n]):
            assert not torch.equal(x[0, n], raw)
    if rotations == (90,):
        assert data.class_name(0).endswith("@rot90") and bool((rot_k == 1).all())


def _maml_model():
    return MamlConv4(1, ways=2, hidden=4, pool="stride", image_size=8)


@pytest.mark.parametrize("kwargs,words", [
    ({"ways": "2"}, "ways: expected an integer, got '2'"), ({"inner_steps": 1.5}, "inner_steps: expected an integer"),
    ({"eval_inner_steps": 0}, "eval_inner_steps: expected an integer >= 1"),
    ({"chunk_size": -1}, "chunk_size: expected an integer >= 0"), ({"inner_lr": "0.1"}, "lr: expected a number"),
    ({"inner_lr": math.nan}, "lr: expected a finite number"),
])
def test_maml_arguments(kwargs, words):
    args = {"ways": 2, **kwargs}
    with pytest.raises(ArgumentError, match=words):
        MAML(_maml_model(), **args)


def test_inner_loop_arguments():
    w = torch.randn(3, requires_grad=True)

    def loss(p):
        return (p["w"] ** 2).sum()
    with pytest.raises(ArgumentError, match="steps: expected an integer, got 1.5"):
        adapt(loss, {"w": w}, 1.5, sgd(0.1))
    with pytest.raises(ArgumentError, match="params: expected a dict of tensors"):
        adapt(loss, [w], 1, sgd(0.1))
    for bad in ("0.1", -1.0, math.inf):
        with pytest.raises(ArgumentError, match="lr: expected"):
            sgd(bad)
        with pytest.raises(ArgumentError, match="lr: expected"):
            meta_sgd(bad)
    rule = meta_sgd(0.1)
    with pytest.raises(ArgumentError, match=r"hyper: no learned step size for parameter\(s\) \['w'\]"):
        adapt(loss, {"w": w}, 1, rule, hyper={"v": torch.ones(3)})
    new, _ = adapt(loss, {"w": w}, 1, rule, hyper=rule.init({"w": w}))
    assert torch.allclose(new["w"], w - 0.1 * 2 * w)


def test_adaptable_arguments():
    for bad, words in (("0.1", "lr: expected a number, got '0.1'"), (0, "lr: expected a number > 0")):
        with pytest.raises(ArgumentError, match=words):
            Adaptable(nn.Linear(2, 2), lr=bad)
        with pytest.raises(ArgumentError, match=words):
            Adaptable(nn.Linear(2, 2), lr=bad, learn_lr=True)


def test_lstm_optimizer_load_keeps_the_saved_dtype(tmp_path):
    net = LSTMOptimizer(hidden_size=4, num_layers=1).double()
    net.save(tmp_path / "opt.pt")
    back = LSTMOptimizer.load(tmp_path / "opt.pt")
    assert all(p.dtype == torch.float64 for p in back.parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
    net32 = LSTMOptimizer(hidden_size=4, num_layers=1)
    net32.save(tmp_path / "opt32.pt")
    assert all(p.dtype == torch.float32 for p in LSTMOptimizer.load(tmp_path / "opt32.pt").parameters())
