"""Dataset distillation (Wang, Zhu, Torralba & Efros 2018, "Dataset Distillation", arXiv:1811.10959): the math,
as pure functions of plain tensors and parameter dicts.

A distilled set is ``S`` batches of synthetic images ``x̃_s`` (``ipc`` images per class each, labels fixed:
``[0]*ipc + [1]*ipc + ...``) and ``S·E`` step sizes ``η̃_t`` (one per inner step; ``E`` epochs over the batches).
Training a network on it is plain gradient descent from an initialisation ``θ_0``:

    θ_{t+1} = θ_t − η̃_t · ∇_θ ℓ(x̃_{t mod S}, ỹ; θ_t),   t = 0 .. S·E − 1        (paper, eq. 3 / Algorithm 1)

and the distilled set is learned by minimising the loss of the trained network ``θ_{SE}`` on real data,
``L(x̃, η̃) = ℓ(x_real, y_real; θ_{SE}(x̃, η̃))``, with the gradient back-propagated through every inner step
(second order: the inner gradients stay on the autograd graph). With a fixed ``θ_0`` the set is learned for
that initialisation; with a fresh ``θ_0 ~ p(θ_0)`` per outer step it must work for unseen initialisations.

Step sizes are stored unconstrained: ``η̃ = softplus(raw)`` (`step_lrs`), so they stay positive.

The inner loop runs on the functional core (``metalearn.functional.call`` with ``torch.func.grad``, as in
``metalearn.inner.adapt``); nothing here mutates its inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad

from metalearn.checks import ArgumentError, check_int
from metalearn.functional import call
from metalearn.types import Params


def distilled_labels(classes: int, per_class: int, device: str | torch.device = "cpu") -> Tensor:
    """Labels of one distilled batch: ``(classes * per_class,)`` = ``[0]*per_class + [1]*per_class + ...``."""
    classes, per_class = check_int("classes", classes, 1), check_int("per_class", per_class, 1)
    return torch.arange(classes, device=device).repeat_interleave(per_class)


def inverse_softplus(x: float | Tensor) -> Tensor:
    """``raw`` with ``softplus(raw) = x`` (x > 0): ``log(expm1(x))``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if not bool((x > 0).all()):
        raise ArgumentError(f"x: expected step sizes > 0, got {x}")
    return torch.where(x > 20, x, torch.log(torch.expm1(x)))


def step_lrs(raw_lrs: Tensor) -> Tensor:
    """The inner step sizes ``η̃ = softplus(raw_lrs)``, (S·E,)."""
    return F.softplus(raw_lrs)


def train_on_distilled(model: nn.Module, params: Params, images: Tensor, labels: Tensor, lrs: Tensor,
                       epochs: int, buffers: Params | None = None) -> Params:
    """Gradient descent on the distilled set: ``epochs`` passes over the ``S`` batches of ``images``.

    Args:
        model: called as ``call(model, params, buffers, x) -> logits``.
        params: the initialisation ``θ_0`` (name -> tensor; not modified).
        images: ``(S, n, C, H, W)``: batch ``s`` is used at inner steps ``s, S + s, 2S + s, ...``.
        labels: ``(n,)``, the labels of every batch.
        lrs: ``(S * epochs,)`` step sizes, one per inner step (tensors: gradients flow into them).
        epochs: passes over the batches.
        buffers: the model's buffers, passed to ``call`` (None: the module's own).

    Returns:
        The trained parameters ``θ_{S·E}``, a new dict, differentiable in ``images``, ``lrs`` and ``params``
        (second order).
    """
    epochs = check_int("epochs", epochs, 1)
    if images.dim() < 3:
        raise ArgumentError(f"images: expected (steps, n, ...) with one batch per step, got shape {tuple(images.shape)}")
    steps = images.shape[0]
    if lrs.shape != (steps * epochs,):
        raise ArgumentError(f"lrs: expected ({steps * epochs},) step sizes ({steps} batches x {epochs} epochs), "
                            f"got shape {tuple(lrs.shape)}")
    if labels.shape != (images.shape[1],):
        raise ArgumentError(f"labels: expected ({images.shape[1]},) (one per image of a batch), "
                            f"got shape {tuple(labels.shape)}")
    bufs = buffers or {}

    def loss_fn(p: Params, x: Tensor) -> Tensor:
        return F.cross_entropy(call(model, p, bufs, x), labels)

    grad_fn = grad(loss_fn)
    t = 0
    for _ in range(epochs):
        for s in range(steps):
            g = grad_fn(params, images[s])
            params = {n: p - lrs[t] * g[n] for n, p in params.items()}
            t += 1
    return params


