import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conformance import check_learner
from metalearn.builders import build_learner
from metalearn.config import ConfigError, config_from_dict, load_config
from metalearn.learners.matchnet import (AttentionLSTM, MatchingNet, SupportContext, check_support_labels,
                                         class_mean_logits, cosine_attention, embedding_dim, l2_attention,
                                         matching_logits, similarities)
from metalearn.nn import Conv4
from metalearn.types import Episode

TASKS = Path(__file__).resolve().parent.parent / "tasks"


class Identity(nn.Module):
    def forward(self, x):
        return x.flatten(-3)


def tiny_episode(batch: int | None = None, ways: int = 3, shots: int = 2, queries: int = 2, size: int = 16,
                 seed: int = 0, dtype: torch.dtype = torch.float32) -> Episode:
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    sx = torch.rand(*lead, ways * shots, 1, size, size, generator=g, dtype=dtype)
    qx = torch.rand(*lead, ways * queries, 1, size, size, generator=g, dtype=dtype)
    sy = torch.arange(ways).repeat_interleave(shots).expand(*lead, ways * shots).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(*lead, ways * queries).contiguous()
    return Episode(sx, sy, qx, qy, ways)


# ------------------------------------------------------------------------------------- attention and logits

def test_cosine_attention_by_hand_and_rows_sum_to_one():
    q = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-5.0, 0.0]], dtype=torch.float64)
    a = cosine_attention(q, s)
    # cosines: 3/5, 4/5, -3/5 (the support's norms do not matter, nor the query's)
    cos = torch.tensor([0.6, 0.8, -0.6], dtype=torch.float64)
    assert torch.allclose(a, (cos.exp() / cos.exp().sum())[None], atol=1e-15)
    assert torch.allclose(cosine_attention(10 * q, s / 7), a, atol=1e-15)
    # scale: an inverse temperature on the cosines
    assert torch.allclose(cosine_attention(q, s, scale=10.0), ((10 * cos).exp() / (10 * cos).exp().sum())[None],
                          atol=1e-15)
    g = torch.Generator().manual_seed(0)
    a = cosine_attention(torch.randn(4, 6, 5, generator=g, dtype=torch.float64),
                         torch.randn(4, 9, 5, generator=g, dtype=torch.float64))
    assert a.shape == (4, 6, 9) and (a > 0).all()
    assert torch.allclose(a.sum(-1), torch.ones(4, 6, dtype=torch.float64), atol=1e-15)


def test_matching_logits_are_log_of_attention_weighted_labels():
    a = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    logits = matching_logits(a, y, 2)
    assert torch.allclose(logits, torch.tensor([[0.7, 0.3], [0.9, 0.1]], dtype=torch.float64).log(), atol=1e-15)
    # cross-entropy of these logits is -log P(y | x, S), no renormalisation needed
    ce = F.cross_entropy(logits, torch.tensor([0, 1]))
    assert ce.item() == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2, rel=1e-12)
    # a class with no support example: probability 0, clamped to a finite logit
    assert torch.isfinite(matching_logits(a, torch.tensor([0, 0, 0]), 2)).all()


def test_learner_without_fce_matches_hand_computation_and_batch_equals_loop():
    ep = tiny_episode(batch=2, size=2)
    learner = MatchingNet(Identity())
    loss, logits = learner.loss(ep)
    s, q = ep.support_x.flatten(-3), ep.query_x.flatten(-3)
    cos = F.cosine_similarity(q[:, :, None], s[:, None], dim=-1)              # (B, Q, S)
    p = torch.softmax(cos, -1) @ F.one_hot(ep.support_y, 3).float()
    assert torch.allclose(logits, p.log(), atol=1e-6)
    assert loss.item() == pytest.approx(F.nll_loss(p.log().reshape(-1, 3), ep.query_y.reshape(-1)).item(), rel=1e-5)
    assert torch.allclose(logits, torch.stack([learner.loss(ep[i])[1] for i in range(2)]), atol=1e-6)


# ------------------------------------------------------------------------------------ full context embeddings

