"""Test-Time Training layers for sequences: the hidden state is the weight of a small inner model, updated per token
by a gradient step on a self-supervised reconstruction loss (Sun et al. 2024, "Learning to (Learn at Test Time):
RNNs with Expressive Hidden States").

For each head, with learned projections ``theta_K, theta_V, theta_Q`` of the token ``x_t``
(``k_t = theta_K x_t``, ``v_t = theta_V x_t``, ``q_t = theta_Q x_t``) and an inner model ``f(. ; W)``:

* inner loss: ``l(W; x_t) = 0.5 ||f(k_t; W) - v_t||^2``;
* update (mini-batch TTT, mini-batches of ``b`` tokens starting at token 0): for token t in the mini-batch that
  starts after token t', ``W_t = W_t' - sum_{s = t'+1}^{t} eta_s grad l(W_t'; x_s)`` -- all gradients of a
  mini-batch are taken at its starting weights, and token t uses the steps of the tokens up to itself;
  ``b = 1`` is plain online gradient descent, one step per token;
* output: ``z_t = f(q_t; W_t)``, then the heads are concatenated and projected by ``theta_O``.

``eta_s = eta_base * sigmoid(theta_lr x_s) / head_dim`` is a learned per-token, per-head inner learning rate, and
the initial weights ``W_0`` are learned (outer parameters, as are the projections and the inner LayerNorm).
The inner models (per head, ``d = head_dim``):

* [`TTTLinear`][metalearn.nn.ttt_layers.TTTLinear]: ``f(x) = x + LN(W x + b)`` (``inner_norm=False``: ``W x + b``);
* [`TTTMLP`][metalearn.nn.ttt_layers.TTTMLP]: ``f(x) = x + LN(W2 gelu(W1 x + b1) + b2)`` with ``4 d`` hidden units.

Two parallel forms compute the same outputs: ``form="dual"`` never materialises the per-token weights (every
gradient of a linear layer in a mini-batch is an outer product ``g_s x_s^T`` at the mini-batch's starting
weights, so ``W_t h = W h - sum_{s <= t} eta_s g_s (x_s . h)``: a causal-masked matrix product, layer by layer,
the paper's dual form); ``form="scan"`` computes each token's full gradient with ``torch.func.grad`` under
``torch.func.vmap`` and the per-token weights by a cumulative sum.  [`step`][metalearn.nn.ttt_layers.TTTLayer.step]
is the token-by-token recurrence for generation; it continues the state a parallel ``forward`` returns and
gives the same outputs.  The outer model trains end to end through the inner steps (ordinary autograd over
``torch.func.grad``: second order).  Layer norms are written with primitive ops, which are exact under vmap at
second order (see the vmap/BatchNorm page).  Causal: ``z_t`` depends on tokens ``<= t`` only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from metalearn.checks import ArgumentError, check_choice, check_float, check_int

Inner = tuple  # ((W_1, b_1), ..., (W_L, b_L)): the inner model's weights, each with leading dimensions


def layer_norm(h: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last dimension from primitive ops (exact under vmap, also at second order)."""
    mu = h.mean(-1, keepdim=True)
    var = ((h - mu) ** 2).mean(-1, keepdim=True)
    return (h - mu) / torch.sqrt(var + eps) * weight + bias


