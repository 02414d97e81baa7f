"""Self-supervised tasks of TTT (rotation, contrastive, masked reconstruction): inputs, targets and losses on tiny
tensors, batched per-image TTT against the loop for each task, joint training, task files and the CLI."""
import io
import math
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metalearn.cli import main
from metalearn.config import ConfigError
from metalearn.nn.resnet_cifar import ResNetCIFAR
from metalearn.ttt import (ContrastiveTask, JointTrainConfig, MaskedReconstructionTask, RotationTask, joint_loss,
                           make_task, nt_xent, train_joint, ttt, ttt_loop, ttt_online)
from metalearn.ttt.config import adapt_filter, load_ttt_config
from metalearn.ttt.run import build_model
from metalearn.ttt.ssl import VIEW_DRAWS, masked_mse, patch_mask, simclr_views
from metalearn.ttt.train import load_model

KW = dict(steps=2, lr=0.05, copies=4, seed=3)
TASKS = {"rotation": RotationTask(), "contrastive": ContrastiveTask(),
         "reconstruction": MaskedReconstructionTask(patch=2)}


def tiny(head="rotation", norm="gn", seed=0):
    torch.manual_seed(seed)
    return ResNetCIFAR(8, classes=5, norm=norm, ssl_head=head).double()


def images(n=3, size=8, seed=1):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- contrastive: NT-Xent and the views

def test_nt_xent_against_the_direct_formula():
    z = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = 0.3
    n = z.shape[0]
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))   # noqa: E731
    want = 0.0
    for i in range(n):
        pos = (i + n // 2) % n
        den = sum(math.exp(cos(z[i], z[k]) / t) for k in range(n) if k != i)
        want += -math.log(math.exp(cos(z[i], z[pos]) / t) / den)
    assert float(nt_xent(z, t)) == pytest.approx(want / n, rel=1e-12)
    # one pair: the positive is the only other view, so the loss is exactly 0; swapping the halves changes nothing
    assert float(nt_xent(z[:2], t)) == pytest.approx(0.0, abs=1e-15)
    assert float(nt_xent(torch.cat([z[3:], z[:3]]), t)) == pytest.approx(want / n, rel=1e-12)


def _draws(n=1, **kw):
    u = torch.full((n, VIEW_DRAWS), 0.9, dtype=torch.float64)   # no flip, no jitter, no grayscale
    u[:, 0], u[:, 1], u[:, 2], u[:, 3] = 1.0, 0.5, 0.5, 0.5       # the whole image (area 1, ratio 1, centred)
    for k, v in kw.items():
        u[:, int(k[1:])] = v
    return u


def test_simclr_views_from_explicit_draws():
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    close(simclr_views(x, _draws()), x)                                          # identity
    close(simclr_views(x, _draws(u4=0.1)), x.flip(-1))                           # horizontal flip
    gray = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype)[:, None, None]).sum(1, keepdim=True)
    close(simclr_views(x, _draws(u9=0.1)), gray.expand_as(x))                    # grayscale
    # brightness only (contrast and saturation factors 1): x * 1.2, clamped
    close(simclr_views(x, _draws(u5=0.1, u6=0.75, u7=0.5, u8=0.5)), (x * 1.2).clamp(0, 1))
    # a centred crop of half the side, bilinearly resized: a ramp j / 7 becomes (1.75 + 0.5 j) / 7
    ramp = (torch.arange(8, dtype=torch.float64) / 7).expand(1, 3, 8, 8)
    out = simclr_views(ramp, _draws(u0=(0.25 - 0.2) / 0.8))
    close(out, ((1.75 + 0.5 * torch.arange(8, dtype=torch.float64)) / 7).expand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="u: expected shape"):
        simclr_views(x, torch.zeros(1, 3))