def _lstm_step(x, h, c, w_ih, w_hh, b):
    i, f, g, o = (x @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_support_context_is_bidirectional_lstm_plus_skip():
    torch.manual_seed(0)
    D, S = 4, 5
    g = SupportContext(D).double()
    z = torch.randn(2, S, D, dtype=torch.float64)
    out = g(z)
    assert out.shape == (2, S, D)
    m = g.lstm

    def run(seq, sfx):
        h = c = torch.zeros(2, D, dtype=torch.float64)
        hs = []
        for t in range(S):
            h, c = _lstm_step(seq[:, t], h, c, getattr(m, f"weight_ih_l0{sfx}"), getattr(m, f"weight_hh_l0{sfx}"),
                              getattr(m, f"bias_ih_l0{sfx}") + getattr(m, f"bias_hh_l0{sfx}"))
            hs.append(h)
        return torch.stack(hs, 1)

    fwd, bwd = run(z, ""), run(z.flip(1), "_reverse").flip(1)
    assert torch.allclose(out, fwd + bwd + z, atol=1e-12)


def test_attention_lstm_follows_the_paper_per_query():
    """h_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1}) + f'(x), r = sum_i softmax(h^T g_i) g_i, one query at a time,
    with the recurrent weight acting on [h, r] written out separately."""
    torch.manual_seed(1)
    D, K = 3, 4
    f = AttentionLSTM(D, K).double()
    q, sup = torch.randn(2, 5, D, dtype=torch.float64), torch.randn(2, 6, D, dtype=torch.float64)
    out = f(q, sup)
    assert out.shape == (2, 5, D)
    w_ih, w_hh, b = f.cell.weight_ih, f.cell.weight_hh, f.cell.bias_ih + f.cell.bias_hh
    w_x, w_r = w_ih[:, :D], w_ih[:, D:]                       # the input weights: query embedding, read-out
    w_rec = torch.cat([w_hh, w_r], dim=1)                     # recurrent weights on [h, r]
    for t in range(2):
        for j in range(5):
            x = q[t, j]
            h = c = torch.zeros(D, dtype=torch.float64)
            for _ in range(K):
                r = torch.softmax(sup[t] @ h, 0) @ sup[t]
                i, fg, gg, o = (w_x @ x + w_rec @ torch.cat([h, r]) + b).chunk(4)
                c = torch.sigmoid(fg) * c + torch.sigmoid(i) * torch.tanh(gg)
                h = torch.sigmoid(o) * torch.tanh(c) + x
            assert torch.allclose(out[t, j], h, atol=1e-12)


@pytest.mark.parametrize("lstm_hidden", [0, 6])
def test_fce_shapes_and_gradient_reaches_every_lstm_parameter(lstm_hidden):
    torch.manual_seed(0)
    learner = MatchingNet(Conv4(in_channels=1, hidden=8), embed_dim=8, fce=True, process_steps=3,
                          lstm_hidden=lstm_hidden)
    ep = tiny_episode(batch=2)
    z = learner.encoder(ep.support_x)
    assert z.shape == (2, 6, 8)
    zq = learner.encoder(ep.query_x)
    sg, qf = learner.embed(z, zq)
    dim = lstm_hidden or 8
    assert sg.shape == (2, 6, dim) and qf.shape == (2, 6, dim)
    loss, logits = learner.loss(ep)
    assert logits.shape == (2, 6, 3)
    loss.backward()
    lstm_params = {n: p for n, p in learner.named_parameters() if n.startswith(("g.", "f.", "project."))}
    assert {n for n in lstm_params if "reverse" in n}, "the support LSTM must be bidirectional"
    assert len(lstm_params) == 8 + 4 + (2 if lstm_hidden else 0)
    for n, p in lstm_params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


# ---------------------------------------------------------------------------------------------- conformance

@pytest.mark.parametrize("fce", [False, True])
@pytest.mark.parametrize("batch", [None, 2])
def test_conformance(fce, batch):
    def make():
        return MatchingNet(Conv4(in_channels=1, hidden=8), embed_dim=8, fce=fce, process_steps=2)
    loss, logits = check_learner(make, tiny_episode(batch=batch))
    # exp(logits) are the class distributions
    assert torch.allclose(logits.exp().sum(-1), torch.ones(logits.shape[:-1]), atol=1e-5)


def test_conformance_in_float64():
    check_learner(lambda: MatchingNet(Conv4(in_channels=1, hidden=4), embed_dim=4, fce=True,
                                      process_steps=2).double(),
                  tiny_episode(batch=2, dtype=torch.float64), atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_input_names_the_argument():
    learner = MatchingNet(Identity())
    ep = tiny_episode()
    with pytest.raises(ValueError, match="support_y: class 2 has no support example"):
        learner.loss(Episode(ep.support_x, torch.tensor([0, 0, 1, 1, 0, 1]), ep.query_x, ep.query_y, 3))
    with pytest.raises(ValueError, match=r"support_y: label 3 is outside \[0, ways=3\)"):
        learner.loss(Episode(ep.support_x, torch.tensor([0, 0, 1, 1, 2, 3]), ep.query_x, ep.query_y, 3))
    with pytest.raises(ValueError, match="image shapes differ"):
        learner.loss(Episode(ep.support_x, ep.support_y, torch.rand(6, 1, 6, 6), ep.query_y, 3))
    with pytest.raises(ValueError, match=r"support_x: the support set is empty \(shots=0\)"):
        learner.loss(Episode(torch.rand(0, 1, 16, 16), torch.zeros(0, dtype=torch.long), ep.query_x, ep.query_y, 3))
    with pytest.raises(ValueError, match=r"query_x: no query examples"):
        learner.loss(Episode(ep.support_x, ep.support_y, torch.rand(0, 1, 16, 16), torch.zeros(0, dtype=torch.long), 3))
    with pytest.raises(ValueError, match="support_y: expected shape"):
        learner.loss(Episode(ep.support_x, ep.support_y[:4], ep.query_x, ep.query_y, 3))
    with pytest.raises(ValueError, match="same number of dims"):
        learner.loss(Episode(ep.support_x[None], ep.support_y[None], ep.query_x, ep.query_y, 3))
    with pytest.raises(ValueError, match="embed_dim"):
        MatchingNet(Identity(), fce=True)
    with pytest.raises(ValueError, match="process_steps"):
        MatchingNet(Identity(), 4, fce=True, process_steps=0)
    with pytest.raises(ValueError, match="lstm_hidden"):
        MatchingNet(Identity(), 4, lstm_hidden=8)
    with pytest.raises(ValueError, match="scale: expected > 0"):
        MatchingNet(Identity(), scale=0.0)
    check_support_labels(ep.support_y, 3)  # a complete support set passes


def test_l2_attention_by_hand_and_in_the_learner():
    g = torch.Generator().manual_seed(3)
    q, s = torch.randn(2, 4, 5, generator=g, dtype=torch.float64), torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    d = ((q[:, :, None, :] - s[:, None, :, :]) ** 2).sum(-1)                # (2, 4, 6) written out
    assert torch.allclose(l2_attention(q, s), torch.softmax(-d, -1), atol=1e-12)
    assert torch.allclose(l2_attention(q, s, scale=0.5), torch.softmax(-0.5 * d, -1), atol=1e-12)
    ep = tiny_episode(batch=2, size=28)
    torch.manual_seed(0)
    cos = MatchingNet(Conv4(in_channels=1, hidden=8), check_support=False).double()
    l2 = MatchingNet(Conv4(in_channels=1, hidden=8), check_support=False, distance="l2").double()
    l2.load_state_dict(cos.state_dict())
    ep64 = Episode(ep.support_x.double(), ep.support_y, ep.query_x.double(), ep.query_y, ep.ways)
    z = cos.encoder(torch.cat([ep64.support_x, ep64.query_x], dim=1).flatten(0, 1)).reshape(2, -1, 8)
    n_s = ep64.support_x.shape[1]
    expect = matching_logits(l2_attention(z[:, n_s:], z[:, :n_s]), ep64.support_y, ep64.ways)
    assert torch.allclose(l2(ep64), expect, atol=1e-10)
    assert not torch.allclose(cos(ep64), expect, atol=1e-3)                 # the distance changes the logits
    with pytest.raises(ValueError, match="distance: expected one of cosine, l2, got 'dot'"):
        MatchingNet(Identity(), distance="dot")


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_class_mean_support_score_by_hand_one_shot_equal_and_train_mode_attention(distance):
    g = torch.Generator().manual_seed(4)
    q, s = torch.randn(2, 4, 5, generator=g, dtype=torch.float64), torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    sy = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0]])
    sc = similarities(q, s, distance, 3.0)
    attend = cosine_attention if distance == "cosine" else l2_attention
    assert torch.allclose(torch.softmax(sc, -1), attend(q, s, scale=3.0), atol=1e-12)
    got = class_mean_logits(sc, sy, 3)
    for b in range(2):                                               # written out: mean per class, log-softmax
        means = torch.stack([sc[b][:, sy[b] == c].mean(-1) for c in range(3)], -1)
        assert torch.allclose(got[b], torch.log_softmax(means, -1), atol=1e-12)
    one = torch.tensor([[1, 0, 2], [0, 2, 1]])                       # one shot: the attention's logits exactly
    assert torch.allclose(class_mean_logits(sc[..., :3], one, 3),
                          matching_logits(torch.softmax(sc[..., :3], -1), one, 3), atol=1e-12)
    # in the learner: eval mode scores by class means, train mode (the loss) keeps the attention
    ep = tiny_episode(batch=2, size=3, shots=3, dtype=torch.float64)
    att = MatchingNet(Identity(), distance=distance, scale=2.0)
    cm = MatchingNet(Identity(), distance=distance, scale=2.0, support_score="class_mean")
    att.eval(), cm.eval()
    z = torch.cat([ep.support_x, ep.query_x], dim=1).flatten(-3)
    n_s = ep.support_x.shape[1]
    expect = class_mean_logits(similarities(z[:, n_s:], z[:, :n_s], distance, 2.0), ep.support_y, ep.ways)
    assert torch.allclose(cm(ep), expect, atol=1e-10) and not torch.allclose(att(ep), expect, atol=1e-4)
    att.train(), cm.train()
    assert torch.allclose(cm.loss(ep)[0], att.loss(ep)[0], atol=1e-12)
    with pytest.raises(ValueError, match="support_score: expected one of attention, class_mean, got 'max'"):
        MatchingNet(Identity(), support_score="max")


