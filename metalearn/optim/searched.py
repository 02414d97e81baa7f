"""PowerSign and AddSign, the update rules found by Neural Optimizer Search (Bello, Zoph, Vasudevan & Le 2017,
"Neural Optimizer Search with Reinforcement Learning", ICML 2017, sec. 5).

With ``m`` the moving average of the gradient (``m ← β·m + (1 − β)·g``, β = 0.9, no bias correction) and
``f(t)`` a decay of the sign term, a step is ``θ ← θ − lr · u`` with

* PowerSign: ``u = α^{f(t)·sign(g)·sign(m)} · g``      (α = e)
* AddSign:   ``u = (α + f(t)·sign(g)·sign(m)) · g``    (α = 1)

When the gradient and its running average agree in sign, the step grows (×α^f, or ×(α + f)); when they
disagree it shrinks (×α^−f, or ×(α − f)). ``m`` is updated before it is read (the rule of the paper's reference
implementation, TensorFlow's ``ApplyPowerSign`` / ``ApplyAddSign``). The sign decays ``f(t)`` of the paper, with
``t`` the number of steps taken before this one (so ``f(0) = 1``) and ``T`` the total number of steps:

* ``constant``: ``f(t) = 1``
* ``linear``  (ld):  ``f(t) = 1 − t/T``
* ``cyclic``  (cd_n): ``f(t) = 0.5·(1 + cos(2π·n·t/T))``                 (n periods, default 1)
* ``restart`` (rd_n): ``f(t) = 0.5·(1 + cos(π·((n·t) mod T)/T))``        (SGDR-style warm restarts, default n = 2)

``t`` is clipped at ``T``: after ``T`` steps linear and cyclic hold their last value. With ``f = 0`` both rules
are plain SGD (PowerSign) or SGD with lr·α (AddSign).

Two interfaces share the same math:

* ``torch.optim``: ``PowerSign(model.parameters(), lr=0.1, decay="linear", total_steps=1000)``; ``AddSign(...)``.
* functional, for differentiable inner loops: ``powersign_rule`` / ``addsign_rule`` return a
  ``StatefulRule`` ``(init, update)`` shaped like ``metalearn.inner.UpdateRule`` but carrying the
  moving average and the step count in an explicit state: ``state = rule.init(params)``;
  ``params, state = rule.update(params, grads, state)`` (new dicts, inputs never mutated; written for one task,
  so it runs under ``torch.func.vmap``). ``adapt_stateful`` is ``metalearn.inner.adapt`` for such rules.

Examples:
    >>> import torch
    >>> from metalearn.optim.searched import PowerSign
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = PowerSign([w], lr=0.1)
    >>> (w ** 2).sum().backward(); opt.step()       # g = 2, m = 0.2: signs agree, step 0.1 · e · 2
    >>> round(w.item(), 4)
    0.4563
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple

import torch
from torch import Tensor
from torch.func import grad

from metalearn.checks import ArgumentError, check_float, check_int
from metalearn.types import Params

#: the sign decays f(t) of Bello et al. 2017: constant (none), linear (ld), cyclic (cd_n), restart (rd_n)
DECAYS = ("constant", "linear", "cyclic", "restart")
#: default number of periods n of the cyclic and restart decays
DEFAULT_PERIODS = {"cyclic": 1.0, "restart": 2.0}
#: short names in the paper's notation, used in benchmark tables: PowerSign-ld, AddSign-cd, ...
DECAY_SUFFIX = {"constant": "", "linear": "-ld", "cyclic": "-cd", "restart": "-rd"}


def _check_decay(decay: str, total_steps: int | None, periods: float | None) -> tuple[str, int | None, float]:
    if decay not in DECAYS:
        raise ArgumentError(f"decay: expected one of {', '.join(DECAYS)}, got {decay!r}")
    if decay != "constant":
        if total_steps is None:
            raise ArgumentError(f"total_steps: the {decay} decay needs the total number of steps T, got None")
        total_steps = check_int("total_steps", total_steps, 1)
    elif total_steps is not None:
        total_steps = check_int("total_steps", total_steps, 1)
    n = DEFAULT_PERIODS.get(decay, 1.0) if periods is None else check_float("periods", periods, 0.0, strict=True)
    return decay, total_steps, n


def sign_decay(decay: str, t: int | float | Tensor, total_steps: int | None = None,
               periods: float | None = None) -> Tensor:
    """``f(t)`` of the sign term (module docstring), as a float64 tensor (0-d for a number ``t``).

    Args:
        decay: One of ``DECAYS``.
        t: Steps taken so far (0 for the first update); a tensor works elementwise and under autograd/vmap.
        total_steps: ``T`` of the linear / cyclic / restart decays (required for them).
        periods: ``n`` of the cyclic and restart decays (default ``DEFAULT_PERIODS``).

    Raises:
        ArgumentError: An unknown ``decay``, a missing ``total_steps``, or a value out of range.

    Examples:
        >>> [round(float(sign_decay("linear", t, 10)), 2) for t in (0, 5, 10, 20)]
        [1.0, 0.5, 0.0, 0.0]
        >>> [round(float(sign_decay("restart", t, 8, periods=2)), 3) for t in (0, 2, 4, 6)]
        [1.0, 0.5, 1.0, 0.5]
    """
    decay, T, n = _check_decay(decay, total_steps, periods)
    t = torch.as_tensor(t, dtype=torch.float64)
    if decay == "constant":
        return torch.ones_like(t)
    t = t.clamp(0.0, float(T))
    if decay == "linear":
        return 1.0 - t / T
    if decay == "cyclic":
        return 0.5 * (1.0 + torch.cos(2.0 * math.pi * n * t / T))
    return 0.5 * (1.0 + torch.cos(math.pi * torch.remainder(n * t, T) / T))           # restart


def _multiplier(kind: str, agree: Tensor, f: Tensor, alpha: float) -> Tensor:
    """α^{f·agree} (PowerSign) or α + f·agree (AddSign); agree = sign(g)·sign(m) in {−1, 0, 1}."""
    if kind == "powersign":
        return torch.exp((math.log(alpha) * f) * agree)
    return alpha + f * agree


def _check_common(lr: float, beta: float, alpha: float, kind: str) -> tuple[float, float, float]:
    lr = check_float("lr", lr, 0.0)
    beta = check_float("beta", beta, 0.0)
    if beta >= 1.0:
        raise ArgumentError(f"beta: expected a number in [0, 1), got {beta}")
    alpha = check_float("alpha", alpha, 0.0, strict=(kind == "powersign"))
    return lr, beta, alpha


class _SignOptimizer(torch.optim.Optimizer):
    _kind = ""

    def __init__(self, params: Iterable, lr: float, beta: float, alpha: float, decay: str,
                 total_steps: int | None, periods: float | None) -> None:
        lr, beta, alpha = _check_common(lr, beta, alpha, self._kind)
        decay, total_steps, periods = _check_decay(decay, total_steps, periods)
        super().__init__(params, dict(lr=lr, beta=beta, alpha=alpha, decay=decay, total_steps=total_steps,
                                      periods=periods))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient (``closure`` re-evaluates the loss, optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                g, m = p.grad, state["exp_avg"]
                m.mul_(group["beta"]).add_(g, alpha=1.0 - group["beta"])
                f = sign_decay(group["decay"], state["step"], group["total_steps"], group["periods"]).to(g.dtype)
                mult = _multiplier(self._kind, torch.sign(g) * torch.sign(m), f, group["alpha"])
                p.sub_(group["lr"] * (mult * g))
                state["step"] += 1
        return loss


class PowerSign(_SignOptimizer):
    """PowerSign (Bello et al. 2017): ``θ ← θ − lr · α^{f(t)·sign(g)·sign(m)} · g``, ``m ← β·m + (1 − β)·g``.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        lr: learning rate (>= 0).
        beta: decay of the moving average ``m`` (in [0, 1)), 0.9 in the paper.
        alpha: the base (> 0), e in the paper.
        decay: ``f(t)``, one of ``DECAYS``.
        total_steps: ``T`` of the linear / cyclic / restart decays (required for them).
        periods: ``n`` of the cyclic and restart decays (default ``DEFAULT_PERIODS``).
    """
    _kind = "powersign"

    def __init__(self, params: Iterable, lr: float = 1e-2, beta: float = 0.9, alpha: float = math.e,
                 decay: str = "constant", total_steps: int | None = None, periods: float | None = None) -> None:
        super().__init__(params, lr, beta, alpha, decay, total_steps, periods)


class AddSign(_SignOptimizer):
    """AddSign (Bello et al. 2017): ``θ ← θ − lr · (α + f(t)·sign(g)·sign(m)) · g``, ``m ← β·m + (1 − β)·g``.

    Arguments as ``PowerSign``; ``alpha`` (>= 0) is 1 in the paper, so a step is 2·lr·g when the signs agree
    and 0 when they disagree (at ``f = 1``).
    """
    _kind = "addsign"

    def __init__(self, params: Iterable, lr: float = 1e-2, beta: float = 0.9, alpha: float = 1.0,
                 decay: str = "constant", total_steps: int | None = None, periods: float | None = None) -> None:
        super().__init__(params, lr, beta, alpha, decay, total_steps, periods)


# --------------------------------------------------------------------------------------------- functional


class SignState(NamedTuple):
    """State of a functional sign rule: ``step`` (0-d float64 tensor, steps taken) and ``m`` (name -> moving
    average of the gradient, shaped like the parameter)."""
    step: Tensor
    m: Params


class StatefulRule(NamedTuple):
    """An update rule with state, the stateful sibling of ``metalearn.inner.UpdateRule``:
    ``init(params) -> state`` and ``update(params, grads, state) -> (new_params, new_state)``."""
    init: Callable[[Params], SignState]
    update: Callable[[Params, Params, SignState], tuple[Params, SignState]]


def _sign_rule(kind: str, lr: float, beta: float, alpha: float, decay: str, total_steps: int | None,
               periods: float | None) -> StatefulRule:
    lr, beta, alpha = _check_common(lr, beta, alpha, kind)
    decay, total_steps, periods = _check_decay(decay, total_steps, periods)

    def init(params: Params) -> SignState:
        device = next(iter(params.values())).device if params else None
        return SignState(torch.zeros((), dtype=torch.float64, device=device),
                         {n: torch.zeros_like(p.detach()) for n, p in params.items()})

    def update(params: Params, grads: Params, state: SignState) -> tuple[Params, SignState]:
        missing = [n for n in params if n not in state.m]
        if missing:
            raise ArgumentError(f"state: no moving average for parameter(s) {missing}; make the state with "
                                f"init(params) of the same parameters (it has {sorted(state.m)})")
        f = sign_decay(decay, state.step, total_steps, periods)
        new_params, new_m = {}, {}
        for n, p in params.items():
            g = grads[n]
            m = beta * state.m[n] + (1.0 - beta) * g
            mult = _multiplier(kind, torch.sign(g) * torch.sign(m), f.to(g.dtype), alpha)
            new_params[n] = p - lr * (mult * g)
            new_m[n] = m
        return new_params, SignState(state.step + 1, new_m)

    return StatefulRule(init, update)


def powersign_rule(lr: float, beta: float = 0.9, alpha: float = math.e, decay: str = "constant",
                   total_steps: int | None = None, periods: float | None = None) -> StatefulRule:
    """PowerSign as a functional rule (the math of ``PowerSign``; arguments the same).

    Args:
        lr: Learning rate (>= 0).
        beta: Decay of the moving average ``m`` (in [0, 1)), 0.9 in the paper.
        alpha: The base (> 0), e in the paper.
        decay: ``f(t)``, one of ``DECAYS``.
        total_steps: ``T`` of the linear / cyclic / restart decays (required for them).
        periods: ``n`` of the cyclic and restart decays (default ``DEFAULT_PERIODS``).

    Examples:
        >>> rule = powersign_rule(0.1)
        >>> p = {"w": torch.tensor([1.0])}
        >>> state = rule.init(p)
        >>> p, state = rule.update(p, {"w": torch.tensor([2.0])}, state)
        >>> round(p["w"].item(), 4), int(state.step)
        (0.4563, 1)
    """
    return _sign_rule("powersign", lr, beta, alpha, decay, total_steps, periods)


def addsign_rule(lr: float, beta: float = 0.9, alpha: float = 1.0, decay: str = "constant",
                 total_steps: int | None = None, periods: float | None = None) -> StatefulRule:
    """AddSign as a functional rule (the math of ``AddSign``; arguments the same).

    Args:
        lr: Learning rate (>= 0).
        beta: Decay of the moving average ``m`` (in [0, 1)), 0.9 in the paper.
        alpha: The base (>= 0), 1 in the paper.
        decay: ``f(t)``, one of ``DECAYS``.
        total_steps: ``T`` of the linear / cyclic / restart decays (required for them).
        periods: ``n`` of the cyclic and restart decays (default ``DEFAULT_PERIODS``).
    """
    return _sign_rule("addsign", lr, beta, alpha, decay, total_steps, periods)


def adapt_stateful(loss_fn: Callable[..., Tensor], params: Params, steps: int, rule: StatefulRule,
                   state: SignState | None = None, first_order: bool = False,
                   buffers: Params | None = None) -> tuple[Params, Tensor, SignState]:
    """``steps`` updates of ``params`` with a ``StatefulRule``: ``metalearn.inner.adapt`` for stateful rules.

    Args:
        loss_fn: ``loss_fn(params) -> scalar`` (``loss_fn(params, buffers)`` when ``buffers`` is given).
        params: The parameters to adapt.
        steps: Number of updates (>= 0).
        rule: The stateful rule ([`powersign_rule`][metalearn.optim.searched.powersign_rule], ...).
        state: The rule's state to start from (default ``rule.init(params)``).
        first_order: Detach the inner gradients; second order otherwise (the sign terms are piecewise constant:
            the meta-gradient flows through ``g`` and the parameters).
        buffers: Passed to ``loss_fn`` as a non-differentiated input.

    Returns:
        ``(adapted_params, losses, state)``; ``losses`` (steps,) detached, seen before each update.

    Raises:
        ArgumentError: ``params`` is not a dict of tensors, or a bad ``steps``.
    """
    steps = check_int("steps", steps, 0)
    if not isinstance(params, dict) or not all(isinstance(p, Tensor) for p in params.values()):
        raise ArgumentError(f"params: expected a dict of tensors (name -> Tensor), got {type(params).__name__}")
    state = rule.init(params) if state is None else state

    def with_aux(p: Params, *extra: Params) -> tuple[Tensor, Tensor]:
        loss = loss_fn(p, *extra)
        return loss, loss.detach()

    grad_fn = grad(with_aux, has_aux=True)
    extra = () if buffers is None else (buffers,)
    losses = []
    for _ in range(steps):
        grads, loss = grad_fn(params, *extra)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        params, state = rule.update(params, grads, state)
        losses.append(loss)
    return params, (torch.stack(losses) if losses else torch.zeros(0)), state


def searched_baselines(total_steps: int, decays: Iterable[str] = DECAYS
                       ) -> dict[str, Callable[[list, float], torch.optim.Optimizer]]:
    """``{name: make(params, lr)}`` for PowerSign and AddSign with each of ``decays`` over ``total_steps``.

    Names are in the paper's notation (``PowerSign``, ``PowerSign-ld``, ``AddSign-cd``, ...); the result is for
    ``metalearn.optim.tune_lr`` and ``metalearn.optim.run_optimizer``.

    Args:
        total_steps: ``T`` of the decays.
        decays: The decays, each of ``DECAYS``.
    """
    total_steps = check_int("total_steps", total_steps, 1)
    out: dict[str, Callable[[list, float], torch.optim.Optimizer]] = {}
    for cls in (PowerSign, AddSign):
        for d in decays:
            _check_decay(d, total_steps, None)
            out[cls.__name__ + DECAY_SUFFIX[d]] = (
                lambda ps, lr, c=cls, dd=d: c(ps, lr=lr, decay=dd, total_steps=None if dd == "constant"
                                              else total_steps))
    return out