def test_contrastive_inputs_are_pairs_of_views_of_the_image():
    task = ContrastiveTask()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    d = task.draws(torch.Generator().manual_seed(0), 1, 4, (3, 8, 8))
    assert d[0].shape == (1, 4, VIEW_DRAWS)
    xs, ys = task.make_inputs(x, tuple(torch.stack([t[0], t[0]]) for t in d))  # both images, same draws
    assert xs.shape == (2, 4, 3, 8, 8) and ys == ()
    for i in range(2):
        close(xs[i], simclr_views(x[i:i + 1].expand(4, 3, 8, 8), d[0][0]))
    assert not torch.allclose(xs[0, 0], xs[0, 2])               # the two views of a pair differ
    with pytest.raises(ValueError, match="copies: the contrastive task makes pairs"):
        ttt(tiny("contrastive"), images(1), copies=3)


# ---------------------------------------------------------------- masked reconstruction

@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_mask_covers_the_declared_ratio(ratio):
    scores = torch.rand(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    m = patch_mask(scores, ratio, 2, (8, 8))                     # 16 patches of 2 x 2 on an 8 x 8 image
    assert m.shape == (5, 1, 8, 8)
    assert m.flatten(1).sum(1).tolist() == [round(ratio * 16) * 4.0] * 5
    blocks = m.view(5, 4, 2, 4, 2)                               # each 2 x 2 patch is all masked or not
    assert torch.equal(blocks.amin((2, 4)), blocks.amax((2, 4)))
    # the masked patches are the lowest scores
    k = round(ratio * 16)
    want = torch.zeros(5, 16, dtype=torch.float64).scatter(1, scores.argsort(1)[:, :k], 1.0)
    assert torch.equal(blocks[:, :, 0, :, 0].reshape(5, 16), want)


def test_masked_inputs_and_targets():
    task = MaskedReconstructionTask(mask_ratio=0.5, patch=2, fill=0.25)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 0.5 + 0.5    # never equal to the fill value
    d = task.draws(torch.Generator().manual_seed(0), 1, 3, (3, 8, 8))
    xs, (image, mask) = task.make_inputs(x, tuple(torch.stack([t[0]] * 2) for t in d))
    assert xs.shape == image.shape == (2, 3, 3, 8, 8) and mask.shape == (2, 3, 1, 8, 8)
    assert mask.flatten(2).sum(-1).eq(32).all()                   # 8 of the 16 patches, 4 pixels each
    m = mask.expand_as(xs).bool()
    assert (xs[m] == 0.25).all() and torch.equal(xs[~m], image[~m])
    # the target is the crop + flip augmented copy, before masking
    from metalearn.ttt.rotation import crop_flip
    off, flip, _ = d
    close(image[0], crop_flip(x[:1].expand(3, 3, 8, 8), off[0], flip[0]))


def test_reconstruction_loss_only_on_masked_patches():
    g = torch.Generator().manual_seed(5)
    img = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=g)
    out = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=g, requires_grad=True)
    mask = patch_mask(torch.rand(3, 16, dtype=torch.float64, generator=g), 0.5, 2, (8, 8))
    loss = masked_mse(out, img, mask)
    m = mask.expand_as(img).bool()
    assert float(loss.detach()) == pytest.approx(float(((out - img)[m] ** 2).mean().detach()), rel=1e-12)
    (grad,) = torch.autograd.grad(loss, out)
    assert not grad[~m].any() and grad[m].abs().min() > 0
    changed = out.detach().clone()
    changed[~m] += 10.0                                           # the unmasked pixels do not count
    assert float(masked_mse(changed, img, mask)) == pytest.approx(float(loss.detach()), rel=1e-12)
    assert float(MaskedReconstructionTask().loss(out.detach(), (img, mask))) == pytest.approx(float(loss.detach()),
                                                                                              rel=1e-12)


def test_rotation_task_is_the_rotation_code():
    from metalearn.ttt.adapt import draws
    task = RotationTask()
    a = task.draws(torch.Generator().manual_seed(9), 2, 3, (3, 8, 8))
    b = draws(0, 2, 3, seed=0)
    g = torch.Generator().manual_seed(9)
    c = (torch.randint(0, 9, (2, 3, 2), generator=g), torch.randint(0, 2, (2, 3), generator=g).bool(),
         torch.randint(0, 4, (2, 3), generator=g))
    for u, v in zip(a, c):
        assert torch.equal(u, v)
    assert [t.shape for t in b] == [t.shape for t in a]
    model, x = tiny(), images(2)
    close(ttt(model, x, task=task, **KW).logits, ttt(model, x, **KW).logits)   # default task of the head


