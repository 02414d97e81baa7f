"""A MAML-style wrapper for any ``nn.Module``, a thin layer over the functional core.

It does the job of learn2learn's ``MAML(model, lr).clone().adapt(loss)`` and higher's ``innerloop_ctx``, with no
module cloning and no monkey-patching: [`Adaptable.clone`][metalearn.wrapper.Adaptable.clone] returns a
*view* that holds a parameter dict (initially the module's own parameters) and calls the module through
``torch.func.functional_call``; [`Adapted.adapt`][metalearn.wrapper.Adapted.adapt] replaces that dict with a new
one, one differentiable update step, using the same update rules as [`metalearn.inner`][metalearn.inner].  The
module itself is never changed, so the query loss's gradient reaches its parameters (and, for Meta-SGD, the
learned step sizes).

Examples:
    ```python
    maml = Adaptable(model, lr=0.4)                # model: any nn.Module (conv, norm layers, LSTM, ...)
    opt = torch.optim.Adam(maml.parameters(), 1e-3)
    task = maml.clone()
    task.adapt(F.cross_entropy(task(support_x), support_y))
    F.cross_entropy(task(query_x), query_y).backward()   # meta-gradient in model.parameters()
    opt.step(); opt.zero_grad()
    ```
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metalearn.functional import ParamFilter, call, check_trainable, select
from metalearn.inner import meta_sgd, sgd
from metalearn.types import Params


class Adaptable(nn.Module):
    """Wrap ``model`` for inner-loop adaptation.

    Args:
        model: any ``nn.Module``.
        lr: inner step size (with ``learn_lr``, the initial value of the learned per-entry step sizes).
        first_order: inner gradients as constants (first-order MAML); per call overridable in ``adapt``.
        adapt: which parameters adapt ([`ParamFilter`][metalearn.functional.ParamFilter]): ``"all"``, a submodule prefix
            such as ``"head"`` (ANIL), a list of prefixes, or ``fn(name, tensor) -> bool``.
        learn_lr: Meta-SGD step sizes, registered as parameters of this wrapper.
        allow_unused: treat the gradient of an adapted parameter that the loss does not use as zero
            (otherwise that is an error).
        check_finite: raise ``FloatingPointError`` on a NaN/inf support loss (one host sync per step).
    """

    def __init__(self, model: nn.Module, lr: float, first_order: bool = False, adapt: ParamFilter = "all",
                 learn_lr: bool = False, allow_unused: bool = False, check_finite: bool = True) -> None:
        super().__init__()
        self.module = model
        params = dict(model.named_parameters())
        self.names = select(params, adapt)
        check_trainable(params, self.names)
        self.first_order, self.allow_unused, self.check_finite = first_order, allow_unused, check_finite
        self.rule = meta_sgd(lr) if learn_lr else sgd(lr)
        self.step_sizes = nn.ParameterList(
            [nn.Parameter(t) for t in self.rule.init({n: params[n] for n in self.names}).values()])

    def forward(self, *args, **kwargs):
        """The wrapped module at its own (meta-learned) parameters."""
        return self.module(*args, **kwargs)

    def hyper(self) -> Params:
        """The learned Meta-SGD step sizes by parameter name (``{}`` without ``learn_lr``)."""
        return dict(zip(self.names, self.step_sizes)) if len(self.step_sizes) else {}

    def clone(self) -> "Adapted":
        """A fresh functional view at the module's current parameters (nothing is copied)."""
        return Adapted(self, dict(self.module.named_parameters()))


class Adapted:
    """The wrapped module at the parameters in ``params``; [`adapt`][metalearn.wrapper.Adapted.adapt] moves them
    one step. Made by [`Adaptable.clone`][metalearn.wrapper.Adaptable.clone]; calling it runs the module with those
    parameters."""

    def __init__(self, owner: Adaptable, params: Params) -> None:
        self.owner, self.params, self.steps = owner, params, 0

    def __call__(self, *args, **kwargs):
        return call(self.owner.module, self.params, None, *args, **kwargs)

    def adapt(self, loss: Tensor, first_order: bool | None = None) -> "Adapted":
        """One differentiable update on ``loss``.

        Args:
            loss: A scalar computed with this view (``task(x)``), not with the module.
            first_order: Detach the inner gradient for this step; None uses the wrapper's setting.

        Returns:
            ``self``, so that steps chain: ``task.adapt(l1).adapt(l2)``.

        Raises:
            ValueError: ``loss`` is not a scalar or does not require grad (computed without this view, or
                under ``torch.no_grad()``).
            FloatingPointError: the loss is NaN or infinite (with ``check_finite``).
        """
        owner = self.owner
        first_order = owner.first_order if first_order is None else first_order
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss: expected a scalar tensor, got {type(loss).__name__} "
                             f"{tuple(loss.shape) if isinstance(loss, Tensor) else ''}")
        if owner.check_finite and not bool(torch.isfinite(loss.detach()).all()):
            raise FloatingPointError(f"support loss is {float(loss.detach())} at inner step {self.steps} "
                                     "(check the learning rate and the inputs)")
        fast = {n: self.params[n] for n in owner.names}
        if not loss.requires_grad:
            raise ValueError("loss: does not require grad; compute it with this view (task(x)), not the module, "
                             "and not under torch.no_grad()")
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order,
                                    allow_unused=owner.allow_unused)
        grads = {n: (torch.zeros_like(p) if g is None else (g.detach() if first_order else g))
                 for (n, p), g in zip(fast.items(), grads)}
        self.params = {**self.params, **owner.rule.update(fast, grads, owner.hyper())}
        self.steps += 1
        return self
