"""Dataset distillation: the hypergradient through the inner steps against finite differences (float64), the
distilled images and step sizes get gradients, inputs are not mutated, resume equals an uninterrupted run,
the baselines and the command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from metalearn.cli import main
from metalearn.config import ConfigError
from metalearn.distill import LeNet, distill, distill_loss, distilled_labels, init_params, step_lrs, train_on_distilled
from metalearn.distill.config import DistillConfig, load_distill_config
from metalearn.distill.core import inverse_softplus
from metalearn.distill.run import baselines, load_data
from metalearn.functional import params_and_buffers
from metalearn.train.checkpoint import load_checkpoint


def _tiny(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 6, 1, 4, 4, generator=g, dtype=dtype)           # 2 batches of 2 images x 3 classes
    raw = inverse_softplus(torch.tensor([0.3, 0.2, 0.4, 0.1])).to(dtype)      # 2 batches x 2 epochs
    real_x = torch.randn(20, 1, 4, 4, generator=g, dtype=dtype)
    real_y = torch.randint(0, 3, (20,), generator=g)
    return model, params, images, raw, distilled_labels(3, 2), real_x, real_y


def test_labels_and_softplus():
    assert distilled_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]
    x = torch.tensor([0.02, 1.0, 30.0])
    assert torch.allclose(step_lrs(inverse_softplus(x)), x.double(), rtol=1e-12)


def test_hypergradient_matches_finite_differences_float64():
    model, params, images, raw, labels, real_x, real_y = _tiny()

    def outer(imgs, r):
        return distill_loss(model, params, imgs, labels, r, 2, real_x, real_y)

    assert torch.autograd.gradcheck(outer, (images.requires_grad_(), raw.requires_grad_()), eps=1e-6, atol=1e-6,
                                    rtol=1e-5)


def test_hypergradient_lenet_directional_finite_difference():
    model = LeNet().double()
    init = init_params(model, "xavier", torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(1, 10, 1, 28, 28, generator=g, dtype=torch.float64, requires_grad=True)
    raw = inverse_softplus(torch.tensor([0.05, 0.03])).requires_grad_()
    real_x = torch.randn(16, 1, 28, 28, generator=g, dtype=torch.float64)
    real_y = torch.randint(0, 10, (16,), generator=g)
    labels = distilled_labels(10, 1)
    loss = distill_loss(model, init, images, labels, raw, 2, real_x, real_y)
    gi, gr = torch.autograd.grad(loss, (images, raw))
    vi = torch.randn(images.shape, generator=g, dtype=torch.float64)
    vr = torch.randn(raw.shape, generator=g, dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        f = lambda s: distill_loss(model, init, images + s * vi, labels, raw + s * vr, 2, real_x, real_y)
        fd = (f(eps) - f(-eps)) / (2 * eps)
    analytic = (gi * vi).sum() + (gr * vr).sum()
    assert float(abs(fd - analytic)) <= 1e-6 * max(1.0, float(abs(analytic)))


def test_distilled_images_and_step_sizes_get_gradients_inputs_untouched():
    model = LeNet()
    init = init_params(model, "xavier", torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 10, 1, 28, 28, generator=g, requires_grad=True)
    raw = inverse_softplus(torch.full((6,), 0.02)).float().requires_grad_()
    real_x, real_y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    before = ({n: p.clone() for n, p in init.items()}, images.detach().clone(), raw.detach().clone(), real_x.clone())
    module_before = {n: p.detach().clone() for n, p in params_and_buffers(model)[0].items()}
    distill_loss(model, init, images, distilled_labels(10, 1), raw, 3, real_x, real_y).backward()
    assert images.grad is not None and raw.grad is not None
    assert bool(torch.isfinite(images.grad).all()) and bool(torch.isfinite(raw.grad).all())
    assert bool((images.grad.flatten(2).abs().sum(2) > 0).all())           # every distilled image
    assert bool((raw.grad != 0).all())                                      # every step size
    assert all(torch.equal(init[n], before[0][n]) for n in init)
    assert torch.equal(images.detach(), before[1]) and torch.equal(raw.detach(), before[2])
    assert torch.equal(real_x, before[3])
    assert all(torch.equal(p, module_before[n]) for n, p in model.named_parameters())


def test_train_on_distilled_is_gradient_descent_and_checks_shapes():
    model, params, images, raw, labels, _, _ = _tiny()
    lrs = step_lrs(raw)
    out = train_on_distilled(model, params, images, labels, lrs, 2)
    p = {n: v.clone().requires_grad_() for n, v in params.items()}
    for t in range(4):                                       # batches 0, 1, 0, 1
        x = images[t % 2]
        loss = nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), labels)
        grads = torch.autograd.grad(loss, list(p.values()))
        p = {n: (v - lrs[t] * gr).detach().requires_grad_() for (n, v), gr in zip(p.items(), grads)}
    assert all(torch.allclose(out[n], p[n].detach(), rtol=0, atol=1e-12) for n in p)
    with pytest.raises(ValueError, match="lrs"):
        train_on_distilled(model, params, images, labels, lrs[:3], 2)
    with pytest.raises(ValueError, match="labels"):
        train_on_distilled(model, params, images, labels[:4], lrs, 2)


def test_init_params_seeded_and_shaped():
    model = LeNet()
    a = init_params(model, "xavier", torch.Generator().manual_seed(5))
    b = init_params(model, "xavier", torch.Generator().manual_seed(5))
    c = init_params(model, "default", torch.Generator().manual_seed(5))
    assert a.keys() == dict(model.named_parameters()).keys()
    assert all(torch.equal(a[n], b[n]) and a[n].shape == p.shape for n, p in model.named_parameters())
    assert float(a["conv1.bias"].abs().sum()) == 0 and float(c["conv1.bias"].abs().sum()) > 0
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10) and LeNet(3, 32)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# ------------------------------------------------------------------------------------------ runs on fake MNIST


@pytest.fixture
def fake_mnist(tmp_path):
    g = np.random.default_rng(0)
    n, nt = 240, 60
    ytr = np.arange(n) % 10
    yte = np.arange(nt) % 10
    # class-dependent blobs so that learning has something to find
    def imgs(y):
        x = g.integers(0, 60, size=(len(y), 28, 28))
        for i, c in enumerate(y):
            x[i, 2 * c:2 * c + 6, 4:24] += 180
        return x.clip(0, 255).astype(np.uint8)
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    np.savez(root / "mnist" / "mnist.npz", train_images=imgs(ytr), train_labels=ytr.astype(np.int64),
             test_images=imgs(yte), test_labels=yte.astype(np.int64))
    return root


def _cfg(root, **kw):
    base = dict(data_root=str(root), outer_steps=4, eval_every=2, batch_size=16, val_images=40, eval_models=2,
                baseline_draws=2, baseline_lrs="0.01,0.1", threads=1)
    base.update(kw)
    return DistillConfig(**base)


@pytest.mark.parametrize("init", ["fixed", "random"])
def test_resume_equals_uninterrupted(fake_mnist, tmp_path, init):
    kw = dict(init=init, steps=2, epochs=2)
    full = distill(_cfg(fake_mnist, **kw), tmp_path / "full", log=None)
    part = distill(_cfg(fake_mnist, outer_steps=2, **kw), tmp_path / "part", log=None)
    assert part["outer_steps_done"] == 2
    rest = distill(_cfg(fake_mnist, **kw), tmp_path / "part", resume=True, log=None)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["step"] == b["step"] == 4
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["raw_lrs"], b["raw_lrs"])
    assert torch.equal(a["rng"], b["rng"])
    assert full["lrs"] == rest["lrs"] and full["test"] == rest["test"]
    strip = lambda hist: [{k: v for k, v in h.items() if not k.endswith("_s")} for h in hist]
    assert strip(full["history"]) == strip(rest["history"])
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [2, 4]
    for name in ("config.yaml", "distilled.pt", "distilled.png", "curve.png", "result.json"):
        assert (tmp_path / "part" / name).is_file()


def test_resume_refuses_other_config_and_existing_run(fake_mnist, tmp_path):
    distill(_cfg(fake_mnist, outer_steps=2), tmp_path / "r", log=None)
    with pytest.raises(ConfigError, match="distill_lr"):
        distill(_cfg(fake_mnist, distill_lr=0.05), tmp_path / "r", resume=True, log=None)
    with pytest.raises(FileExistsError, match="--resume"):
        distill(_cfg(fake_mnist), tmp_path / "r", log=None)
    with pytest.raises(ConfigError, match="nothing to resume"):
        distill(_cfg(fake_mnist), tmp_path / "none", resume=True, log=None)


def test_baselines_on_the_same_budget(fake_mnist):
    cfg = _cfg(fake_mnist, steps=2, epochs=1)
    data = load_data(cfg)
    before = data.train_x.clone()
    b = baselines(cfg, data, log=None)
    assert torch.equal(data.train_x, before)
    for name in ("random real", "k-means"):
        assert b[name]["lr"] in (0.01, 0.1) and 0 <= b[name]["test"]["mean"] <= 100
        assert b["sets"][name].shape == (2, 10, 1, 28, 28)
    assert b["random real"]["test"]["n"] == 2


def test_config_errors_name_the_key(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("init: fixed\nimages_per_class: 1\n")
    assert load_distill_config(f, ["outer_steps=7"]).outer_steps == 7
    for bad, key in (("init=sometimes", "init"), ("steps=0", "steps"), ("outer_lr=-1", "outer_lr"),
                     ("colour=red", "colour"), ("batch_size=1.5", "batch_size"), ("baseline_lrs=a,b", "baseline_lrs")):
        with pytest.raises(ConfigError, match=key):
            load_distill_config(f, [bad])


def test_cli_distill(fake_mnist, tmp_path, capsys):
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"data_root: {fake_mnist}\nouter_steps: 2\neval_every: 1\nbatch_size: 8\nval_images: 40\n"
                   "baseline_draws: 2\nbaseline_lrs: '0.01,0.1'\n")
    out = tmp_path / "run"
    assert main(["distill", "--config", str(cfg), "--out", str(out), "--quiet", "--baselines"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["outer_steps_done"] == 2 and "k-means" in res["baselines"] and "random real" in res["baselines"]
    assert (out / "baseline_random_real.png").is_file() and (out / "baseline_kmeans.png").is_file()
    assert "distilled images" in capsys.readouterr().out
    # again without --resume: refused; with --resume and a longer budget: continues
    assert main(["distill", "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["distill", "--config", str(cfg), "--out", str(out), "--quiet", "--resume",
                 "--set", "outer_steps=3"]) == 0
    assert json.loads((out / "result.json").read_text())["outer_steps_done"] == 3
    # a bad value: exit 2 naming the key
    assert main(["distill", "--config", str(cfg), "--out", str(tmp_path / "x"), "--set", "epochs=0"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["distill", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "y")]) == 2
