"""torchmeta's ``utils.prototype`` and ``utils.matching`` functions in metalearn.data.helpers: torchmeta's
signatures and batched (B, N*K, D) semantics, checked against hand computations; and scripts written the way
torchmeta's ProtoNet / Matching Networks examples are, running with their imports changed to metalearn."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metalearn.data import helpers
from metalearn.data.helpers import (get_num_samples, get_prototypes, matching_log_probas, matching_loss,
                                    matching_probas, pairwise_cosine_similarity, prototypical_loss)
from metalearn.learners.protonet import protonet_logits, prototypes


def test_get_prototypes_by_hand():
    z = torch.tensor([[[0., 0.], [2., 0.], [0., 4.]],
                      [[1., 1.], [3., 3.], [5., 5.]]], dtype=torch.float64)        # (2, 3, 2)
    y = torch.tensor([[0, 0, 1], [1, 1, 1]])
    p = get_prototypes(z, y, 3)
    assert p.shape == (2, 3, 2) and p.dtype == torch.float64
    assert p[0].tolist() == [[1., 0.], [0., 4.], [0., 0.]]       # class 2 has no example: zeros, as torchmeta
    assert p[1].tolist() == [[0., 0.], [3., 3.], [0., 0.]]
    assert get_num_samples(y, 3).tolist() == [[2, 1, 0], [0, 3, 0]]
    assert get_num_samples(y, 3, dtype=torch.float32).dtype == torch.float32


def test_prototypical_loss_by_hand():
    protos = torch.tensor([[[0., 0.], [2., 0.]]], dtype=torch.float64)             # (1, 2, 2)
    q = torch.tensor([[[1., 0.], [0., 0.]]], dtype=torch.float64)                  # (1, 2, 2)
    t = torch.tensor([[0, 0]])
    # query 1: distances (1, 1) -> loss log 2; query 2: distances (0, 4) -> loss log(1 + e^-4)
    want = (math.log(2) + math.log(1 + math.exp(-4))) / 2
    assert prototypical_loss(protos, q, t).item() == pytest.approx(want, rel=1e-12)
    per = prototypical_loss(protos, q, t, reduction="none")
    assert per.shape == (1, 2) and per[0, 1].item() == pytest.approx(math.log(1 + math.exp(-4)), rel=1e-12)


def test_batched_prototypes_match_the_per_task_learner_functions():
    g = torch.Generator().manual_seed(0)
    B, N, K, Q, D = 3, 5, 2, 4, 8
    z = torch.randn(B, N * K, D, generator=g, dtype=torch.float64)
    y = torch.stack([torch.randperm(N * K, generator=g) % N for _ in range(B)])
    zq = torch.randn(B, N * Q, D, generator=g, dtype=torch.float64)
    yq = torch.randint(0, N, (B, N * Q), generator=g)
    p = get_prototypes(z, y, N)
    losses = []
    for b in range(B):
        assert torch.allclose(p[b], prototypes(z[b], y[b], N))
        losses.append(F.cross_entropy(protonet_logits(z[b], y[b], zq[b], N), yq[b], reduction="sum"))
    assert prototypical_loss(p, zq, yq).item() == pytest.approx(float(sum(losses)) / (B * N * Q), rel=1e-10)


def test_pairwise_cosine_similarity_by_hand():
    a = torch.tensor([[[1., 0.], [1., 1.], [0., 0.]]], dtype=torch.float64)
    b = torch.tensor([[[0., 2.], [3., 0.]]], dtype=torch.float64)
    s = pairwise_cosine_similarity(a, b)
    assert s.shape == (1, 3, 2)
    c = 1 / math.sqrt(2)
    assert torch.allclose(s[0], torch.tensor([[0., 1.], [c, c], [0., 0.]], dtype=torch.float64))


def test_matching_log_probas_by_hand():
    support = torch.tensor([[[1., 0.], [0., 1.], [1., 1.]]], dtype=torch.float64)   # (1, 3, 2)
    ys = torch.tensor([[0, 1, 1]])
    query = torch.tensor([[[1., 0.], [0., 5.]]], dtype=torch.float64)              # (1, 2, 2)
    lp = matching_log_probas(support, ys, query, 2)
    assert lp.shape == (1, 2, 2)                                                    # (B, classes, queries)
    c = 1 / math.sqrt(2)
    # query 1: similarities (1, 0, c); query 2: (0, 1, c); attention = softmax over the support
    for m, sims in enumerate([(1.0, 0.0, c), (0.0, 1.0, c)]):
        z = sum(math.exp(s) for s in sims)
        assert lp[0, 0, m].item() == pytest.approx(math.log(math.exp(sims[0]) / z), rel=1e-12)
        assert lp[0, 1, m].item() == pytest.approx(math.log((math.exp(sims[1]) + math.exp(sims[2])) / z), rel=1e-12)
    assert torch.allclose(matching_probas(support, ys, query, 2).sum(1), torch.ones(1, 2, dtype=torch.float64))
    yq = torch.tensor([[0, 1]])
    want = -(lp[0, 0, 0] + lp[0, 1, 1]) / 2
    assert matching_loss(support, ys, query, yq, 2).item() == pytest.approx(want.item(), rel=1e-12)
    assert lp.argmax(dim=1).tolist() == [[1, 1]]        # query 1: e^1 < 1 + e^c, two class-1 examples win
    # a class without support examples has probability 0 (log -inf), as in torchmeta
    assert matching_log_probas(support, ys, query, 3)[0, 2].tolist() == [-math.inf, -math.inf]


def test_gradients_flow_in_float64():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    zq = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    yq = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 1]])
    assert torch.autograd.gradcheck(lambda a, b: prototypical_loss(get_prototypes(a, y, 3), b, yq), (z, zq))
    assert torch.autograd.gradcheck(lambda a, b: matching_loss(a, y, b, yq, 3), (z, zq))


def test_bad_input_names_the_argument():
    z = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="embeddings: expected a tensor of 3 dimensions"):
        get_prototypes(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"targets: class indices must be in \[0, 2\)"):
        get_prototypes(z, torch.tensor([[0, 1, 2]]), 2)
    with pytest.raises(ValueError, match="targets: expected shape"):
        get_prototypes(z, torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ValueError, match="integer class indices"):
        get_prototypes(z, torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="same batch size"):
        prototypical_loss(torch.zeros(2, 2, 2), z, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="test_targets"):
        matching_loss(z, torch.zeros(1, 3, dtype=torch.long), z, torch.zeros(1, 2, dtype=torch.long), 2)


def test_download_true_fetches_omniglot_then_loads(monkeypatch, tmp_path):
    calls, loads = [], []

    def fake_load(folder, **kw):
        loads.append(folder)
        if len(loads) == 1:
            raise FileNotFoundError("Omniglot not found")
        from metalearn.data.storage import ClassImages
        return ClassImages.from_labels(torch.zeros(40, 1, 28, 28, dtype=torch.uint8), torch.arange(40) // 4)

    monkeypatch.setattr(helpers, "load_omniglot", fake_load)
    monkeypatch.setattr("metalearn.data.download.download_dataset", lambda name, root: calls.append((name, root)))
    ds = helpers.omniglot(tmp_path, shots=1, ways=5, test_shots=2, download=True)
    assert calls == [("omniglot", tmp_path)] and len(loads) == 2 and ds.num_classes == 10
    loads.clear()
    with pytest.raises(FileNotFoundError, match="Omniglot not found"):
        helpers.omniglot(tmp_path, shots=1, ways=5, download=False)
    assert calls == [("omniglot", tmp_path)]


# ----------------------------------------------------------------------------- the example scripts' loops
def _real_omniglot() -> str:
    env = os.environ.get("METALEARN_DATA")
    if not env or not (Path(env) / "omniglot" / "images_background.npz").is_file():
        pytest.skip("real Omniglot: METALEARN_DATA not set / omniglot missing")
    return env


class _Embedding(torch.nn.Module):
    """The shape contract of torchmeta's example models: (B, N, C, H, W) -> (B, N, D)."""

    def __init__(self) -> None:
        super().__init__()
        from metalearn.nn import Conv4
        self.encoder = Conv4(1, 32)

    def forward(self, inputs):
        z = self.encoder(inputs.view(-1, *inputs.shape[2:]))
        return z.view(*inputs.shape[:2], -1)


