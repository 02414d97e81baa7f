"""Differentiable inner loops: update rules as ``(init, update)`` pairs and :func:`adapt`.

An :class:`UpdateRule` is two pure functions:

* ``init(params) -> hyper``: the rule's own meta-parameters for the parameters it will adapt (``{}`` for plain
  SGD; one learned step size per parameter entry for Meta-SGD).  The caller owns them (e.g. registers them as
  ``nn.Parameter`` so the meta-optimiser trains them).
* ``update(params, grads, hyper) -> new_params``: one step; returns a new dict, never mutates its inputs.

:func:`adapt` runs ``steps`` updates on a support loss with ``torch.func.grad``, so the same code runs for one
task, inside ``torch.func.vmap`` over tasks, for training (second order: the update stays on the autograd graph)
and for evaluation (``first_order=True`` detaches the inner gradients).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.func import grad

from metalearn.checks import ArgumentError, check_float, check_int
from metalearn.types import Params


class UpdateRule(NamedTuple):
    init: Callable[[Params], Params]
    update: Callable[[Params, Params, Params], Params]


def sgd(lr: float) -> UpdateRule:
    """Plain gradient descent, ``p - lr * g`` (MAML, Finn et al. 2017, eq. 1)."""
    lr = check_float("lr", lr, 0.0, strict=True)

    def init(params: Params) -> Params:
        return {}

    def update(params: Params, grads: Params, hyper: Params) -> Params:
        return {n: p - lr * grads[n] for n, p in params.items()}

    return UpdateRule(init, update)


def meta_sgd(lr: float) -> UpdateRule:
    """Meta-SGD (Li et al. 2017): ``p - alpha * g`` with a learned ``alpha`` of ``p``'s shape, initialised to ``lr``.

    ``alpha`` is a meta-parameter (it may become negative: the paper learns direction and size).
    ``update`` needs a step size in ``hyper`` for every parameter it updates (``init`` of the same parameters).
    """
    lr = check_float("lr", lr, 0.0, strict=True)

    def init(params: Params) -> Params:
        return {n: torch.full_like(p.detach(), lr) for n, p in params.items()}

    def update(params: Params, grads: Params, hyper: Params) -> Params:
        missing = [n for n in params if n not in hyper]
        if missing:
            raise ArgumentError(f"hyper: no learned step size for parameter(s) {missing}; meta_sgd needs one per "
                                f"adapted parameter, as init(params) makes them (hyper has {sorted(hyper)})")
        return {n: p - hyper[n] * grads[n] for n, p in params.items()}

    return UpdateRule(init, update)


def adapt(loss_fn: Callable[..., Tensor], params: Params, steps: int, rule: UpdateRule,
          hyper: Params | None = None, first_order: bool = False,
          buffers: Params | None = None) -> tuple[Params, Tensor]:
    """``steps`` inner updates of ``params`` on ``loss_fn(params) -> scalar``.

    Returns ``(adapted_params, losses)`` with ``losses`` the ``steps`` support losses seen before each update
    (detached; check them for NaN outside any vmap).  ``params`` is not modified.  With ``first_order`` the
    inner gradients are constants (FOMAML); otherwise the meta-gradient flows through them (second order).

    ``buffers``: when given, ``loss_fn(params, buffers)`` is called with them as a non-differentiated input, so
    in-place buffer updates (BatchNorm running statistics) are allowed and land in that dict (pass copies to
    keep the module's own buffers unchanged).
    """
    steps = check_int("steps", steps, 0)
    if not isinstance(params, dict) or not all(isinstance(p, Tensor) for p in params.values()):
        raise ArgumentError(f"params: expected a dict of tensors (name -> Tensor), got {type(params).__name__}")
    hyper = {} if hyper is None else hyper

    def with_aux(p: Params, *state: Params) -> tuple[Tensor, Tensor]:
        loss = loss_fn(p, *state)
        return loss, loss.detach()

    grad_fn = grad(with_aux, has_aux=True)
    state = () if buffers is None else (buffers,)
    losses = []
    for _ in range(steps):
        grads, loss = grad_fn(params, *state)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        params = rule.update(params, grads, hyper)
        losses.append(loss)
    return params, (torch.stack(losses) if losses else torch.zeros(0))


def check_finite(losses: Tensor, what: str = "support loss", first_task: int = 0) -> None:
    """Raise ``FloatingPointError`` naming the first task and inner step whose loss is NaN/inf.

    ``losses``: (tasks, steps) or (steps,); row ``i`` is task ``first_task + i`` of the meta-batch (a chunk of
    it starts at ``first_task``).  One host sync.
    """
    if losses.numel() == 0:
        return
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        value = float(losses[tuple(idx)])
        where = (f"task {first_task + idx[0]} of the meta-batch at inner step {idx[1]}" if losses.dim() == 2
                 else f"inner step {idx[0]}")
        raise FloatingPointError(f"{what} is {value} for {where} (check the learning rate and the inputs)")