# ---------------------------------------------------------------- batched TTT == loop, online, purity

@pytest.mark.parametrize("name,norm", [("rotation", "gn"), ("contrastive", "gn"), ("contrastive", "bn"),
                                       ("reconstruction", "gn"), ("reconstruction", "bn")])
def test_batched_ttt_equals_the_loop_for_each_task(name, norm):
    task, model, x = TASKS[name], tiny(name, norm), images(3)
    before, x_before = state(model), x.clone()
    ref = ttt_loop(model, x, keep_params=True, task=task, **KW)
    out = ttt(model, x, chunk_size=2, keep_params=True, task=task, **KW)     # vmapped, chunks of 2 and 1
    assert torch.equal(out.predictions, ref.predictions)
    close(out.logits, ref.logits)
    close(out.losses, ref.losses)
    assert out.losses.shape == (3, KW["steps"]) and torch.isfinite(out.losses).all()
    for n in out.params:
        close(out.params[n], ref.params[n])
    for n in out.buffers:
        close(out.buffers[n].to(ref.buffers[n].dtype), ref.buffers[n])
    w = out.params["trunk.stem.weight"]                           # each image adapted its own trunk
    assert not torch.allclose(w[0], model.trunk.stem.weight) and not torch.allclose(w[0], w[1])
    close(ttt(model, x, chunk_size=3, vmap_images=False, task=task, **KW).logits, out.logits)
    assert_same_state(before, state(model))                       # nothing of the model or the input written
    assert torch.equal(x, x_before)
    # the task's branch can adapt with the trunk
    both = ttt(model, x[:1], adapt=["trunk", task.head], keep_params=True, task=task, **KW)
    assert any(n.startswith(task.head + ".") for n in both.params)
    close(both.logits, ttt_loop(model, x[:1], adapt=["trunk", task.head], task=task, **KW).logits)


@pytest.mark.parametrize("name", ["contrastive", "reconstruction"])
def test_online_for_each_task(name):
    task, model, x = TASKS[name], tiny(name), images(3)
    before = state(model)
    kw = dict(KW, steps=1, task=task)
    full = ttt_online(model, x, **kw)
    first = ttt_online(model, x[:1], **kw)
    rest = ttt_online(model, x[1:], first_index=1, params=first.params, buffers=first.buffers, **kw)
    close(rest.logits, full.logits[1:])
    standard = ttt(model, x, **kw)                               # the first image: one step of standard TTT
    close(full.logits[0], standard.logits[0])
    assert not torch.allclose(full.logits[2], standard.logits[2])
    assert_same_state(before, state(model))


def test_float_inputs_are_not_mutated():
    x = images(2).double() / 255
    keep = x.clone()
    for name, task in TASKS.items():
        ttt(tiny(name), x, task=task, **KW)
        ttt_online(tiny(name), x, task=task, **dict(KW, steps=1))
        assert torch.equal(x, keep), name


# ---------------------------------------------------------------- joint training

@pytest.mark.parametrize("name", ["contrastive", "reconstruction"])
def test_joint_loss_is_main_plus_the_task_loss(name):
    task, model = TASKS[name], tiny(name)
    x, y = images(4).double() / 255, torch.arange(4) % 5
    loss, m = joint_loss(model, x, y, task, torch.Generator().manual_seed(11))
    jb = task.joint_batch(x, torch.Generator().manual_seed(11))
    assert torch.equal(jb.inputs[jb.main], x)
    ssl = task.loss(model(jb.inputs[jb.ssl], head="ssl"), jb.targets)       # GroupNorm: separate passes agree
    close(m["main"], F.cross_entropy(model(x), y))
    close(m["ssl"], ssl.detach())
    close(loss.detach(), (F.cross_entropy(model(x), y) + ssl).detach())
    half = make_task(name, weight=0.5, patch=2)
    loss_half, m_half = joint_loss(model, x, y, half, torch.Generator().manual_seed(11))
    close(loss_half.detach(), m_half["main"] + 0.5 * m_half["ssl"])
    assert "rotation" not in m
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, [params[n] for n in params])
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for n, g in zip(params, grads) if n.startswith(task.head + "."))


