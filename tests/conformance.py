"""Shared learner conformance check: one function every learner's tests call on a tiny episode.

Usage (in ``tests/test_<learner>.py``; pytest puts ``tests/`` on ``sys.path``)::

    from conformance import check_learner

    def test_conformance():
        check_learner(lambda: ProtoNet(Conv4(in_channels=1, hidden=8)), tiny_episode())

What it checks (STYLE.md item 6), each with a message naming the learner and the property:

* ``loss(episode)`` is a finite scalar; logits have shape ``([B,] N*Q, ways)``, are finite, and keep the input's
  dtype and device;
* ``learner.backward(episode)`` (what the trainer calls) gives every trainable parameter a finite gradient, and
  a non-zero one unless its name is listed in ``zero_grad_ok``;
* the episode's tensors are not mutated by ``loss``, ``backward`` or ``predict``;
* seeded determinism: two learners built by ``make_learner`` under the same ``torch.manual_seed`` give equal
  losses, logits and gradients; ``predict`` in eval mode gives the same logits twice and carries no graph;
* for a batched episode (``support_x`` of dim 5), with ``batch_equals_loop``: eval-mode ``predict`` on the batch
  equals ``predict`` task by task.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from metalearn.learners.base import Learner
from metalearn.types import Episode


def _tensors(ep: Episode) -> dict[str, Tensor]:
    return {"support_x": ep.support_x, "support_y": ep.support_y, "query_x": ep.query_x, "query_y": ep.query_y}


def _grads(learner: Learner) -> dict[str, Tensor | None]:
    return {n: (None if p.grad is None else p.grad.detach().clone())
            for n, p in learner.named_parameters() if p.requires_grad}


def check_learner(make_learner: Callable[[], Learner], episode: Episode, *, seed: int = 0,
                  zero_grad_ok: Iterable[str] = (), batch_equals_loop: bool = True,
                  atol: float = 1e-5, rtol: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Run the shared learner checks on ``episode``; raise AssertionError on the first failure.

    ``make_learner() -> Learner`` must build a fresh learner (it is called under ``torch.manual_seed(seed)``, so
    two calls give equal initial weights). Returns ``(loss, logits)`` of the first training-mode call, for any
    learner-specific assertions the caller wants to add.
    """
    zero_ok = set(zero_grad_ok)
    before = {k: v.clone() for k, v in _tensors(episode).items()}
    lead = episode.support_x.shape[:-4]                     # () or (B,)
    n_query = episode.query_x.shape[-4]

    def build() -> Learner:
        torch.manual_seed(seed)
        learner = make_learner()
        learner.train()
        for p in learner.parameters():
            p.grad = None
        return learner

    def run(learner: Learner) -> tuple[Tensor, Tensor, dict]:
        torch.manual_seed(seed + 1)
        loss, logits = learner.backward(episode)
        return loss, logits, _grads(learner)

    a = build()
    name = type(a).__name__
    loss, logits, grads = run(a)

    # finite scalar loss, well-formed logits
    assert loss.dim() == 0, f"{name}: loss must be a scalar, got shape {tuple(loss.shape)}"
    assert torch.isfinite(loss), f"{name}: loss is not finite ({loss.item()})"
    want = (*lead, n_query, episode.ways)
    assert tuple(logits.shape) == want, f"{name}: logits shape {tuple(logits.shape)}, expected {want}"
    assert torch.isfinite(logits).all(), f"{name}: logits are not finite"
    assert logits.dtype == episode.support_x.dtype, \
        f"{name}: logits dtype {logits.dtype} differs from the input dtype {episode.support_x.dtype}"
    assert logits.device == episode.support_x.device, f"{name}: logits on {logits.device}, input on " \
        f"{episode.support_x.device}"

    # every trainable parameter gets a finite (non-zero) gradient
    assert grads, f"{name}: has no trainable parameters"
    for n, g in grads.items():
        assert g is not None, f"{name}: parameter {n!r} got no gradient"
        assert torch.isfinite(g).all(), f"{name}: parameter {n!r} has a non-finite gradient"
        if n not in zero_ok:
            assert g.abs().sum() > 0, f"{name}: parameter {n!r} got an all-zero gradient"

    # seeded determinism: same seed -> same loss, logits, gradients
    b = build()
    loss_b, logits_b, grads_b = run(b)
    assert torch.equal(loss, loss_b), f"{name}: loss not deterministic under a fixed seed ({loss} vs {loss_b})"
    assert torch.equal(logits.detach(), logits_b.detach()), f"{name}: logits not deterministic under a fixed seed"
    for n in grads:
        assert torch.equal(grads[n], grads_b[n]), f"{name}: gradient of {n!r} not deterministic under a fixed seed"

    # predict: eval mode, no graph, repeatable
    a.eval()
    p1 = a.predict(episode)
    p2 = a.predict(episode)
    assert tuple(p1.shape) == want, f"{name}: predict shape {tuple(p1.shape)}, expected {want}"
    assert not p1.requires_grad, f"{name}: predict returned logits that carry a graph"
    assert torch.isfinite(p1).all(), f"{name}: predict returned non-finite logits"
    assert torch.equal(p1, p2), f"{name}: predict in eval mode is not repeatable"

    if episode.batched and batch_equals_loop:
        per_task = torch.stack([a.predict(episode[i]) for i in range(len(episode))])
        assert torch.allclose(p1, per_task, atol=atol, rtol=rtol), \
            f"{name}: batched predict differs from the per-task loop (max |diff| " \
            f"{(p1 - per_task).abs().max().item():.3g})"

    # inputs not mutated by loss, backward or predict
    for k, v in _tensors(episode).items():
        assert torch.equal(v, before[k]), f"{name}: episode.{k} was mutated"
    return loss, logits