def _accuracy_after(step_loss, batches: int, seed: int = 0) -> float:
    """Run a torchmeta-example-style loop (the only metalearn names are the imports at the top of this file)."""
    from metalearn.data.helpers import BatchMetaDataLoader, omniglot
    torch.manual_seed(seed)
    dataset = omniglot(_real_omniglot(), shots=1, ways=5, shuffle=True, test_shots=5, meta_train=True,
                       download=False)
    dataloader = BatchMetaDataLoader(dataset, batch_size=8, shuffle=True, num_workers=2)
    model = _Embedding()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accs = []
    for batch_idx, batch in enumerate(dataloader):
        model.zero_grad()
        train_inputs, train_targets = batch["train"]
        test_inputs, test_targets = batch["test"]
        loss, acc = step_loss(model(train_inputs), train_targets, model(test_inputs), test_targets,
                              dataset.num_classes_per_task)
        loss.backward()
        optimizer.step()
        accs.append(acc)
        if batch_idx + 1 >= batches:
            break
    return sum(accs[-5:]) / 5


def test_protonet_example_loop_runs_with_import_changes_only():
    def step(train_emb, train_y, test_emb, test_y, ways):
        protos = get_prototypes(train_emb, train_y, ways)
        loss = prototypical_loss(protos, test_emb, test_y)
        with torch.no_grad():
            sq = ((protos.unsqueeze(1) - test_emb.unsqueeze(2)) ** 2).sum(-1)   # (B, M, C)
            acc = float((sq.argmin(-1) == test_y).float().mean())
        return loss, acc

    assert _accuracy_after(step, 40) > 0.6                                   # chance is 0.2