@pytest.mark.parametrize("name", ["contrastive", "reconstruction"])
def test_resume_and_reload_for_each_task(tmp_path, name):
    task = TASKS[name]
    x, y = images(20, seed=5), torch.arange(20) % 5
    cfg = JointTrainConfig(epochs=2, batch_size=8, max_steps=4, checkpoint_every=2, log_every=1, seed=7)
    full = tiny(name)
    train_joint(full, x, y, cfg, tmp_path / "full", task=task)
    part = tiny(name)
    train_joint(part, x, y, JointTrainConfig(**{**cfg.__dict__, "max_steps": 2}), tmp_path / "part", task=task)
    resumed = tiny(name, seed=99)
    st = train_joint(resumed, x, y, cfg, tmp_path / "part", resume=True, task=task)
    assert st.step == 4 and st.resumed_from == 2
    assert_same_state(state(full), state(resumed))
    loaded, ck = load_model(tmp_path / "part" / "last.pt")
    assert loaded.ssl_head == name and ck["model_config"]["ssl_head"] == name
    assert_same_state(state(loaded), state(full))
    with pytest.raises(ValueError, match="another model"):
        train_joint(tiny("rotation"), x, y, cfg, tmp_path / "full", resume=True)


# ---------------------------------------------------------------- bad input, task files, CLI

def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="task: 'contrastive' trains the 'contrastive' branch, but the model's"):
        ttt(tiny("rotation"), images(1), task=ContrastiveTask())
    with pytest.raises(ValueError, match="patch: 3 does not divide"):
        ttt(tiny("reconstruction"), images(1), task=MaskedReconstructionTask(patch=3))
    with pytest.raises(ValueError, match="mask_ratio"):
        make_task("reconstruction", mask_ratio=1.0)
    with pytest.raises(ValueError, match="task: expected one of"):
        make_task("jigsaw")
    with pytest.raises(TypeError, match="task: expected a SelfSupervisedTask"):
        ttt(tiny(), images(1), task="rotation")
    with pytest.raises(ValueError, match="model: TTT needs a model with a rotation head"):
        ttt_online(ResNetCIFAR(8, 5, rotation_head=False).double(), images(1), task=ContrastiveTask())
    with pytest.raises(ValueError, match="ssl_head: expected one of"):
        ResNetCIFAR(8, ssl_head="jigsaw")
    with pytest.raises(ValueError, match="ssl_head: 'contrastive' needs rotation_head=True"):
        ResNetCIFAR(8, rotation_head=False, ssl_head="contrastive")
    with pytest.raises(ValueError, match="head: 'rotation' needs the rotation head"):
        tiny("contrastive")(torch.rand(1, 3, 8, 8, dtype=torch.float64), head="rotation")


def test_model_branches():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    shapes = {"rotation": (2, 4), "contrastive": (2, 128), "reconstruction": (2, 3, 8, 8)}
    for name, shape in shapes.items():
        m = tiny(name)
        assert m(x, head="ssl").shape == shape and m.has_ssl_head
        assert m.has_rotation_head == (name == "rotation")
        prefixes = {n.split(".")[0] for n, _ in m.named_parameters()}
        assert prefixes == {"trunk", "head", name}
        assert ResNetCIFAR(**m.config()).config() == m.config()
        logits, out = m(x, head="both")
        assert logits.shape == (2, 5) and out.shape == shape
    assert "ssl_head" not in tiny("rotation").config()             # a rotation model's config is unchanged


