import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conformance import check_learner
from metalearn.augment import AffineRanges, affine_matrices, random_affine, warp
from metalearn.config import ConfigError, config_from_dict
from metalearn.data.pairs import PairSampler
from metalearn.data.storage import ClassImages
from metalearn.learners.siamese import (Siamese, SiameseHead, balanced_pair_bce, class_log_scores,
                                        embedding_dim)
from metalearn.nn import Conv4, KochNet
from metalearn.nn.koch import koch_flat_size
from metalearn.types import Episode


def tiny_episode(ways=3, shots=1, queries=2, size=28, batch=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    sx = torch.rand(*lead, ways * shots, 1, size, size, generator=g)
    qx = torch.rand(*lead, ways * queries, 1, size, size, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).expand(*lead, ways * shots).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(*lead, ways * queries).contiguous()
    return Episode(sx, sy, qx, qy, ways)


class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(-3)


# ------------------------------------------------------------------ head, scores, loss: exact answers
def test_head_is_weighted_l1_and_pairwise_matches_matched_pairs():
    head = SiameseHead(3).double()
    with torch.no_grad():
        head.alpha.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        head.alpha.bias.fill_(0.25)
    a = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    # |a-b0| = (1, 0, 2) -> 1 + 0 + 1 + 0.25 ; |a-b1| = (0, 1, 2) -> 0 - 2 + 1 + 0.25
    assert torch.allclose(head.pairwise(a, b), torch.tensor([[2.25, -0.75]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 3, generator=g, dtype=torch.float64), torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    ref = head(a[:, :, None], b[:, None])
    assert torch.allclose(head.pairwise(a, b), ref)
    import metalearn.learners.siamese as S
    old, S._CHUNK_ELEMENTS = S._CHUNK_ELEMENTS, 7   # force several chunks
    try:
        assert torch.allclose(head.pairwise(a, b), ref)
    finally:
        S._CHUNK_ELEMENTS = old


def test_class_scores_average_p_same_over_support_images():
    # 2 queries, support: class 0 x2, class 1 x1
    s = torch.tensor([[0.0, 2.0, -1.0], [1.0, 1.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    out = class_log_scores(s, y, 2)
    p = torch.sigmoid(s)
    ref = torch.log(torch.stack([(p[:, 0] + p[:, 1]) / 2, p[:, 2]], dim=-1))
    assert torch.allclose(out, ref)
    # one-shot: argmax = the support image that scores highest (Koch's rule)
    assert out.argmax(-1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="support_y: class 2 has no support example"):
        class_log_scores(s, y, 3)


def test_mean_logit_rule_averages_logits_and_agrees_for_one_shot():
    s = torch.tensor([[0.0, 2.0, -1.0], [6.0, -2.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    out = class_log_scores(s, y, 2, rule="mean_logit")
    assert torch.equal(out, torch.tensor([[1.0, -1.0], [2.0, 0.5]], dtype=torch.float64))
    # the rules can disagree for K > 1: query 2 matches class 0 once very surely and once not (mean p 0.558),
    # class 1 moderately (p 0.622)
    assert class_log_scores(s, y, 2).argmax(-1).tolist() == [0, 1] and out.argmax(-1).tolist() == [0, 0]
    # 1-shot: the same class under both rules
    g = torch.Generator().manual_seed(0)
    s1, y1 = torch.randn(50, 5, generator=g), torch.arange(5)
    assert torch.equal(class_log_scores(s1, y1, 5).argmax(-1), class_log_scores(s1, y1, 5, rule="mean_logit").argmax(-1))
    with pytest.raises(ValueError, match="rule"):
        class_log_scores(s, y, 2, rule="median")
    with pytest.raises(ValueError, match="support_score"):
        Siamese(Conv4(1, hidden=8), 8, support_score="max")
    with pytest.raises(ConfigError, match="siamese.support_score"):
        config_from_dict({"name": "x", "dataset": "omniglot", "learner": "siamese",
                          "siamese": {"support_score": "max"}})


def test_balanced_bce_weights_same_and_different_pairs_equally():
    y = torch.tensor([0, 0, 1])                # pairs (0,1) same; (0,2), (1,2) different
    s = torch.tensor([[9.0, 1.0, 2.0], [1.0, 9.0, -3.0], [2.0, -3.0, 9.0]], dtype=torch.float64)
    loss, n_pos, n_neg = balanced_pair_bce(s, y)
    assert (int(n_pos), int(n_neg)) == (1, 2)
    bce_same = F.softplus(-torch.tensor(1.0, dtype=torch.float64))
    bce_diff = (F.softplus(torch.tensor(2.0, dtype=torch.float64)) + F.softplus(torch.tensor(-3.0, dtype=torch.float64))) / 2
    assert loss.item() == pytest.approx((0.5 * bce_same + 0.5 * bce_diff).item())


# ------------------------------------------------------------------ learner
def test_learner_conformance_conv4_and_batched():
    check_learner(lambda: Siamese(Conv4(in_channels=1, hidden=8), dim=8, fill=1.0), tiny_episode())
    check_learner(lambda: Siamese(Conv4(in_channels=1, hidden=8), dim=8), tiny_episode(batch=2, shots=2))


def test_learner_conformance_koch_net():
    size = 65     # the smallest image the Koch net takes (105 px in the paper)
    check_learner(lambda: Siamese(KochNet(1, size, hidden=2, fc=8), dim=8, fill=1.0),
                  tiny_episode(ways=2, shots=1, queries=1, size=size))


def test_loss_and_logits_by_hand_with_identity_encoder():
    ep = tiny_episode(ways=3, shots=2, queries=2, size=2, batch=2)
    learner = Siamese(Flat(), dim=4, distort=None).double()
    ep = Episode(ep.support_x.double(), ep.support_y, ep.query_x.double(), ep.query_y, 3)
    loss, logits = learner.loss(ep)
    head = learner.head
    z = torch.cat([ep.support_x, ep.query_x], 1).flatten(-3)
    s = head(z[:, :, None], z[:, None])
    assert torch.allclose(logits, class_log_scores(s[:, 6:, :6], ep.support_y, 3))
    y = torch.cat([ep.support_y, ep.query_y], 1)
    per_task = [balanced_pair_bce(s[i], y[i])[0] for i in range(2)]
    assert loss.item() == pytest.approx(torch.stack(per_task).mean().item())
    assert torch.allclose(learner.predict(ep), logits.detach())          # no distortion: same as loss


def test_distortion_only_in_training_and_its_rng_travels_with_the_state_dict():
    ep = tiny_episode()
    a = Siamese(Conv4(in_channels=1, hidden=8), dim=8, fill=1.0, seed=3)
    a.eval()
    assert torch.equal(a.predict(ep), a.predict(ep))
    a.train()
    l1, l2 = a.loss(ep)[0], a.loss(ep)[0]
    assert not torch.equal(l1, l2)                    # fresh distortions each call
    b = Siamese(Conv4(in_channels=1, hidden=8), dim=8, fill=1.0, seed=99)
    b.load_state_dict(a.state_dict())                 # weights + BN stats + distortion RNG
    assert torch.equal(a.loss(ep)[0], b.loss(ep)[0])


def test_bad_input_names_the_argument():
    learner = Siamese(Conv4(in_channels=1, hidden=8), dim=8)
    ep = tiny_episode()
    with pytest.raises(ValueError, match="support_y: class 2 has no support example"):
        learner.predict(Episode(ep.support_x[:2], ep.support_y[:2], ep.query_x, ep.query_y, 3))
    with pytest.raises(ValueError, match="image shapes differ"):
        learner.loss(Episode(ep.support_x, ep.support_y, torch.rand(6, 1, 20, 20), ep.query_y, 3))
    with pytest.raises(ValueError, match=r"support_x: the support set is empty \(shots=0\)"):
        learner.loss(Episode(ep.support_x[:0], ep.support_y[:0], ep.query_x, ep.query_y, 3))
    with pytest.raises(ValueError, match="same-class and different-class pairs"):
        learner.loss(Episode(ep.support_x, ep.support_y, ep.query_x[:0], ep.query_y[:0], 3))  # 1 image per class
    with pytest.raises(ValueError, match="dim: expected >= 1"):
        SiameseHead(0)
    with pytest.raises(ValueError, match="image_size: 28 px is too small"):
        KochNet(1, 28)
    with pytest.raises(ValueError, match=r"x: expected \(\.\.\., 1, 65, 65\)"):
        KochNet(1, 65, hidden=2, fc=4)(torch.zeros(1, 1, 50, 50))


def test_koch_net_shapes_match_the_paper():
    assert koch_flat_size(105) == 9216           # 256 x 6 x 6
    net = KochNet(1, 105, hidden=4, fc=16)
    out = net(torch.zeros(2, 3, 1, 105, 105))
    assert out.shape == (2, 3, 16) and ((out > 0) & (out < 1)).all()
    assert embedding_dim(net, (1, 105, 105)) == 16 and net.training


# ------------------------------------------------------------------ distortions
def test_distortions_keep_images_in_range_and_shape_and_do_not_mutate():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 1, 28, 28, generator=g)
    before = x.clone()
    for fill in (None, 1.0, 0.0):
        y = random_affine(x, generator=torch.Generator().manual_seed(1), fill=fill)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert y.min() >= 0.0 - 1e-6 and y.max() <= 1.0 + 1e-6
    assert torch.equal(x, before)
    # binary images stay in [0, 1] too, and a constant image stays constant with a matching fill
    ones = torch.ones(5, 1, 16, 16)
    assert torch.allclose(random_affine(ones, generator=torch.Generator().manual_seed(2), fill=1.0), ones)
    # seeded: same generator seed -> same distortion
    a = random_affine(x, generator=torch.Generator().manual_seed(5))
    b = random_affine(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_affine_parameters_stay_in_koch_ranges():
    r = AffineRanges(rotation=10.0, shear=0.3, scale=(0.8, 1.2), translate=2.0, reference_size=105, p=1.0)
    m = affine_matrices(2000, r, (28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = m[:, :, 2]
    assert t.abs().max() <= 2 * 2.0 / 105 + 1e-9        # +-2 px at 105 px, in [-1, 1] units
    a = m[:, :, :2]
    det = torch.linalg.det(a)                           # det = s_x s_y (1 - rho_x rho_y)
    assert det.min() >= 0.8 * 0.8 * (1 - 0.09) - 1e-9 and det.max() <= 1.2 * 1.2 * (1 + 0.09) + 1e-9
    ident = affine_matrices(10, AffineRanges(p=0.0), (28, 28), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ident, torch.eye(2, 3).expand(10, 2, 3))
    # a pure translation by one pixel (warp) moves the image by one pixel
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 3] = 1.0
    shift = torch.tensor([[[1.0, 0.0, 2.0 / 8], [0.0, 1.0, 0.0]]])   # sample 1 px to the right
    assert warp(x, shift, fill=0.0)[0, 0, 3, 2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scale: expected"):
        AffineRanges(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="p: expected a probability"):
        AffineRanges(p=1.5)


# ------------------------------------------------------------------ pair sampler
def toy_split(n_classes=6, per_class=4, rotations=(0,)):
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8)                  # pixel (0, 0) encodes the base class
    images[:, 0, 0, 1] = torch.arange(len(labels)).to(torch.uint8)  # pixel (0, 1) encodes the image
    return ClassImages.from_labels(images, labels, rotations=rotations)


@pytest.mark.parametrize("rotations", [(0,), (0, 90, 180, 270)])
def test_pair_sampler_is_balanced_and_never_pairs_a_class_with_itself_as_different(rotations):
    data = toy_split(rotations=rotations)
    sampler = PairSampler(data, pairs=64, seed=0, scale=1.0)
    for _ in range(20):
        b = sampler.sample()
        assert b.x1.shape == b.x2.shape == (64, 1, 4, 4)
        assert int(b.same.sum()) == 32                                  # balanced
        same = b.same.bool()
        assert torch.equal(b.class1[same], b.class2[same])
        assert (b.class1[~same] != b.class2[~same]).all()               # no same-class "different" pair
        c1, c2, r1, r2 = sampler.sample_indices()
        assert (r1[:32] != r2[:32]).all()                               # two distinct images in a same pair
        base1, base2 = c1 // len(rotations), c2 // len(rotations)
        assert ((r1 >= data.offsets[base1]) & (r1 < data.offsets[base1] + data.counts[base1])).all()
        assert ((r2 >= data.offsets[base2]) & (r2 < data.offsets[base2] + data.counts[base2])).all()
    if rotations == (0,):     # unrotated: the class pixel of the images agrees with the labels
        assert torch.equal(b.x1[:, 0, 0, 0].long(), b.class1) and torch.equal(b.x2[:, 0, 0, 0].long(), b.class2)
    # seeded and resumable
    s1, s2 = PairSampler(data, pairs=8, seed=7), PairSampler(data, pairs=8, seed=7)
    assert torch.equal(s1.sample().x1, s2.sample().x1)
    state = s1.state_dict()
    nxt = s1.sample().x2
    s2.load_state_dict(state)
    assert torch.equal(s2.sample().x2, nxt)


def test_pair_sampler_bad_input():
    with pytest.raises(ValueError, match="pairs: expected an even integer"):
        PairSampler(toy_split(), pairs=3)
    with pytest.raises(ValueError, match="at least 2 images per class"):
        PairSampler(toy_split(per_class=1), pairs=2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        PairSampler(toy_split(n_classes=1), pairs=2)
    with pytest.raises(TypeError, match="data: expected a ClassImages"):
        PairSampler(torch.zeros(3), pairs=2)


# ------------------------------------------------------------------ config / builder
def test_config_section_and_builder():
    from metalearn.builders import build_learner
    cfg = config_from_dict({"dataset": "omniglot", "learner": "siamese", "model": {"hidden": 8},
                            "siamese": {"fill": 1.0, "fc": 16}})
    learner = build_learner(cfg, (1, 28, 28))
    assert isinstance(learner, Siamese) and learner.head.dim == 16 and learner.fill == 1.0
    assert learner.distort is not None and not learner.check_support
    cfg = config_from_dict({"dataset": "omniglot", "learner": "siamese", "siamese": {"distort": False}})
    assert build_learner(cfg, (1, 28, 28)).distort is None
    with pytest.raises(ConfigError, match="siamese.distort_p"):
        config_from_dict({"dataset": "omniglot", "siamese": {"distort_p": 1.5}})
    with pytest.raises(ConfigError, match="siamese.scale_min"):
        config_from_dict({"dataset": "omniglot", "siamese": {"scale_min": 1.3}})
    with pytest.raises(ConfigError, match="model.backbone: learner 'siamese'"):
        build_learner(config_from_dict({"dataset": "omniglot", "learner": "siamese",
                                        "model": {"backbone": "maml_conv4"}}), (1, 28, 28))


def test_task_files_load():
    from pathlib import Path
    from metalearn.config import load_config
    tasks = sorted(Path(__file__).resolve().parents[1].glob("tasks/siamese_*.yaml"))
    assert len(tasks) == 5
    for t in tasks:
        cfg = load_config(t)
        assert cfg.learner == "siamese" and cfg.reference.accuracy is not None and not math.isnan(cfg.reference.accuracy)


def test_koch_backbone_through_the_builder():
    from metalearn.builders import build_learner
    cfg = config_from_dict({"dataset": "omniglot", "learner": "siamese", "model": {"backbone": "koch", "hidden": 2},
                            "siamese": {"fc": 8}})
    learner = build_learner(cfg, (1, 65, 65))
    assert isinstance(learner.encoder, KochNet) and learner.head.dim == 8
    with pytest.raises(ConfigError, match="square images"):
        build_learner(cfg, (1, 65, 70))


def test_cli_train_resume_is_exact_and_eval_at_another_setting(tmp_path, capsys):
    """Through `metalearn train/eval` on the offline digits data: the distortion RNG is checkpointed, so
    2 steps + resume to 4 gives the weights of 4 uninterrupted steps."""
    import json
    from metalearn.cli import main
    from metalearn.train.checkpoint import load_checkpoint
    tiny = ["--set", "learner=siamese", "--set", "train.ways=5", "--set", "train.shots=1", "--set",
            "train.queries=2", "--set", "train.checkpoint_every=100", "--set", "train.log_every=2", "--set",
            "model.hidden=8", "--set", "eval.episodes=10", "--set", "eval.batch_size=5", "--quiet"]
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = "tasks/protonet_digits_5w5s.yaml"
    assert main(["train", "--config", cfg, "--out", str(a), "--no-eval", "--set", "train.steps=4", *tiny]) == 0
    assert main(["train", "--config", cfg, "--out", str(b), "--no-eval", "--set", "train.steps=2", *tiny]) == 0
    assert main(["train", "--config", cfg, "--out", str(b), "--no-eval", "--resume", "--set", "train.steps=4",
                 *tiny]) == 0
    wa, wb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert "_extra_state" in wa
    for k, v in wa.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, wb[k]), k
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(a), "--ways", "3", "--shots", "2", "--episodes", "10", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["learner"], res["ways"], res["shots"]) == ("siamese", 3, 2) and 0.0 <= res["accuracy"] <= 100.0