def test_matching_example_loop_runs_with_import_changes_only():
    def step(train_emb, train_y, test_emb, test_y, ways):
        loss = matching_loss(train_emb, train_y, test_emb, test_y, ways)
        with torch.no_grad():
            pred = matching_log_probas(train_emb, train_y, test_emb, ways).argmax(dim=1)
            acc = float((pred == test_y).float().mean())
        return loss, acc

    assert _accuracy_after(step, 40) > 0.6


# ----------------------------------------------------------------------------- MAML / ANIL ported to Adaptable
class _Net(torch.nn.Module):
    """The porting guide's network: torchmeta's MAML example model in plain nn layers (smaller)."""

    def __init__(self, ways: int = 3, hidden: int = 8) -> None:
        super().__init__()

        def block(cin, cout):
            return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1),
                                       torch.nn.BatchNorm2d(cout, track_running_stats=False),
                                       torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.features = torch.nn.Sequential(block(1, hidden), block(hidden, hidden))
        self.classifier = torch.nn.Linear(hidden * 4, ways)

    def forward(self, inputs):
        return self.classifier(self.features(inputs).flatten(1))


def _reference_meta_grads(model, tasks, step, adapt_prefix, first_order):
    """gradient_update_parameters' rule by hand: theta' = theta - step * dL_support/dtheta on the adapted names."""
    from torch.func import functional_call
    params = dict(model.named_parameters())
    names = [n for n in params if n.startswith(adapt_prefix)]
    outer = 0.
    for x, y, xq, yq in tasks:
        inner = F.cross_entropy(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(inner, [params[n] for n in names], create_graph=not first_order)
        fast = {**params, **{n: params[n] - step * (g.detach() if first_order else g) for n, g in zip(names, grads)}}
        outer = outer + F.cross_entropy(functional_call(model, fast, (xq,)), yq)
    outer = outer / len(tasks)
    return torch.autograd.grad(outer, list(params.values()))


@pytest.mark.parametrize("adapt,first_order", [("all", False), ("all", True), ("classifier", False)])
def test_maml_and_anil_ported_to_adaptable_match_the_hand_rule(adapt, first_order):
    from metalearn import Adaptable
    torch.manual_seed(0)
    model = _Net().double()
    g = torch.Generator().manual_seed(1)
    tasks = [(torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(6) % 3,
              torch.randn(9, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(9) % 3) for _ in range(2)]
    maml = Adaptable(model, lr=0.4, first_order=first_order, adapt=adapt)
    maml.zero_grad()
    outer = torch.tensor(0., dtype=torch.float64)
    for x, y, xq, yq in tasks:                             # the loop of the porting guide
        task = maml.clone()
        task.adapt(F.cross_entropy(task(x), y))
        outer = outer + F.cross_entropy(task(xq), yq)
    (outer / len(tasks)).backward()
    ref = _reference_meta_grads(model, tasks, 0.4, "" if adapt == "all" else adapt, first_order)
    for (name, p), r in zip(model.named_parameters(), ref):
        assert p.grad is not None and torch.allclose(p.grad, r, atol=1e-10), name