def test_task_files_choose_the_task():
    cfg = load_ttt_config("tasks/ttt_cifar10_gn.yaml")
    assert cfg.ssl.task == "rotation" and isinstance(cfg.ssl.make(), RotationTask)
    cfg = load_ttt_config("tasks/ttt_cifar10_gn.yaml", ["ssl.task=contrastive", "ssl.temperature=0.2",
                                                        "model.depth=8"])
    task = cfg.ssl.make()
    assert isinstance(task, ContrastiveTask) and task.temperature == 0.2
    assert build_model(cfg).ssl_head == "contrastive"
    assert adapt_filter(load_ttt_config("tasks/ttt_cifar10_gn.yaml", ["ssl.task=reconstruction",
                                                                       "ttt.adapt=trunk+ssl"])) == \
        ["trunk", "reconstruction"]
    for sets, key in ((["ssl.task=jigsaw"], "ssl.task"), (["ssl.task=contrastive", "ttt.copies=3"], "ttt.copies"),
                      (["ssl.task=contrastive", "ttt.adapt=trunk+rotation"], "ttt.adapt"),
                      (["ssl.mask_ratio=1.5"], "ssl.mask_ratio"), (["ssl.patch=3"], "ssl.patch"),
                      (["ssl.temperature=0"], "ssl.temperature"), (["ssl.tau=1"], "ssl.tau")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_ttt_config("tasks/ttt_cifar10_gn.yaml", sets)
    obj = load_ttt_config("tasks/ttt_cifar10_objonly.yaml", ["ssl.task=contrastive"])
    assert build_model(obj).ssl_head is None


def _tiny_cifar10(root):
    from PIL import Image
    from metalearn.data.cifar10 import CLASSES
    folder = root / "cifar10"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with tarfile.open(folder / "cifar10_jpeg.tar.gz", "w:gz") as tf:
        for split in ("train", "test"):
            for cls in CLASSES:
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
                info = tarfile.TarInfo(f"{split}/{cls}/0000.jpg")
                info.size = len(buf.getvalue())
                tf.addfile(info, io.BytesIO(buf.getvalue()))


def test_cli_trains_and_evaluates_the_chosen_task(tmp_path, capsys):
    root, cache = tmp_path / "data", tmp_path / "cache"
    _tiny_cifar10(root)
    common = ["--set", f"data.root={root}", "--set", f"data.cache_dir={cache}", "--set", "data.device=cpu"]
    out = tmp_path / "run"
    rc = main(["ttt", "train", "--config", "tasks/ttt_cifar10_gn.yaml", "--ssl-task", "contrastive",
               "--out", str(out), "--quiet", "--set", "model.depth=8", "--set", "train.max_steps=1",
               "--set", "train.batch_size=4", *common])
    assert rc == 0, capsys.readouterr().err
    model, _ = load_model(out / "last.pt")
    assert model.ssl_head == "contrastive"
    rc = main(["ttt", "eval", "--checkpoint", str(out), "--quiet", "--json", str(tmp_path / "eval.json"),
               "--set", "eval.images=2", "--set", "eval.corruptions=fog", "--set", "ttt.steps=1",
               "--set", "ttt.copies=2", "--set", "ttt.chunk_size=2"])
    assert rc == 0, capsys.readouterr().err
    import json
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["config"]["ssl"]["task"] == "contrastive" and res["methods"] == ["source", "ttt", "ttt_online"]
    assert set(res["sets"]) == {"fog"} and res["sets"]["fog"]["ttt"]["n"] == 2
    capsys.readouterr()
    rc = main(["ttt", "eval", "--checkpoint", str(out), "--quiet", "--ssl-task", "rotation"])
    assert rc == 2 and "ssl.task" in capsys.readouterr().err
    rc = main(["ttt", "train", "--config", "tasks/ttt_cifar10_gn.yaml", "--ssl-task", "jigsaw",
               "--out", str(tmp_path / "bad")])
    assert rc == 2 and "--ssl-task" in capsys.readouterr().err
