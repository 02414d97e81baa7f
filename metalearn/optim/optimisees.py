"""Optimisee families: distributions over optimisation problems, written for ONE optimisee.

A family has two methods:

* ``loss(params, batch) -> Tensor``: a scalar, differentiable in ``params`` (a ``dict[str, Tensor]``);
  models are called as functions of their parameters with ``torch.func.functional_call``.
* ``sample(generator) -> Problem``: a fresh optimisee, i.e. its initial parameters and ``batch(t)``, the
  (deterministic) batch it sees at step ``t``.

Optionally ``eval_batch(problem)`` gives a larger fixed batch to score the final parameters on.
[`ProblemBatch`][metalearn.optim.optimisees.ProblemBatch] stacks M problems along a new leading dimension and
evaluates them with
``torch.func.vmap`` (one task written, many batched); the Python loop over problems is the test reference.

Families here (Andrychowicz et al. 2016, sec. 3): [`QuadraticFamily`][metalearn.optim.optimisees.QuadraticFamily]
(random ‖Wθ − y‖²) and
[`MLPFamily`][metalearn.optim.optimisees.MLPFamily] (an MLP classifier on MNIST-like images, batch 128, any
widths/depth, sigmoid or ReLU, uniform or N(0, 0.01²) initialisation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap


@dataclass(frozen=True)
class Problem:
    """One optimisee: initial ``params`` and ``batch(t)``, the batch of step ``t`` (same value on every call)."""

    params: dict
    batch: Callable[[int], Any]
    eval: Any = None      # optional fixed batch to score final parameters on (see ``eval_batch``)


class OptimiseeFamily(Protocol):
    """What a family of optimisees provides: ``loss(params, batch)`` and ``sample(generator) -> Problem``."""

    def loss(self, params: dict, batch: Any) -> Tensor: ...

    def sample(self, generator: torch.Generator) -> Problem: ...


def _stack(items: Sequence[Any]) -> Any:
    """Stack a list of batches (tensors, or tuples/lists/dicts of tensors) along a new dim 0."""
    first = items[0]
    if isinstance(first, Tensor):
        return torch.stack(items)
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([it[i] for it in items]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _stack([it[k] for it in items]) for k in first}
    raise TypeError(f"batch: expected a Tensor or a tuple/list/dict of Tensors, got {type(first).__name__}")


def sample_problems(family: OptimiseeFamily, n: int, generator: torch.Generator) -> list[Problem]:
    """``n`` fresh optimisees of ``family``, drawn with ``generator`` (the same seed draws the same problems)."""
    if n < 1:
        raise ValueError(f"n: expected >= 1 optimisees, got {n}")
    return [family.sample(generator) for _ in range(n)]


class ProblemBatch:
    """M problems of one family, stacked: ``params[k]`` is (M, *shape); ``losses(params, t)`` is (M,).

    Because the problems are independent, the gradient of ``losses(...).sum()`` with respect to the stacked
    parameters is each problem's own gradient, which is what a coordinatewise optimizer needs.

    Args:
        family: The family the problems come from (its ``loss`` is vmapped over them).
        problems: At least one problem ([`sample_problems`][metalearn.optim.optimisees.sample_problems]).
    """

    def __init__(self, family: OptimiseeFamily, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("problems: expected at least one problem")
        self.family, self.problems = family, list(problems)
        keys = list(problems[0].params)
        self.params = {k: torch.stack([p.params[k] for p in problems]) for k in keys}   # (M, *shape)
        self._vloss = vmap(family.loss)

    def __len__(self) -> int:
        return len(self.problems)

    def batch(self, t: int) -> Any:
        return _stack([p.batch(t) for p in self.problems])

    def losses(self, params: dict, t: int) -> Tensor:
        """(M,) loss of each problem at ``params`` (stacked) on its step-``t`` batch."""
        return self._vloss(params, self.batch(t))

    def losses_loop(self, params: dict, t: int) -> Tensor:
        """Reference for [`losses`][metalearn.optim.optimisees.ProblemBatch.losses]: a Python loop over problems."""
        return torch.stack([self.family.loss({k: v[i] for k, v in params.items()}, p.batch(t))
                            for i, p in enumerate(self.problems)])

    @torch.no_grad()
    def eval_losses(self, params: dict) -> Tensor:
        """(M,) loss of each problem's ``params`` on its ``eval`` batch (falls back to the step-0 batch)."""
        out = []
        for i, p in enumerate(self.problems):
            b = p.eval if p.eval is not None else p.batch(0)
            out.append(self.family.loss({k: v[i] for k, v in params.items()}, b))
        return torch.stack(out)


