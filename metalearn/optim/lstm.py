"""A coordinatewise LSTM optimizer, learned by gradient descent (Andrychowicz et al. 2016, "Learning to learn by
gradient descent by gradient descent").

One small 2-layer LSTM (20 units) is applied to every coordinate of every parameter, with weights shared across
coordinates and a separate hidden state per coordinate. All coordinates of all parameters are flattened into one
batch of N, so one step is one batched LSTM step on a (2, N) input (one matmul per layer, with the weights of
an ``nn.LSTM``), whatever the number of parameter tensors. The update is ``θ ← θ + output_scale · head(h_top)``.

Two interfaces share the same math:

* functional (optax style): ``state = net.init(params)``; ``updates, state = net.update(grads, state)``;
  ``params = apply_updates(params, updates)``. Inputs are never mutated.
* ``torch.optim``-like: ``opt = LearnedOptimizer(model.parameters(), net)``; ``loss.backward(); opt.step();
  opt.zero_grad()``.

The optimisee's gradient enters as a constant (it is detached): meta-gradients flow through the LSTM's weights
and through the parameter trajectory, never through the optimisee's gradient (no second derivatives, sec. 2.1).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from metalearn.train.checkpoint import atomic_save, load_checkpoint

Params = dict  # dict[str, Tensor]

KIND = "lstm_optimizer"


def preprocess_gradients(g: Tensor, p: float = 10.0) -> Tensor:
    """Gradient preprocessing of Andrychowicz et al. 2016, appendix A.  g: (N,)  ->  (N, 2).

    ``(log|g| / p, sign g)`` where ``|g| >= e^-p``, else ``(-1, e^p · g)``: the first input carries the magnitude
    on a log scale, the second the sign (or, for tiny gradients, the scaled value).

    Args:
        g: (N,) gradients.
        p: The preprocessing constant (> 0).

    Raises:
        ValueError: ``p`` <= 0.

    Examples:
        >>> preprocess_gradients(torch.tensor([1.0, -1e-6]), p=10.0)
        tensor([[ 0.0000,  1.0000],
                [-1.0000, -0.0220]])
    """
    if p <= 0:
        raise ValueError(f"p: expected > 0, got {p}")
    big = g.abs() >= math.exp(-p)
    # clamp so that the unused branch of torch.where never sees log(0) (its gradient would be nan)
    log_mag = torch.log(g.abs().clamp_min(math.exp(-p))) / p
    first = torch.where(big, log_mag, torch.full_like(g, -1.0))
    second = torch.where(big, torch.sign(g), g * math.exp(p))
    return torch.stack([first, second], dim=-1)


@dataclass(frozen=True)
class LSTMOptimizerConfig:
    """Architecture of [`LSTMOptimizer`][metalearn.optim.lstm.LSTMOptimizer]; saved next to its weights.

    Attributes:
        hidden_size: Units per LSTM layer (20 in the paper).
        num_layers: LSTM layers (2 in the paper).
        preprocess_p: p of the gradient preprocessing: g -> (log|g|/p, sign g) if |g| >= e^-p, else (-1, e^p g).
        output_scale: Multiplier of the LSTM's output: the update is ``output_scale * head(h)``.
    """

    hidden_size: int = 20
    num_layers: int = 2
    preprocess_p: float = 10.0
    output_scale: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size: expected >= 1, got {self.hidden_size}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {self.num_layers}")
        if not self.preprocess_p > 0:
            raise ValueError(f"preprocess_p: expected > 0, got {self.preprocess_p}")
        if not self.output_scale > 0:
            raise ValueError(f"output_scale: expected > 0, got {self.output_scale}")


class LSTMState(NamedTuple):
    """Per-coordinate LSTM state. h, c: (num_layers, hidden, N) (coordinates last); ``layout``: ((name, shape), ...) of the
    parameters in the order their coordinates were flattened, checked on every update."""

    h: Tensor
    c: Tensor
    layout: tuple

    def detach(self) -> "LSTMState":
        """The same state cut from the autograd graph (the start of a new truncated unroll)."""
        return LSTMState(self.h.detach(), self.c.detach(), self.layout)


def _check_tensors(tensors: Mapping[str, Tensor], what: str) -> tuple[torch.dtype, torch.device]:
    if not tensors:
        raise ValueError(f"{what}: expected at least one tensor, got none")
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}[{name!r}]: expected a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{what}[{name!r}]: expected a floating-point tensor, got {t.dtype}")
        if t.dtype != t0.dtype:
            raise ValueError(f"{what}: mixed dtypes ({name0!r} is {t0.dtype}, {name!r} is {t.dtype}); the LSTM "
                             "optimizer batches every coordinate in one call, so all tensors must share one dtype")
        if t.device != t0.device:
            raise ValueError(f"{what}: mixed devices ({name0!r} on {t0.device}, {name!r} on {t.device}); move "
                             "all parameters to one device")
    return t0.dtype, t0.device


class LSTMOptimizer(nn.Module):
    """The learned optimizer m(∇f; φ): a coordinatewise LSTM with shared weights.

    Args:
        hidden_size: Units per LSTM layer.
        num_layers: LSTM layers.
        preprocess_p: p of the gradient preprocessing
            ([`preprocess_gradients`][metalearn.optim.lstm.preprocess_gradients]).
        output_scale: Multiplier of the LSTM's output.
        forget_bias: Added to the forget gate's bias of every layer at initialisation only (it is not part of
            the config; a loaded checkpoint has its own weights). 0 keeps ``nn.LSTM``'s initialisation; the
            authors' released code uses Sonnet's LSTM, which adds 1: an untrained optimizer then keeps about
            σ(1) ≈ 0.73 of its cell state per step instead of σ(0) = 0.5.

    Examples:
        ```python
        net = LSTMOptimizer()                           # 2 layers, 20 units, p = 10, output scale 0.1
        params = {"w": torch.randn(3, 4)}
        state = net.init(params)
        grads = {"w": torch.randn(3, 4)}
        updates, state = net.update(grads, state)       # updates["w"]: (3, 4), same dtype as grads["w"]
        params = apply_updates(params, updates)
        ```
    """

    def __init__(self, hidden_size: int = 20, num_layers: int = 2, preprocess_p: float = 10.0,
                 output_scale: float = 0.1, forget_bias: float = 0.0) -> None:
        super().__init__()
        self.config = LSTMOptimizerConfig(hidden_size, num_layers, preprocess_p, output_scale)
        self.lstm = nn.LSTM(input_size=2, hidden_size=hidden_size, num_layers=num_layers)
        self.head = nn.Linear(hidden_size, 1)
        if forget_bias:
            with torch.no_grad():
                for layer in range(num_layers):      # gates are stacked i, f, g, o: f is rows H..2H
                    getattr(self.lstm, f"bias_hh_l{layer}")[hidden_size:2 * hidden_size].add_(forget_bias)

    @classmethod
    def from_config(cls, config: LSTMOptimizerConfig) -> "LSTMOptimizer":
        """A fresh optimizer of the architecture ``config`` describes."""
        return cls(**asdict(config))

    def _weight(self) -> Tensor:
        return self.head.weight

    def init(self, params: Mapping[str, Tensor]) -> LSTMState:
        """Zero state for every coordinate of ``params`` (dtype of the LSTM's weights, device of ``params``)."""
        _, device = _check_tensors(params, "params")
        n = sum(p.numel() for p in params.values())
        w = self._weight()
        if w.device != device:
            raise ValueError(f"params are on {device} but the LSTM optimizer is on {w.device}; call .to({device})")
        shape = (self.config.num_layers, self.config.hidden_size, n)
        zeros = torch.zeros(shape, dtype=w.dtype, device=device)
        layout = tuple((k, tuple(p.shape)) for k, p in params.items())
        return LSTMState(zeros, zeros.clone(), layout)

    def forward(self, flat_grad: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One LSTM step on all coordinates.  flat_grad: (N,) -> (update (N,), h, c (num_layers, hidden, N))."""
        H = self.config.hidden_size
        # feature-major layout: coordinates along the last dim, so every gate is a contiguous (H, N) block and
        # the elementwise work runs on contiguous memory (2-3x faster on CPU than nn.LSTM's fused kernel or an
        # (N, 4H) layout at these shapes); the equations and weights are nn.LSTM's (tests compare the two)
        x = preprocess_gradients(flat_grad.detach(), self.config.preprocess_p).t()  # (2, N), a constant
        hs, cs = [], []
        for layer in range(self.config.num_layers):
            b = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
            gates = torch.mm(getattr(self.lstm, f"weight_ih_l{layer}"), x)              # (4H, N): i, f, g, o
            gates = gates.addmm_(getattr(self.lstm, f"weight_hh_l{layer}"), h[layer]).add_(b.unsqueeze(1))
            i_f = torch.sigmoid(gates[:2 * H])
            c_new = i_f[H:] * c[layer] + i_f[:H] * torch.tanh(gates[2 * H:3 * H])
            x = torch.sigmoid(gates[3 * H:]) * torch.tanh(c_new)                     # (H, N)
            hs.append(x)
            cs.append(c_new)
        out = torch.addmm(self.head.bias.unsqueeze(1), self.head.weight, x)[0]      # (N,)
        return out * self.config.output_scale, torch.stack(hs), torch.stack(cs)

    def update(self, grads: Mapping[str, Tensor], state: LSTMState, *,
               check_finite: bool = True) -> tuple[dict, LSTMState]:
        """One step: the updates for ``grads`` and the new state.

        Args:
            grads: Gradients with the keys and shapes the state was made for (in the same order); they are
                detached.
            state: The state from [`init`][metalearn.optim.lstm.LSTMOptimizer.init] or the previous update.
            check_finite: Raise on a non-finite gradient (one host sync per step; turn it off inside a tight
                loop on a GPU once the problem is known to be well behaved).

        Returns:
            ``(updates, new_state)``: ``updates[k]`` has the shape and dtype of ``grads[k]``; add it to the
            parameter ([`apply_updates`][metalearn.optim.lstm.apply_updates]).

        Raises:
            ValueError: ``grads`` do not match the state, sit on another device, or are not finite.
        """
        dtype, device = _check_tensors(grads, "grads")
        layout = tuple((k, tuple(g.shape)) for k, g in grads.items())
        if layout != state.layout:
            raise ValueError(f"grads: keys/shapes {layout} do not match the state, made for {state.layout}")
        w = self._weight()
        if device != w.device:
            raise ValueError(f"grads are on {device} but the LSTM optimizer is on {w.device}; call .to({device})")
        flat = torch.cat([g.detach().reshape(-1) for g in grads.values()]).to(w.dtype)   # (N,)
        if check_finite and not bool(torch.isfinite(flat).all()):
            bad = [k for k, g in grads.items() if not bool(torch.isfinite(g).all())]
            raise ValueError(f"grads: non-finite values (nan/inf) in {bad}; the optimisee diverged or its loss "
                             "is not finite")
        out, h, c = self(flat, state.h, state.c)
        updates, i = {}, 0
        for k, g in grads.items():
            n = g.numel()
            updates[k] = out[i:i + n].view(g.shape).to(dtype)
            i += n
        return updates, LSTMState(h, c, state.layout)

    # --- save / load -------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, **extra) -> Path:
        """Write weights + config atomically (``extra``: JSON-like metadata kept with them)."""
        return atomic_save({"format": 1, "kind": KIND, "config": asdict(self.config),
                            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                            "extra": extra}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "LSTMOptimizer":
        """The optimizer written by [`save`][metalearn.optim.lstm.LSTMOptimizer.save], in the dtype it was saved in.

        Args:
            path: The file (or a ``best.pt`` / ``last.pt`` of [`meta_train`][metalearn.optim.meta.meta_train]).
            map_location: Where the optimizer goes.

        Raises:
            ValueError: The checkpoint does not hold an LSTM optimizer.
        """
        state = load_checkpoint(path, map_location=map_location)
        if state.get("kind") != KIND:
            raise ValueError(f"checkpoint {str(path)!r} holds {state.get('kind')!r}, not an LSTM optimizer")
        net = cls.from_config(LSTMOptimizerConfig(**state["config"]))
        dtype = next((t.dtype for t in state["state_dict"].values() if t.is_floating_point()), None)
        if dtype is not None:
            net.to(dtype)   # keep the saved precision (load_state_dict would cast into the float32 weights)
        net.load_state_dict(state["state_dict"])
        return net.to(map_location)


def apply_updates(params: Mapping[str, Tensor], updates: Mapping[str, Tensor]) -> dict:
    """New dict ``{k: params[k] + updates[k]}``; ``params`` is not mutated."""
    if set(params) != set(updates):
        raise ValueError(f"updates: keys {sorted(updates)} do not match params {sorted(params)}")
    return {k: p + updates[k] for k, p in params.items()}


class LearnedOptimizer(torch.optim.Optimizer):
    """Drive an ``nn.Module`` with a trained [`LSTMOptimizer`][metalearn.optim.lstm.LSTMOptimizer], like any
    ``torch.optim`` optimizer.

    Each parameter keeps its slice of the LSTM state in ``state[p]["h"]``, ``["c"]`` (layers, hidden, numel), so
    ``state_dict()`` / ``load_state_dict()`` work as usual. Between those calls the state of all parameters is kept
    as one (layers, hidden, N) tensor while the set of parameters with gradients stays the same, and a step is
    one batched LSTM call without gathering or scattering state. The LSTM's weights are not trained here (no
    autograd through step).

    Args:
        params: The parameters to optimise (``model.parameters()``), as for any ``torch.optim`` optimizer.
        net: The trained LSTM optimizer.
        check_finite: Raise on a non-finite gradient (one host sync per step).

    Examples:
        ```python
        opt = LearnedOptimizer(model.parameters(), LSTMOptimizer.load("best.pt"))
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        ```
    """

    def __init__(self, params: Iterable, net: LSTMOptimizer, check_finite: bool = True) -> None:
        super().__init__(params, {})
        self.net = net
        self.check_finite = check_finite
        self._flat: tuple | None = None        # (params with grads, h, c): the batched state

    def _sync(self) -> None:
        """Write the batched state back into the per-parameter ``self.state`` entries."""
        if self._flat is None:
            return
        ps, h, c = self._flat
        i = 0
        for p in ps:
            n = p.numel()
            self.state[p]["h"] = h[..., i:i + n].contiguous()
            self.state[p]["c"] = c[..., i:i + n].contiguous()
            i += n
        self._flat = None

    def state_dict(self) -> dict:
        self._sync()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self._flat = None
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ps = tuple(p for group in self.param_groups for p in group["params"] if p.grad is not None)
        if not ps:
            return loss
        grads = {str(i): p.grad for i, p in enumerate(ps)}
        _check_tensors(grads, "parameter gradients")
        layout = tuple((k, tuple(g.shape)) for k, g in grads.items())
        if self._flat is not None and len(self._flat[0]) == len(ps) and all(a is b for a, b in zip(self._flat[0], ps)):
            h, c = self._flat[1], self._flat[2]
        else:                                   # first step, or another set of parameters has gradients
            self._sync()
            cfg, w = self.net.config, self.net._weight()
            for p in ps:
                st = self.state[p]
                if "h" not in st:
                    st["h"] = torch.zeros(cfg.num_layers, cfg.hidden_size, p.numel(), dtype=w.dtype,
                                          device=w.device)
                    st["c"] = torch.zeros_like(st["h"])
            h = torch.cat([self.state[p]["h"] for p in ps], dim=2)
            c = torch.cat([self.state[p]["c"] for p in ps], dim=2)
        updates, new = self.net.update(grads, LSTMState(h, c, layout), check_finite=self.check_finite)
        for k, p in zip(grads, ps):
            p.add_(updates[k])
        self._flat = (ps, new.h, new.c)
        return loss
        grads = {str(i): p.grad for i, p in enumerate(ps)}
        _check_tensors(grads, "parameter gradients")
        cfg, w = self.net.config, self.net._weight()
        for p in ps:
            st = self.state[p]
            if "h" not in st:
                st["h"] = torch.zeros(cfg.num_layers, cfg.hidden_size, p.numel(), dtype=w.dtype, device=w.device)
                st["c"] = torch.zeros_like(st["h"])
        h = torch.cat([self.state[p]["h"] for p in ps], dim=2)
        c = torch.cat([self.state[p]["c"] for p in ps], dim=2)
        layout = tuple((k, tuple(g.shape)) for k, g in grads.items())
        updates, new = self.net.update(grads, LSTMState(h, c, layout), check_finite=self.check_finite)
        i = 0
        for k, p in zip(grads, ps):
            n = p.numel()
            self.state[p]["h"] = new.h[..., i:i + n].contiguous()
            self.state[p]["c"] = new.c[..., i:i + n].contiguous()
            p.add_(updates[k])
            i += n
        return loss