def test_config_section_and_errors():
    base = {"dataset": "omniglot", "learner": "matchnet"}
    cfg = config_from_dict({**base, "matchnet": {"fce": True, "process_steps": 3}})
    assert cfg.matchnet.fce and cfg.matchnet.process_steps == 3 and cfg.matchnet.lstm_hidden == 0
    with pytest.raises(ConfigError, match="matchnet.process_steps: expected >= 1"):
        config_from_dict({**base, "matchnet": {"fce": True, "process_steps": 0}})
    with pytest.raises(ConfigError, match="matchnet.lstm_hidden: only used with matchnet.fce"):
        config_from_dict({**base, "matchnet": {"lstm_hidden": 32}})
    with pytest.raises(ConfigError, match="matchnet.fce: expected bool"):
        config_from_dict({**base, "matchnet": {"fce": "yes"}})
    with pytest.raises(ConfigError, match="train.shots: expected >= 1, got 0"):
        config_from_dict({**base, "train": {"shots": 0}})
    with pytest.raises(ConfigError, match="matchnet.scale: expected > 0, got 0.0"):
        config_from_dict({**base, "matchnet": {"scale": 0}})
    assert config_from_dict({**base, "matchnet": {"distance": "l2"}}).matchnet.distance == "l2"
    with pytest.raises(ConfigError, match="matchnet.distance: expected cosine or l2, got 'dot'"):
        config_from_dict({**base, "matchnet": {"distance": "dot"}})
    assert config_from_dict({**base, "matchnet": {"support_score": "class_mean"}}).matchnet.support_score == "class_mean"
    with pytest.raises(ConfigError, match="matchnet.support_score: expected attention or class_mean, got 'max'"):
        config_from_dict({**base, "matchnet": {"support_score": "max"}})
    with pytest.raises(ConfigError, match="unknown config key 'matchnet.steps'"):
        config_from_dict({**base, "matchnet": {"steps": 3}})