class QuadraticFamily:
    """f(θ) = ‖Wθ − y‖², W (d, d) and y (d,) i.i.d. standard normal, θ₀ ~ N(0, I) (Andrychowicz et al. sec. 3.1).

    The "batch" of every step is the problem's own (W, y): the objective is deterministic.

    Args:
        dim: d, the number of coordinates (10 in the paper).
        dtype: The floating-point type of W, y and θ.
        device: Where the problems are drawn.
    """

    def __init__(self, dim: int = 10, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        if dim < 1:
            raise ValueError(f"dim: expected >= 1, got {dim}")
        self.dim, self.dtype, self.device = dim, dtype, torch.device(device)

    def loss(self, params: dict, batch: tuple[Tensor, Tensor]) -> Tensor:
        w, y = batch
        return (w @ params["theta"] - y).pow(2).sum()

    def sample(self, generator: torch.Generator) -> Problem:
        d = self.dim
        w, y, theta = (torch.randn(shape, generator=generator, dtype=self.dtype)
                       for shape in ((d, d), (d,), (d,)))
        w, y, theta = w.to(self.device), y.to(self.device), theta.to(self.device)
        return Problem({"theta": theta}, lambda t, wy=(w, y): wy)


class MLP(nn.Module):
    """Fully connected classifier ``in -> hidden... -> out`` with sigmoid or ReLU between layers.

    Args:
        in_features: Inputs (flattened image size).
        hidden: Widths of the hidden layers (at least one).
        out_features: Outputs (classes).
        activation: ``sigmoid`` or ``relu``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, activation: str = "sigmoid"):
        super().__init__()
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"activation: expected 'sigmoid' or 'relu', got {activation!r}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden: expected one or more positive widths, got {hidden!r}")
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = torch.sigmoid if activation == "sigmoid" else F.relu

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class MLPFamily:
    """An MLP on image classification, batch 128 (Andrychowicz et al. sec. 3.2: 1 hidden layer of 20 sigmoid
    units on MNIST). Each optimisee has its own initialisation and its own sequence of minibatches drawn with
    replacement from ``images``.

    The paper does not say how the MLP is initialised. ``init="uniform"`` (the default) is PyTorch's default
    for ``nn.Linear``, uniform ±1/√fan_in for weights and biases. ``init="normal"`` draws every weight and bias
    from N(0, init_std²) with ``init_std = 0.01``, as the authors' released code does for its MNIST problem.
    It starts every optimisee near the same flat point (all hidden units alike, loss ≈ log 10), where the
    gradients of the first layer are more than 100× smaller than those of the last.

    Args:
        images: (n, H, W) or (n, D), uint8 or float in [0, 1].
        labels: (n,) int64 in [0, classes).
        hidden: Widths of the hidden layers.
        activation: ``sigmoid`` (the paper) or ``relu``.
        batch_size: Images per optimisee step (128 in the paper).
        classes: Outputs of the MLP.
        eval_size: Images of the fixed batch the final parameters are scored on (None: all of them).
        init: ``uniform`` (±1/√fan_in) or ``normal`` (N(0, init_std²)).
        init_std: Standard deviation of ``init="normal"``.

    Examples:
        ```python
        from metalearn.data.mnist import load_mnist
        images, labels = load_mnist("train")
        family = MLPFamily(images, labels)          # 1 hidden layer of 20 sigmoid units, batch 128
        ```
    """

    def __init__(self, images: Tensor, labels: Tensor, hidden: Sequence[int] = (20,), activation: str = "sigmoid",
                 batch_size: int = 128, classes: int = 10, eval_size: int | None = 5000, init: str = "uniform",
                 init_std: float = 0.01) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if init not in ("uniform", "normal"):
            raise ValueError(f"init: expected 'uniform' or 'normal', got {init!r}")
        if not init_std > 0:
            raise ValueError(f"init_std: expected > 0, got {init_std}")
        self.init, self.init_std = init, float(init_std)
        self.images = images.reshape(images.shape[0], -1)
        self.labels = labels
        self.batch_size = batch_size
        self.model = MLP(self.images.shape[1], tuple(hidden), classes, activation).to("meta")  # shapes only
        self.shapes = {k: tuple(v.shape) for k, v in self.model.named_parameters()}
        n_eval = self.images.shape[0] if eval_size is None else min(eval_size, self.images.shape[0])
        self._eval = (self._x(torch.arange(n_eval, device=self.images.device)), self.labels[:n_eval])

    def _x(self, idx: Tensor) -> Tensor:
        x = self.images[idx]
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def loss(self, params: dict, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(functional_call(self.model, params, (x,)), y)

    def sample(self, generator: torch.Generator) -> Problem:
        dev = self.images.device
        params = {}
        for k, shape in self.shapes.items():
            if self.init == "normal":
                params[k] = (torch.randn(shape, generator=generator) * self.init_std).to(dev)
                continue
            fan_in = shape[1] if len(shape) == 2 else self.shapes[k.replace("bias", "weight")][1]
            bound = 1.0 / math.sqrt(fan_in)
            params[k] = ((torch.rand(shape, generator=generator) * 2 - 1) * bound).to(dev)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        n, bs = self.images.shape[0], self.batch_size

        def batch(t: int) -> tuple[Tensor, Tensor]:
            g = torch.Generator().manual_seed(seed + 7919 * t)
            idx = torch.randint(0, n, (bs,), generator=g).to(dev)
            return self._x(idx), self.labels[idx]

        return Problem(params, batch, eval=self._eval)
