"""Test-Time Training, Tent, norm adaptation and joint training on a tiny ResNet (one block per stage)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from metalearn.cli import main
from metalearn.config import ConfigError
from metalearn.nn.resnet_cifar import ResNetCIFAR
from metalearn.ttt import (JointTrainConfig, all_rotations, crop_flip, joint_loss, norm_adapt, norm_affine_names,
                           predict, rotate, tent, train_joint, ttt, ttt_loop, ttt_online)
from metalearn.ttt.config import load_ttt_config
from metalearn.ttt.train import load_model

KW = dict(steps=3, lr=0.05, copies=4, seed=3)  # larger lr than the paper's so that adaptation visibly moves


def tiny(norm="gn", rotation_head=True, seed=0):
    torch.manual_seed(seed)
    return ResNetCIFAR(8, classes=5, norm=norm, rotation_head=rotation_head).double()


def images(n=5, size=8, seed=1):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- rotations and augmentation

def test_rotation_labels_match_hand_made_rotations():
    img = torch.tensor([[1., 2.], [3., 4.]])[None, None]        # (1, 1, 2, 2)
    expected = {0: [[1, 2], [3, 4]], 1: [[2, 4], [1, 3]],         # k * 90 degrees counter-clockwise
                2: [[4, 3], [2, 1]], 3: [[3, 1], [4, 2]]}
    for k, want in expected.items():
        got = rotate(img, torch.tensor([k]))
        assert got[0, 0].tolist() == want, k
    x, y = all_rotations(img.expand(2, 1, 2, 2) * torch.tensor([1., 10.])[:, None, None, None])
    assert y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in range(8):
        assert x[i, 0].tolist() == (torch.tensor(expected[int(y[i])]) * (1 if i % 2 == 0 else 10)).tolist()
    # the TTT code's own formulas (label 1: flip(2).transpose(1, 2), 3: transpose(1, 2).flip(2)) agree
    chw = torch.arange(9.).view(1, 3, 3)
    assert torch.equal(rotate(chw[None], torch.tensor([1]))[0], chw.flip(2).transpose(1, 2))
    assert torch.equal(rotate(chw[None], torch.tensor([3]))[0], chw.transpose(1, 2).flip(2))


def test_crop_flip_from_explicit_draws():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64).view(2, 3, 8, 8)
    same = crop_flip(x, torch.tensor([[4, 4], [4, 4]]), torch.tensor([False, True]))
    assert torch.equal(same[0], x[0]) and torch.equal(same[1], x[1].flip(-1))
    shifted = crop_flip(x, torch.tensor([[0, 4], [4, 8]]), torch.tensor([False, False]))
    assert torch.equal(shifted[0, :, :4], torch.zeros(3, 4, 8)) and torch.equal(shifted[0, :, 4:], x[0, :, :4])
    assert torch.equal(shifted[1, :, :, :4], x[1, :, :, 4:]) and not shifted[1, :, :, 4:].any()


# ---------------------------------------------------------------- standard TTT: batched == loop

@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_batched_ttt_equals_sequential_loop(norm):
    model, x = tiny(norm), images(5)
    before = state(model)
    ref = ttt_loop(model, x, keep_params=True, **KW)
    out = ttt(model, x, chunk_size=2, keep_params=True, **KW)          # vmapped, chunks of 2, 2, 1
    assert torch.equal(out.predictions, ref.predictions)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.losses, ref.losses, rtol=1e-9, atol=1e-10)
    assert set(out.params) == {n for n, _ in model.named_parameters() if n.startswith("trunk.")}
    for n in out.params:
        torch.testing.assert_close(out.params[n], ref.params[n], rtol=1e-9, atol=1e-10)
    for n in out.buffers:        # BatchNorm: per-image running statistics moved as in the module loop
        torch.testing.assert_close(out.buffers[n].to(ref.buffers[n].dtype), ref.buffers[n], rtol=1e-9, atol=1e-10)
    if norm == "bn":
        assert not torch.equal(out.buffers["trunk.stage1.0.norm1.running_mean"][0],
                               before["trunk.stage1.0.norm1.running_mean"])
    # adaptation did something: every image's trunk moved, and differently per image
    w = out.params["trunk.stem.weight"]
    assert not torch.allclose(w[0], model.trunk.stem.weight) and not torch.allclose(w[0], w[1])
    assert_same_state(before, state(model))                              # stored weights untouched
    loop = ttt(model, x, chunk_size=5, vmap_images=False, **KW)          # functional loop, one chunk
    torch.testing.assert_close(loop.logits, out.logits, rtol=1e-9, atol=1e-10)


def test_ttt_adapt_filter_and_stream_offsets():
    model, x = tiny(), images(4)
    both = ttt(model, x, adapt=["trunk", "rotation"], keep_params=True, **KW)
    assert any(n.startswith("rotation.") for n in both.params)
    assert not any(n.startswith("head.") for n in both.params)
    ref = ttt_loop(model, x, adapt=["trunk", "rotation"], **KW)
    torch.testing.assert_close(both.logits, ref.logits, rtol=1e-9, atol=1e-10)
    # images 2..3 as their own stream with first_index=2 see the same draws as inside the full stream
    part = ttt(model, x[2:], first_index=2, **KW)
    torch.testing.assert_close(part.logits, ttt(model, x, **KW).logits[2:], rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- online

def test_online_carries_weights_and_standard_resets():
    model, x = tiny(), images(3)
    before = state(model)
    kw = dict(KW, steps=1)
    full = ttt_online(model, x, **kw)
    first = ttt_online(model, x[:1], **kw)
    rest = ttt_online(model, x[1:], first_index=1, params=first.params, buffers=first.buffers, **kw)
    torch.testing.assert_close(rest.logits, full.logits[1:], rtol=1e-9, atol=1e-10)
    for n in full.params:
        torch.testing.assert_close(rest.params[n], full.params[n], rtol=1e-9, atol=1e-10)
    # the first image of the stream is standard TTT with one step; later ones are not (weights carried)
    standard = ttt(model, x, **kw)
    torch.testing.assert_close(full.logits[0], standard.logits[0], rtol=1e-9, atol=1e-10)
    assert not torch.allclose(full.logits[2], standard.logits[2])
    fresh = ttt_online(model, x[1:], first_index=1, **kw)
    assert not torch.allclose(fresh.logits, full.logits[1:])
    assert not torch.allclose(full.params["trunk.stem.weight"], model.trunk.stem.weight)
    assert_same_state(before, state(model))


# ---------------------------------------------------------------- Tent and norm adaptation

@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_tent_updates_only_norm_affine_parameters(norm):
    model, x = tiny(norm, rotation_head=False), images(12)
    before = state(model)
    res = tent(model, x, lr=1e-2, batch_size=4)
    names = norm_affine_names(model)
    assert set(res.params) == set(names) and len(names) == 2 * 7        # 3 blocks x 2 norms + final norm
    params = dict(model.named_parameters())
    for n in names:
        assert not torch.allclose(res.params[n], params[n]), n
    assert_same_state(before, state(model))                              # nothing of the model changed
    assert res.logits.shape == (12, 5) and res.losses.shape == (3,)
    # the first batch is predicted before any update: the unadapted model with batch statistics
    first = norm_adapt(model, x[:4], batch_size=4)
    torch.testing.assert_close(res.logits[:4], first, rtol=1e-9, atol=1e-10)
    # continuing from the returned parameters: equal to adapting further with them in place
    again = tent(model, x[:4], lr=1e-2, batch_size=4, params=res.params)
    fixed = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in fixed.named_parameters():
            if n in res.params:
                p.copy_(res.params[n])
    torch.testing.assert_close(again.logits, norm_adapt(fixed, x[:4], batch_size=4), rtol=1e-9, atol=1e-10)


def test_norm_adapt_uses_test_batch_statistics_only():
    model, x = tiny("bn", rotation_head=False), images(8)
    with torch.no_grad():                                    # running stats far from the test batch's
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(0.3)
                m.running_var.fill_(2.0)
    before = state(model)
    adapted = norm_adapt(model, x, batch_size=4)
    assert_same_state(before, state(model))                  # neither weights nor running stats written
    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        want = torch.cat([ref(x[:4].double() / 255), ref(x[4:].double() / 255)])
    torch.testing.assert_close(adapted, want, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(adapted, predict(model, x))
    # statistics per batch: an image's logits depend on the rest of its batch
    assert not torch.allclose(norm_adapt(model, x[:2], batch_size=2), adapted[:2])
    gn = tiny("gn", rotation_head=False)
    torch.testing.assert_close(norm_adapt(gn, x, batch_size=4), predict(gn, x))  # GroupNorm: nothing to adapt


# ---------------------------------------------------------------- joint training

def test_joint_training_decreases_loss_on_a_fixed_batch():
    model = tiny()
    x, y = images(8).double() / 255, torch.arange(8) % 5
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss, m = joint_loss(model, x, y)
        assert torch.allclose(m["loss"], m["main"] + m["rotation"]) and float(m["rotation"]) > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    only = tiny(rotation_head=False)
    loss, m = joint_loss(only, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(only(x), y))


def test_bf16_joint_loss_runs_the_network_in_bf16_and_keeps_losses_and_gradients_fp32():
    torch.manual_seed(0)
    model = ResNetCIFAR(8, classes=5, norm="gn")              # float32: autocast leaves float64 alone
    x, y = images(8).float() / 255, torch.arange(8) % 5
    params = list(model.parameters())
    l32, m32 = joint_loss(model, x, y, precision="fp32")
    g32 = torch.cat([g.flatten() for g in torch.autograd.grad(l32, params)])
    lb, mb = joint_loss(model, x, y, precision="bf16")
    gb = torch.autograd.grad(lb, params)
    assert lb.dtype == torch.float32 and all(g.dtype == torch.float32 for g in gb)
    assert all(v.dtype == torch.float32 for v in mb.values())
    assert not torch.equal(lb, l32)                           # the bf16 path did run
    assert abs(float(lb.detach() - l32.detach())) < 0.02 * float(l32.detach())   # bf16: 8 significant bits
    gb = torch.cat([g.flatten() for g in gb])
    assert float(F.cosine_similarity(gb, g32, dim=0)) > 0.99
    only = ResNetCIFAR(8, classes=5, norm="gn", rotation_head=False)
    lo, _ = joint_loss(only, x, y, precision="bf16")
    assert lo.dtype == torch.float32
    assert abs(float((lo - F.cross_entropy(only(x), y)).detach())) < 0.02 * float(lo.detach())


def test_bf16_joint_training_keeps_fp32_weights_and_optimizer_state(tmp_path):
    torch.manual_seed(0)
    model = ResNetCIFAR(8, classes=5, norm="gn")
    x, y = images(16, seed=5), torch.arange(16) % 5
    st = train_joint(model, x, y, JointTrainConfig(epochs=1, batch_size=8, log_every=1, precision="bf16"),
                     tmp_path / "run")
    assert st.step == 2 and torch.isfinite(torch.tensor(st.last["loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    momenta = [s["momentum_buffer"] for s in ck["optimizer"]["state"].values()]
    assert len(momenta) == len(list(model.parameters()))
    assert all(m.dtype == torch.float32 and bool(m.abs().sum() > 0) for m in momenta)
    with pytest.raises(ValueError, match="precision: expected one of"):
        train_joint(model, x, y, JointTrainConfig(max_steps=1, precision="fp16"))


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    x, y = images(20, seed=5), torch.arange(20) % 5
    cfg = JointTrainConfig(epochs=2, batch_size=8, max_steps=5, checkpoint_every=2, log_every=1, seed=7,
                           milestones=(1,))
    full = tiny()
    train_joint(full, x, y, cfg, tmp_path / "full")
    part = tiny()
    st = train_joint(part, x, y, JointTrainConfig(**{**cfg.__dict__, "max_steps": 2}), tmp_path / "part")
    assert st.step == 2
    resumed = tiny(seed=99)                                   # different init: everything comes from last.pt
    st = train_joint(resumed, x, y, cfg, tmp_path / "part", resume=True)
    assert st.resumed_from == 2 and st.step == 5
    assert_same_state(state(full), state(resumed))
    loaded, ck = load_model(tmp_path / "part" / "last.pt")
    assert ck["step"] == 5 and ck["train_config"]["milestones"] == (1,)
    assert_same_state(state(loaded), state(full))
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5                                    # steps 1..5, none repeated by the resume
    with pytest.raises(FileExistsError, match="already holds a run"):
        train_joint(tiny(), x, y, cfg, tmp_path / "full")
    with pytest.raises(ValueError, match="another model"):
        train_joint(tiny("bn"), x, y, cfg, tmp_path / "full", resume=True)


# ---------------------------------------------------------------- bad input

def test_bad_input_names_the_argument():
    model = tiny()
    with pytest.raises(ValueError, match="images: the model takes 3-channel"):
        ttt(model, torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images: expected square"):
        ttt(model, torch.zeros(2, 3, 8, 6, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"images: expected a stream of images \(N, C, H, W\)"):
        ttt_online(model, torch.zeros(3, 8, 8, dtype=torch.uint8))
    for fn in (ttt, ttt_loop, ttt_online, tent, norm_adapt, predict):
        with pytest.raises(ValueError, match="images: the stream is empty"):
            fn(model, torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="model: TTT needs a model with a rotation head"):
        ttt(tiny(rotation_head=False), images(2))
    with pytest.raises(ValueError, match="steps"):
        ttt(model, images(2), steps=0)
    with pytest.raises(ValueError, match="adapt selects no parameters"):
        ttt(model, images(2), adapt="nothing")
    with pytest.raises(ValueError, match="x: expected images"):
        model(torch.zeros(2, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="head: 'rotation' needs the rotation head"):
        tiny(rotation_head=False)(torch.zeros(1, 3, 8, 8, dtype=torch.float64), head="rotation")
    with pytest.raises(ValueError, match="norm: expected 'gn' or 'bn'"):
        ResNetCIFAR(8, norm="ln")
    with pytest.raises(ValueError, match="depth"):
        ResNetCIFAR(21)
    with pytest.raises(ValueError, match="labels: expected values in"):
        train_joint(tiny(), images(4), torch.tensor([0, 1, 2, 9]), JointTrainConfig(max_steps=1))


def test_task_files_and_cli_errors(tmp_path, capsys):
    for name in ("gn", "bn", "objonly"):
        cfg = load_ttt_config(f"tasks/ttt_cifar10_{name}.yaml")
        assert cfg.train.lr == 0.1 and cfg.train.milestones == (75, 125) and cfg.ttt.copies == 32
    assert load_ttt_config("tasks/ttt_cifar10_bn.yaml").model.norm == "bn"
    with pytest.raises(ConfigError, match="unknown config key 'ttt.stepz'"):
        load_ttt_config("tasks/ttt_cifar10_gn.yaml", ["ttt.stepz=3"])
    with pytest.raises(ConfigError, match="ttt.adapt"):
        load_ttt_config("tasks/ttt_cifar10_gn.yaml", ["ttt.adapt=head"])
    rc = main(["ttt", "train", "--config", "tasks/ttt_cifar10_gn.yaml", "--set", "model.norm=ln",
               "--out", str(tmp_path / "run")])
    assert rc == 2 and "model.norm" in capsys.readouterr().err
    rc = main(["ttt", "eval", "--checkpoint", str(tmp_path)])
    assert rc == 2 and "config.yaml" in capsys.readouterr().err
