"""Dataset distillation: the hypergradient through the inner steps against finite differences (float64), the
distilled images and step sizes get gradients, inputs are not mutated, resume equals an uninterrupted run,
the baselines and the command; CIFAR-10 (AlexCifarNet, 3x32x32 data, the RGB grid) on small synthetic data."""
from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch
from torch import nn

from metalearn.cli import main
from metalearn.config import ConfigError
from metalearn.distill import LeNet, distill, distill_loss, distilled_labels, init_params, step_lrs, train_on_distilled
from metalearn.distill.config import DistillConfig, load_distill_config
from metalearn.distill.core import inverse_softplus
from metalearn.distill.alexcifarnet import AlexCifarNet
from metalearn.distill.run import (NORMALIZATION, augment_batch, baselines, denormalize, grid_title, load_data,
                                   normalize, save_grid)
from metalearn.functional import call
from metalearn.functional import params_and_buffers
from metalearn.train.checkpoint import atomic_save, load_checkpoint


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


def _check_directional_hypergradient(model, init, images, raw, real_x, real_y, g):
    """The hypergradient (images, raw step sizes) along a random direction against a central finite difference."""
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
    return gi, gr


def test_hypergradient_lenet_directional_finite_difference():
    model = LeNet().double()
    init = init_params(model, "xavier", torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(1, 10, 1, 28, 28, generator=g, dtype=torch.float64, requires_grad=True)
    raw = inverse_softplus(torch.tensor([0.05, 0.03])).requires_grad_()
    real_x = torch.randn(16, 1, 28, 28, generator=g, dtype=torch.float64)
    real_y = torch.randint(0, 10, (16,), generator=g)
    _check_directional_hypergradient(model, init, images, raw, real_x, real_y, g)


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


def test_config_errors_name_the_key_per_dataset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("dataset: cifar10\narch: alexcifarnet\n")
    assert load_distill_config(f).arch == "alexcifarnet"
    assert load_distill_config(f, ["arch=lenet"]).arch == "lenet"
    with pytest.raises(ConfigError, match="arch: expected one of lenet for dataset mnist, got 'alexcifarnet'"):
        load_distill_config(f, ["dataset=mnist"])
    for bad, key in (("arch=resnet", "arch"), ("dataset=svhn", "dataset"), ("augment=maybe", "augment")):
        with pytest.raises(ConfigError, match=key):
            load_distill_config(f, [bad])


# ------------------------------------------------------------------------------------ CIFAR-10 / AlexCifarNet


def test_alexcifarnet_shapes_and_parameter_count():
    model = AlexCifarNet()
    x = torch.zeros(2, 3, 32, 32)
    assert AlexCifarNet.FEATURES == 4096 == 64 * 8 * 8
    assert model.features(x).shape == (2, 64, 8, 8) and model(x).shape == (2, 10)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {"features.0.weight": (64, 3, 5, 5), "features.0.bias": (64,),
                      "features.4.weight": (64, 64, 5, 5), "features.4.bias": (64,),
                      "classifier.0.weight": (384, 4096), "classifier.0.bias": (384,),
                      "classifier.2.weight": (192, 384), "classifier.2.bias": (192,),
                      "classifier.4.weight": (10, 192), "classifier.4.bias": (10,)}
    expected = (3 * 25 * 64 + 64) + (64 * 25 * 64 + 64) + (4096 * 384 + 384) + (384 * 192 + 192) + (192 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected == 1_756_426
    lrn = [m for m in model.features if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrn) == 2 and all((m.size, m.alpha, m.beta, m.k) == (4, 0.001 / 9, 0.75, 1) for m in lrn)
    with pytest.raises(ValueError, match="size"):
        AlexCifarNet(size=28)


def test_init_params_alexcifarnet_xavier_and_unsupported_layers():
    model = AlexCifarNet()
    a = init_params(model, "xavier", torch.Generator().manual_seed(0))
    assert list(a) == [n for n, _ in model.named_parameters()]
    assert all(float(a[n].abs().sum()) == 0 for n in a if n.endswith("bias"))
    w = a["classifier.0.weight"]                                 # Glorot normal: std sqrt(2 / (4096 + 384))
    assert abs(float(w.std()) - (2 / (4096 + 384)) ** 0.5) < 0.01 * (2 / (4096 + 384)) ** 0.5
    c = init_params(model, "xavier", torch.Generator().manual_seed(0))
    assert all(torch.equal(a[n], c[n]) for n in a)
    with pytest.raises(ValueError, match="BatchNorm"):
        init_params(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


def test_alexcifarnet_functional_call_equals_module_call():
    model = AlexCifarNet()
    params = init_params(model, "default", torch.Generator().manual_seed(1))
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n])
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(call(model, params, {}, x), model(x), rtol=0, atol=1e-6)


def test_hypergradient_alexcifarnet_directional_finite_difference():
    model = AlexCifarNet().double()
    init = init_params(model, "xavier", torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    images = torch.randn(2, 10, 3, 32, 32, generator=g, dtype=torch.float64, requires_grad=True)
    raw = inverse_softplus(torch.tensor([0.05, 0.03, 0.04, 0.02])).requires_grad_()     # 2 batches x 2 epochs
    real_x = torch.randn(6, 3, 32, 32, generator=g, dtype=torch.float64)
    real_y = torch.randint(0, 10, (6,), generator=g)
    gi, gr = _check_directional_hypergradient(model, init, images, raw, real_x, real_y, g)
    assert bool((gi.flatten(2).abs().sum(2) > 0).all()) and bool((gr != 0).all())


def test_normalize_uses_the_datasets_statistics():
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    mean, std = NORMALIZATION["cifar10"]
    from metalearn.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD
    from metalearn.data.cifar10 import normalize as cifar_normalize
    assert (mean, std) == (CIFAR10_MEAN, CIFAR10_STD)
    z = normalize(x, mean, std)
    assert torch.allclose(z, cifar_normalize(x), atol=1e-6)
    assert torch.allclose(denormalize(z, mean, std), x.float() / 255, atol=1e-6)
    m = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)                  # MNIST: unchanged formula
    assert torch.equal(normalize(m, *NORMALIZATION["mnist"]), (m.float() / 255.0 - 0.1307) / 0.3081)
    with pytest.raises(ConfigError, match="images"):
        normalize(m, mean, std)


def test_augment_batch_is_a_reflect_padded_crop_and_flip():
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = augment_batch(x, g1, pad=2)
    off = torch.randint(0, 5, (6, 2), generator=g2)
    flip = torch.randint(0, 2, (6,), generator=g2).bool()
    padded = nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(6):
        crop = padded[i, :, off[i, 0]:off[i, 0] + 8, off[i, 1]:off[i, 1] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert torch.equal(g1.get_state(), g2.get_state())
    same = augment_batch(x, torch.Generator().manual_seed(1), pad=0)              # pad 0: the image or its mirror
    assert all(torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1)) for i in range(6))


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """<root>/cifar10/cifar-10-python.tar.gz (the original layout) with 200 training and 40 test 3x32x32 images,
    class-dependent colour bands; the decoded cache goes to the test's own folder."""
    monkeypatch.setenv("METALEARN_CACHE", str(tmp_path / "cache"))
    g = np.random.default_rng(0)

    def imgs(y):
        x = g.integers(0, 60, size=(len(y), 3, 32, 32))
        for i, c in enumerate(y):
            x[i, c % 3, 3 * c:3 * c + 4, 4:28] += 180
        return x.clip(0, 255).astype(np.uint8).reshape(len(y), -1)
    ytr, yte = np.arange(200) % 10, np.arange(40) % 10
    xtr = imgs(ytr)
    batches = {f"data_batch_{i + 1}": {b"data": xtr[40 * i:40 * (i + 1)], b"labels": ytr[40 * i:40 * (i + 1)].tolist()}
               for i in range(5)}
    batches["test_batch"] = {b"data": imgs(yte), b"labels": yte.tolist()}
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    with tarfile.open(root / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tf:
        for name, d in batches.items():
            _add(tf, f"cifar-10-batches-py/{name}", pickle.dumps(d))
    return root


def _cifar(root, **kw):
    return _cfg(root, **{"dataset": "cifar10", "arch": "alexcifarnet", **kw})


def test_cifar10_data_shapes_and_normalisation(fake_cifar10):
    data = load_data(_cifar(fake_cifar10))
    assert data.train_x.shape == (160, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.val_x.shape == (40, 3, 32, 32) and data.test_x.shape == (40, 3, 32, 32)
    assert data.image_shape == (3, 32, 32) and (data.mean, data.std) == NORMALIZATION["cifar10"]
    assert torch.allclose(data.batch(torch.arange(3)), normalize(data.train_x[:3], *NORMALIZATION["cifar10"]))


@pytest.mark.parametrize("arch,init,augment", [("alexcifarnet", "fixed", True), ("lenet", "random", False)])
def test_cifar10_resume_equals_uninterrupted(fake_cifar10, tmp_path, arch, init, augment):
    kw = dict(arch=arch, init=init, augment=augment, steps=2, epochs=2, batch_size=8)
    full = distill(_cifar(fake_cifar10, **kw), tmp_path / "full", log=None)
    distill(_cifar(fake_cifar10, outer_steps=2, **kw), tmp_path / "part", log=None)
    rest = distill(_cifar(fake_cifar10, **kw), tmp_path / "part", resume=True, log=None)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["step"] == b["step"] == 4 and a["images"].shape == (2, 10, 3, 32, 32)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["raw_lrs"], b["raw_lrs"])
    assert full["lrs"] == rest["lrs"] and full["test"] == rest["test"]
    assert full["test_images"] == 40 and 0 <= full["test"]["distilled"]["mean"] <= 100
    for name in ("config.yaml", "distilled.pt", "distilled.png", "curve.png", "result.json"):
        assert (tmp_path / "part" / name).is_file()
    assert load_distill_config(tmp_path / "part" / "config.yaml").augment is augment


def test_cifar10_baselines_on_the_same_budget(fake_cifar10):
    cfg = _cifar(fake_cifar10, steps=2, epochs=1)
    b = baselines(cfg, load_data(cfg), log=None)
    for name in ("random real", "k-means"):
        assert b["sets"][name].shape == (2, 10, 3, 32, 32) and 0 <= b[name]["test"]["mean"] <= 100


def test_rgb_grid_png(tmp_path):
    import matplotlib.image
    cfg = DistillConfig(dataset="cifar10", arch="alexcifarnet", steps=2)
    mean, std = NORMALIZATION["cifar10"]
    pixels = torch.zeros(2, 10, 3, 32, 32, dtype=torch.uint8)
    pixels[:, :, 0] = 255                                                       # pure red in pixel space
    images = normalize(pixels.flatten(0, 1), mean, std).view(2, 10, 3, 32, 32)
    path = save_grid(images, torch.full((6,), 0.01), cfg, tmp_path / "g.png")
    png = matplotlib.image.imread(path)
    assert png.ndim == 3 and png.shape[2] in (3, 4)
    red = (png[..., 0] > 0.95) & (png[..., 1] < 0.05) & (png[..., 2] < 0.05)
    assert int(red.sum()) > 20 * 32 * 32 * 0.5                                  # the 20 images show as red
    assert "CIFAR-10" in grid_title(cfg, 2) and "alexcifarnet" in grid_title(cfg, 2)
    assert "MNIST" in grid_title(DistillConfig(), 1)
    with pytest.raises(ConfigError, match="images"):
        save_grid(torch.zeros(1, 10, 1, 28, 28), None, cfg, tmp_path / "bad.png")


def test_resume_of_a_run_saved_before_new_keys(fake_mnist, tmp_path):
    """A checkpoint written before a key existed resumes when the key has its default (the behaviour then)."""
    distill(_cfg(fake_mnist, outer_steps=2), tmp_path / "r", log=None)
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    del ck["config"]["augment"]
    atomic_save(ck, tmp_path / "r" / "last.pt")
    assert distill(_cfg(fake_mnist, outer_steps=3), tmp_path / "r", resume=True, log=None)["outer_steps_done"] == 3
    with pytest.raises(ConfigError, match="augment"):
        distill(_cfg(fake_mnist, outer_steps=4, augment=True), tmp_path / "r", resume=True, log=None)


def test_cifar10_task_files():
    from pathlib import Path
    tasks = Path(__file__).resolve().parents[1] / "tasks" / "distill"
    for name, init in (("cifar10_fixed_100", "fixed"), ("cifar10_random_100", "random")):
        cfg = load_distill_config(tasks / f"{name}.yaml")
        assert (cfg.dataset, cfg.arch, cfg.init, cfg.total_images, cfg.steps * cfg.epochs) == (
            "cifar10", "alexcifarnet", init, 100, 30)
        assert cfg.distill_lr == 0.001 and cfg.batch_size == 1024 and cfg.augment