class TTTLayer(nn.Module):
    """A causal sequence layer whose per-head hidden state is an inner model trained at test time (see the module
    docstring).  Use [`TTTLinear`][metalearn.nn.ttt_layers.TTTLinear] or [`TTTMLP`][metalearn.nn.ttt_layers.TTTMLP].

    Args:
        dim: model width D (input and output).
        heads: number of heads (``dim`` divisible by it); each has its own inner model of width D / heads.
        mini_batch: tokens per inner mini-batch ``b`` (1: one gradient step per token).
        eta_base: scale of the learned inner learning rate.
        inner_norm: inner model ``x + LN(g(x))`` (the paper's) instead of ``g(x)``.
        form: ``"dual"`` or ``"scan"`` (the same outputs).
        hidden: hidden units of the inner model per head (0: a linear inner model).

    ``forward(x)``: x (B, T, D) -> (B, T, D); ``forward(x, return_state=True)`` -> (output, state) where the
    state continues the sequence with [`step`][metalearn.nn.ttt_layers.TTTLayer.step].
    """

    def __init__(self, dim: int, heads: int = 4, mini_batch: int = 16, eta_base: float = 1.0,
                 inner_norm: bool = True, form: str = "dual", hidden: int = 0) -> None:
        super().__init__()
        dim = check_int("dim", dim, 1)
        heads = check_int("heads", heads, 1)
        if dim % heads:
            raise ArgumentError(f"heads: dim={dim} is not divisible by heads={heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.mini_batch = check_int("mini_batch", mini_batch, 1)
        self.eta_base = check_float("eta_base", eta_base, 0.0, strict=True)
        self.inner_norm = bool(inner_norm)
        self.form = check_choice("form", form, ("dual", "scan"))
        self.hidden = check_int("hidden", hidden, 0)
        d = self.head_dim
        self.theta_q = nn.Linear(dim, dim, bias=False)
        self.theta_k = nn.Linear(dim, dim, bias=False)
        self.theta_v = nn.Linear(dim, dim, bias=False)
        self.theta_lr = nn.Linear(dim, heads)
        self.theta_o = nn.Linear(dim, dim, bias=False)
        sizes = [d, self.hidden, d] if self.hidden else [d, d]
        self.inner_w = nn.ParameterList([nn.Parameter(torch.randn(heads, o, i) * 0.02)
                                         for i, o in zip(sizes[:-1], sizes[1:])])
        self.inner_b = nn.ParameterList([nn.Parameter(torch.zeros(heads, o)) for o in sizes[1:]])
        self.ln_w = nn.Parameter(torch.ones(heads, d))
        self.ln_b = nn.Parameter(torch.zeros(heads, d))

    # ------------------------------------------------------------------ the inner model, for one token

    def _f(self, inner: Inner, x: Tensor, ln_w: Tensor, ln_b: Tensor) -> Tensor:
        """f(x; inner) for one head and one token x (d,)."""
        h = x
        for i, (w, b) in enumerate(inner):
            h = w @ h + b
            if i < len(inner) - 1:
                h = F.gelu(h)
        return x + layer_norm(h, ln_w, ln_b) if self.inner_norm else h

    def inner_loss(self, inner: Inner, k: Tensor, v: Tensor, ln_w: Tensor, ln_b: Tensor) -> Tensor:
        """The self-supervised loss ``0.5 ||f(k; inner) - v||^2`` of one token of one head (k, v: (d,))."""
        return 0.5 * ((self._f(inner, k, ln_w, ln_b) - v) ** 2).sum()

    def inner_grad(self, inner: Inner, k: Tensor, v: Tensor, ln_w: Tensor, ln_b: Tensor) -> Inner:
        """``grad l(inner; k, v)`` with respect to the inner weights (torch.func.grad), one token, one head."""
        return grad(self.inner_loss)(inner, k, v, ln_w, ln_b)

    # ------------------------------------------------------------------ projections and state

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, T, D) -> q, k, v (B H, T, d) and eta (B H, T)."""
        b, t, _ = x.shape
        split = lambda z: z.view(b, t, self.heads, self.head_dim).transpose(1, 2).reshape(  # noqa: E731
            b * self.heads, t, self.head_dim)
        eta = self.eta_base / self.head_dim * torch.sigmoid(self.theta_lr(x))           # (B, T, H)
        return (split(self.theta_q(x)), split(self.theta_k(x)), split(self.theta_v(x)),
                eta.transpose(1, 2).reshape(b * self.heads, t))

    def _per_head(self, t: Tensor, batch: int) -> Tensor:
        """A (H, ...) outer parameter -> (B H, ...) (one copy per sequence)."""
        return t[None].expand(batch, *t.shape).reshape(batch * self.heads, *t.shape[1:])

    def init_state(self, batch: int) -> dict:
        """The state before the first token: the learned initial inner weights for each of ``batch`` sequences,
        nothing accumulated, position 0 in the mini-batch."""
        inner = tuple((self._per_head(w, batch), self._per_head(b, batch))
                      for w, b in zip(self.inner_w, self.inner_b))
        zeros = tuple((torch.zeros_like(w), torch.zeros_like(b)) for w, b in inner)
        return {"inner": inner, "acc": zeros, "pos": 0, "batch": batch}

    def _out(self, z: Tensor, batch: int) -> Tensor:
        """z (B H, T, d) -> (B, T, D) through theta_O."""
        t = z.shape[1]
        return self.theta_o(z.view(batch, self.heads, t, self.head_dim).transpose(1, 2).reshape(batch, t, self.dim))

    def _check(self, x: Tensor, what: str = "x", dims: int = 3) -> None:
        shape = "(B, T, D)" if dims == 3 else "(B, D)"
        if not isinstance(x, Tensor) or x.dim() != dims or x.shape[-1] != self.dim or not x.is_floating_point():
            raise ArgumentError(f"{what}: expected a float tensor {shape} with D = {self.dim}, got "
                                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if 0 in x.shape[:-1]:
            raise ArgumentError(f"{what}: expected a non-empty {shape}, got {tuple(x.shape)}")

    # ------------------------------------------------------------------ parallel forms

    def forward(self, x: Tensor, return_state: bool = False):
        self._check(x)
        batch, length = x.shape[:2]
        q, k, v, eta = self._project(x)
        ln_w, ln_b = self._per_head(self.ln_w, batch), self._per_head(self.ln_b, batch)
        inner = self.init_state(batch)["inner"]
        outs, upd, pos = [], None, 0
        for s in range(0, length, self.mini_batch):
            e = slice(s, min(s + self.mini_batch, length))
            chunk = self._dual if self.form == "dual" else self._scan
            z, upd = chunk(inner, q[:, e], k[:, e], v[:, e], eta[:, e], ln_w, ln_b)
            outs.append(z)
            pos = e.stop - e.start
            if pos == self.mini_batch:           # a full mini-batch: its updates become the new weights
                inner = tuple((w - uw, b - ub) for (w, b), (uw, ub) in zip(inner, upd))
                upd, pos = None, 0
        y = self._out(torch.cat(outs, 1), batch)
        if not return_state:
            return y
        acc = upd if upd is not None else tuple((torch.zeros_like(w), torch.zeros_like(b)) for w, b in inner)
        return y, {"inner": inner, "acc": acc, "pos": pos, "batch": batch}

    def _scan(self, inner, q, k, v, eta, ln_w, ln_b):
        """One mini-batch (N, m, d) by per-token gradients (vmap of torch.func.grad) and a cumulative sum."""
        g = vmap(vmap(self.inner_grad, in_dims=(None, 0, 0, None, None)))(inner, k, v, ln_w, ln_b)  # (N, m, ...)
        steps = tuple(tuple(torch.cumsum(eta.view(*eta.shape, *([1] * (t.dim() - 2))) * t, 1) for t in layer)
                      for layer in g)                                               # sum_{s <= t} eta_s g_s
        per_token = tuple((w[:, None] - sw, b[:, None] - sb) for (w, b), (sw, sb) in zip(inner, steps))
        z = vmap(vmap(self._f, in_dims=(0, 0, None, None)))(per_token, q, ln_w, ln_b)
        upd = tuple((sw[:, -1], sb[:, -1]) for sw, sb in steps)
        return z, upd

    def _dual(self, inner, q, k, v, eta, ln_w, ln_b):
        """One mini-batch (N, m, d) in the dual form.

        Per-token gradients g_s of each linear layer's output at the mini-batch's starting weights, and
        ``W_t h = W h - sum_{s <= t} eta_s g_s (x_s . h)`` for the queries.

        Args:
            inner: The inner weights ``(w, b)`` of each linear layer at the start of the mini-batch.
            q: (N, m, d) queries.
            k: (N, m, d) keys, the inner model's inputs.
            v: (N, m, d) values, its targets.
            eta: (N, m) per-token step sizes.
            ln_w: The inner layer norm's weight, per head.
            ln_b: Its bias, per head.

        Returns:
            The outputs (N, m, d) and the mini-batch's summed updates of each layer's ``(w, b)``.
        """
        xs, deltas = self._layer_inputs(inner, k)
        g = grad(self._chunk_loss, argnums=0)(deltas, inner, k, v, ln_w, ln_b)         # each (N, m, out)
        m = q.shape[1]
        causal = torch.ones(m, m, dtype=torch.bool, device=q.device).tril()
        h = q
        for i, ((w, b), x_in, g_l) in enumerate(zip(inner, xs, g)):
            a = (h @ x_in.transpose(1, 2) + 1) * eta[:, None, :]                       # (N, m, m): eta_s (x_s.h_t + 1)
            a = a.masked_fill(~causal, 0.0)
            h = h @ w.transpose(1, 2) + b[:, None] - a @ g_l
            if i < len(inner) - 1:
                h = F.gelu(h)
        z = q + layer_norm(h, ln_w[:, None], ln_b[:, None]) if self.inner_norm else h
        upd = tuple((torch.einsum("ns,nso,nsi->noi", eta, g_l, x_in), torch.einsum("ns,nso->no", eta, g_l))
                    for g_l, x_in in zip(g, xs))
        return z, upd

    def _layer_inputs(self, inner, k):
        """The input of each inner linear layer for the tokens at the weights ``inner``, and zero offsets.

        The offsets (one per layer output) are where the mini-batch loss is differentiated.

        Args:
            inner: The inner weights ``(w, b)`` of each linear layer.
            k: (N, m, d) tokens (keys).
        """
        xs, deltas, h = [], [], k
        for i, (w, b) in enumerate(inner):
            xs.append(h)
            h = h @ w.transpose(1, 2) + b[:, None]
            deltas.append(torch.zeros_like(h))
            if i < len(inner) - 1:
                h = F.gelu(h)
        return xs, tuple(deltas)

    def _chunk_loss(self, deltas, inner, k, v, ln_w, ln_b):
        """Sum over the mini-batch's tokens of the inner loss with ``deltas`` added to each layer's output.

        Its gradient in ``deltas`` at 0 is each token's gradient with respect to that output.

        Args:
            deltas: The offsets added to each layer's output.
            inner: The inner weights ``(w, b)`` of each linear layer.
            k: (N, m, d) keys, the inner model's inputs.
            v: (N, m, d) values, its targets.
            ln_w: The inner layer norm's weight, per head.
            ln_b: Its bias, per head.
        """
        h = k
        for i, ((w, b), dl) in enumerate(zip(inner, deltas)):
            h = h @ w.transpose(1, 2) + b[:, None] + dl
            if i < len(inner) - 1:
                h = F.gelu(h)
        f = k + layer_norm(h, ln_w[:, None], ln_b[:, None]) if self.inner_norm else h
        return 0.5 * ((f - v) ** 2).sum()

    # ------------------------------------------------------------------ recurrence

    def step(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        """One token: one gradient step of each head's inner model on it, then the output at the updated weights.

        The step is taken at the weights the token's mini-batch started with.

        Args:
            x: (B, D) the token.
            state: From [`init_state`][metalearn.nn.ttt_layers.TTTLayer.init_state], a previous ``step`` or
                ``forward(..., return_state=True)`` (default: the state before the first token); the state passed in is
                not modified.

        Returns:
            (output (B, D), new state).

        Raises:
            ArgumentError: ``x`` is not a float (B, D) tensor, or ``state`` was made for another number of sequences.
        """
        self._check(x, dims=2)
        batch = x.shape[0]
        state = self.init_state(batch) if state is None else state
        if state.get("batch") != batch:
            raise ArgumentError(f"state: made for {state.get('batch')} sequences, x has {batch}")
        q, k, v, eta = self._project(x[:, None])
        q, k, v, eta = q[:, 0], k[:, 0], v[:, 0], eta[:, 0]                              # (N, d), (N,)
        ln_w, ln_b = self._per_head(self.ln_w, batch), self._per_head(self.ln_b, batch)
        inner = state["inner"]
        g = vmap(self.inner_grad)(inner, k, v, ln_w, ln_b)
        acc = tuple(tuple(a + eta.view(-1, *([1] * (t.dim() - 1))) * t for a, t in zip(al, gl))
                    for al, gl in zip(state["acc"], g))
        now = tuple((w - aw, b - ab) for (w, b), (aw, ab) in zip(inner, acc))
        z = vmap(self._f)(now, q, ln_w, ln_b)                                           # (N, d)
        pos = state["pos"] + 1
        if pos == self.mini_batch:
            inner, acc, pos = now, tuple((torch.zeros_like(w), torch.zeros_like(b)) for w, b in now), 0
        return self._out(z[:, None], batch)[:, 0], {"inner": inner, "acc": acc, "pos": pos, "batch": batch}

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, mini_batch={self.mini_batch}, hidden={self.hidden}, "
                f"inner_norm={self.inner_norm}, form={self.form!r}")


class TTTLinear(TTTLayer):
    """TTT layer with a linear inner model per head, ``f(x) = x + LN(W x + b)`` (Sun et al. 2024, TTT-Linear).

    Examples:
        >>> layer = TTTLinear(64, heads=4, mini_batch=16)
        >>> layer(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    def __init__(self, dim: int, heads: int = 4, mini_batch: int = 16, eta_base: float = 1.0,
                 inner_norm: bool = True, form: str = "dual") -> None:
        super().__init__(dim, heads, mini_batch, eta_base, inner_norm, form, hidden=0)


class TTTMLP(TTTLayer):
    """TTT layer with a 2-layer MLP inner model per head (``4 head_dim`` GELU hidden units),
    ``f(x) = x + LN(W2 gelu(W1 x + b1) + b2)`` (Sun et al. 2024, TTT-MLP).

    Examples:
        >>> layer = TTTMLP(64, heads=4, mini_batch=16, form="scan")
        >>> y, state = layer(torch.randn(2, 10, 64), return_state=True)
        >>> y_next, state = layer.step(torch.randn(2, 64), state)
    """

    def __init__(self, dim: int, heads: int = 4, mini_batch: int = 16, eta_base: float = 1.0,
                 inner_norm: bool = True, form: str = "dual", expansion: int = 4) -> None:
        expansion = check_int("expansion", expansion, 1)
        super().__init__(dim, heads, mini_batch, eta_base, inner_norm, form,
                         hidden=expansion * (check_int("dim", dim, 1) // max(1, heads)))


__all__ = ["TTTLayer", "TTTLinear", "TTTMLP", "layer_norm"]
