"""Differentiable inner loops: update rules as ``(init, update)`` pairs and [`adapt`][metalearn.inner.adapt].

An [`UpdateRule`][metalearn.inner.UpdateRule] is two pure functions:

* ``init(params) -> hyper``: the rule's own meta-parameters for the parameters it will adapt (``{}`` for plain
  SGD; one learned step size per parameter entry for Meta-SGD).  The caller owns them (e.g. registers them as
  ``nn.Parameter`` so the meta-optimiser trains them).
* ``update(params, grads, hyper) -> new_params``: one step; returns a new dict, never mutates its inputs.

[`adapt`][metalearn.inner.adapt] runs ``steps`` updates on a support loss with ``torch.func.grad``, so the same code
runs for one
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
    """An inner-loop update rule as two pure functions (as optax's ``GradientTransformation``).

    Attributes:
        init: ``init(params) -> hyper``: the rule's own meta-parameters for the parameters it will adapt
            (``{}`` for plain SGD, one step size per entry for Meta-SGD).
        update: ``update(params, grads, hyper) -> new_params``: one step; returns a new dict and never
            mutates its inputs.
    """

    init: Callable[[Params], Params]
    update: Callable[[Params, Params, Params], Params]


def sgd(lr: float) -> UpdateRule:
    """Plain gradient descent, ``p - lr * g`` (MAML, Finn et al. 2017, eq. 1).

    Args:
        lr: The step size (> 0).

    Returns:
        The rule; its ``init`` returns ``{}`` (no meta-parameters).

    Raises:
        ArgumentError: ``lr`` is not a positive finite number.
    """
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

    Args:
        lr: The initial value of every step size (> 0).

    Returns:
        The rule; ``init(params)`` returns one ``alpha`` tensor per parameter, which the caller trains.

    Raises:
        ArgumentError: ``lr`` is not a positive finite number; at ``update``, a parameter without its step size.
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

    ``params`` is not modified. With ``first_order`` the inner gradients are constants (FOMAML); otherwise the
    meta-gradient flows through them (second order). The same code runs for one task and inside
    ``torch.func.vmap`` over tasks.

    Args:
        loss_fn: ``loss_fn(params) -> scalar`` (``loss_fn(params, buffers)`` when ``buffers`` is given).
        params: The parameters to adapt (a subset of the model's: the rest stay fixed inside ``loss_fn``).
        steps: Number of updates (>= 0).
        rule: The update rule ([`sgd`][metalearn.inner.sgd], [`meta_sgd`][metalearn.inner.meta_sgd], or your own).
        hyper: The rule's meta-parameters (``rule.init(params)``); None for ``{}``.
        first_order: Detach the inner gradients (first-order MAML).
        buffers: Passed to ``loss_fn`` as a non-differentiated input, so in-place buffer updates (BatchNorm
            running statistics) are allowed and land in that dict (pass copies to keep the module's own buffers
            unchanged).

    Returns:
        ``(adapted_params, losses)``: a new dict, and the ``steps`` support losses seen before each update
        (detached; check them for NaN outside any vmap).

    Examples:
        ```python
        from metalearn.functional import call, params_and_buffers
        from metalearn.inner import adapt, sgd

        params, buffers = params_and_buffers(model)
        loss = lambda p: F.cross_entropy(call(model, p, buffers, support_x), support_y)
        fast, losses = adapt(loss, params, steps=5, rule=sgd(0.4))
        query_loss = F.cross_entropy(call(model, fast, buffers, query_x), query_y)   # second order
        ```
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
    """Raise ``FloatingPointError`` naming the first task and inner step whose loss is NaN/inf (one host sync).

    Args:
        losses: (tasks, steps) or (steps,) support losses; row ``i`` is task ``first_task + i`` of the
            meta-batch.
        what: What the losses are, for the message.
        first_task: Index of the first row's task (a chunk of the meta-batch starts there).

    Raises:
        FloatingPointError: A loss is NaN or infinite.
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