def distill_loss(model: nn.Module, init: Params, images: Tensor, labels: Tensor, raw_lrs: Tensor, epochs: int,
                 real_x: Tensor, real_y: Tensor, buffers: Params | None = None) -> Tensor:
    """The outer objective ``L(x̃, η̃)``: cross-entropy on a real batch of the network trained on the distilled set.

    Args:
        model: Called as ``call(model, params, buffers, x) -> logits``.
        init: The initialisation the network is trained from.
        images: ``(S, n, C, H, W)`` distilled images.
        labels: ``(n,)``, the labels of every batch.
        raw_lrs: ``(S * epochs,)`` raw step sizes (the step sizes are their softplus).
        epochs: Passes over the batches.
        real_x: The real batch's images.
        real_y: Their labels.
        buffers: The model's buffers, passed to ``call`` (None: the module's own).

    Returns:
        The scalar loss, differentiable in ``images`` and ``raw_lrs``.
    """
    trained = train_on_distilled(model, init, images, labels, step_lrs(raw_lrs), epochs, buffers)
    return F.cross_entropy(call(model, trained, buffers or {}, real_x), real_y)


@torch.no_grad()
def accuracy(model: nn.Module, params: Params, x: Tensor, y: Tensor, batch_size: int = 2000,
             buffers: Params | None = None) -> float:
    """Top-1 accuracy (%) of ``call(model, params, buffers, x)`` on ``(x, y)``, evaluated in batches.

    Args:
        model: The network.
        params: Its parameters.
        x: The images.
        y: Their labels.
        batch_size: Images per forward pass.
        buffers: The model's buffers, passed to ``call`` (None: the module's own).

    Raises:
        ArgumentError: ``x`` holds no image.
    """
    if x.shape[0] == 0:
        raise ArgumentError("x: expected at least one image to evaluate on")
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        logits = call(model, params, buffers or {}, x[i:i + batch_size])
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    return 100.0 * correct / x.shape[0]


def train_and_score(model: nn.Module, init: Params, images: Tensor, labels: Tensor, lrs: Tensor, epochs: int,
                    x: Tensor, y: Tensor, buffers: Params | None = None) -> float:
    """Train from ``init`` on a (distilled or baseline) set, then the accuracy (%) on ``(x, y)``; no meta-graph.

    A diverged network (non-finite parameters) scores 0.

    Args:
        model: Called as ``call(model, params, buffers, x) -> logits``.
        init: The initialisation.
        images: ``(S, n, C, H, W)`` training images.
        labels: ``(n,)``, the labels of every batch.
        lrs: ``(S * epochs,)`` step sizes.
        epochs: Passes over the batches.
        x: The evaluation images.
        y: Their labels.
        buffers: The model's buffers, passed to ``call`` (None: the module's own).
    """
    with torch.enable_grad():
        trained = train_on_distilled(model, {n: p.detach() for n, p in init.items()}, images.detach(), labels,
                                     lrs.detach(), epochs, buffers)
    trained = {n: p.detach() for n, p in trained.items()}
    if not all(bool(torch.isfinite(p).all()) for p in trained.values()):
        return 0.0                     # diverged: scored 0% (the argmax of NaN logits means nothing)
    return accuracy(model, trained, x, y, buffers=buffers)


def mean_std(values: list[float]) -> dict:
    """``{"mean", "std", "ci95", "n", "values"}`` of a list of accuracies (std with n − 1; ci95 = 1.96·std/√n)."""
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": m, "std": sd, "ci95": 1.96 * sd / math.sqrt(n) if n > 1 else 0.0, "n": n,
            "values": [round(v, 4) for v in values]}