def test_builder_and_task_files():
    files = sorted(TASKS.glob("matchnet_*.yaml"))
    assert len(files) == 8, [f.name for f in files]
    for f in files:
        cfg = load_config(f)
        assert cfg.learner == "matchnet" and cfg.reference.accuracy is not None, f
        assert cfg.train.shots == cfg.eval.shots, f
        if cfg.dataset == "miniimagenet":
            assert cfg.matchnet.fce == ("fce" in f.stem), f
        assert cfg.matchnet.scale == 10.0, f       # the setting of every measured run (docs/results.md)
    cfg = config_from_dict({"dataset": "omniglot", "learner": "matchnet", "model": {"hidden": 8},
                            "matchnet": {"fce": True, "process_steps": 2}})
    learner = build_learner(cfg, (1, 28, 28))
    assert isinstance(learner, MatchingNet) and learner.fce and not learner.check_support
    assert learner.g.dim == 8 and learner.f.steps == 2 and learner.scale == 1.0
    scaled = build_learner(config_from_dict({"dataset": "omniglot", "learner": "matchnet", "model": {"hidden": 8},
                                             "matchnet": {"scale": 10}}), (1, 28, 28))
    assert scaled.scale == 10.0                     # the config's scale reaches the learner
    assert scaled.distance == "cosine" and build_learner(config_from_dict(
        {"dataset": "omniglot", "learner": "matchnet", "model": {"hidden": 8}, "matchnet": {"distance": "l2"}}),
        (1, 28, 28)).distance == "l2"
    assert learner.encoder.training  # embedding_dim restored the mode
    assert embedding_dim(Conv4(in_channels=3, hidden=4), (3, 84, 84)) == 100
    ep = tiny_episode(batch=2, size=28)
    assert learner.loss(ep)[1].shape == (2, 6, 3)
