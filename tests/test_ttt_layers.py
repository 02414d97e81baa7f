"""TTT layers for sequences (TTTLinear, TTTMLP): the parallel forms against a token-by-token recurrence written
out here, step() against the parallel form, the inner gradient against finite differences, causality, and the
outer gradient through the inner steps (float64)."""
import pytest
import torch
import torch.nn.functional as F

from metalearn.checks import ArgumentError
from metalearn.nn.ttt_layers import TTTLinear, TTTMLP



@pytest.fixture(autouse=True)
def _float64():
    """Every tensor of this file is float64 (the default dtype is restored after each test)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def make(kind="linear", dim=6, heads=2, mini_batch=3, form="dual", inner_norm=True, seed=0):
    torch.manual_seed(seed)
    if kind == "linear":
        layer = TTTLinear(dim, heads, mini_batch, inner_norm=inner_norm, form=form)
    else:
        layer = TTTMLP(dim, heads, mini_batch, inner_norm=inner_norm, form=form)
    with torch.no_grad():                       # larger initial inner weights, so that every term matters
        for p in [*layer.inner_w, *layer.inner_b]:
            p.normal_(0, 0.5)
        layer.ln_w.normal_(1, 0.2)
        layer.ln_b.normal_(0, 0.2)
    return layer.double()


def seq(b=2, t=7, d=6, seed=1):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed))


def reference(layer, x):
    """The recurrence token by token, per sequence and head, with torch.autograd.grad and F.layer_norm."""
    B, T, D = x.shape
    H, d = layer.heads, layer.head_dim
    q, k, v = (p(x).view(B, T, H, d) for p in (layer.theta_q, layer.theta_k, layer.theta_v))
    eta = layer.eta_base / d * torch.sigmoid(layer.theta_lr(x))                 # (B, T, H)

    def f(ws, bs, inp, h):
        z = inp
        for i, (w, b) in enumerate(zip(ws, bs)):
            z = w @ z + b
            if i < len(ws) - 1:
                z = F.gelu(z)
        return inp + F.layer_norm(z, (d,), layer.ln_w[h], layer.ln_b[h], eps=1e-6) if layer.inner_norm else z

    out = torch.zeros(B, T, H, d)
    for bi in range(B):
        for h in range(H):
            start = [w[h] for w in layer.inner_w] + [b[h] for b in layer.inner_b]
            acc = [torch.zeros_like(p) for p in start]
            n = len(layer.inner_w)
            for t in range(T):
                leaf = [p.detach().requires_grad_() for p in start]
                loss = 0.5 * ((f(leaf[:n], leaf[n:], k[bi, t, h], h) - v[bi, t, h]) ** 2).sum()
                grads = torch.autograd.grad(loss, leaf)
                acc = [a + eta[bi, t, h] * g for a, g in zip(acc, grads)]
                cur = [p - a for p, a in zip(start, acc)]
                out[bi, t, h] = f(cur[:n], cur[n:], q[bi, t, h], h)
                if (t + 1) % layer.mini_batch == 0:
                    start, acc = cur, [torch.zeros_like(p) for p in start]
    return layer.theta_o(out.reshape(B, T, D))


CASES = [("linear", 1, True), ("linear", 3, True), ("linear", 4, False), ("linear", 7, True),
         ("mlp", 1, True), ("mlp", 3, True), ("mlp", 4, False)]


@pytest.mark.parametrize("kind,mini_batch,inner_norm", CASES)
def test_parallel_forms_equal_the_token_by_token_recurrence(kind, mini_batch, inner_norm):
    x = seq()
    want = reference(make(kind, mini_batch=mini_batch, inner_norm=inner_norm), x).detach()
    for form in ("dual", "scan"):
        layer = make(kind, mini_batch=mini_batch, inner_norm=inner_norm, form=form)
        with torch.no_grad():
            got = layer(x)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=form)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_step_matches_the_parallel_form_and_continues_its_state(kind):
    layer, x = make(kind, mini_batch=3), seq(t=8)
    with torch.no_grad():
        full = layer(x)
        state, outs = None, []
        for t in range(x.shape[1]):
            y, state = layer.step(x[:, t], state)
            outs.append(y)
        torch.testing.assert_close(torch.stack(outs, 1), full, rtol=1e-10, atol=1e-12)
        for prefix in (3, 5):                   # a prefill that ends on and inside a mini-batch
            head, st = layer(x[:, :prefix], return_state=True)
            torch.testing.assert_close(head, full[:, :prefix], rtol=1e-10, atol=1e-12)
            assert st["pos"] == prefix % 3
            keep = {n: t.clone() for n, t in zip(("w", "b"), st["inner"][0])}
            for t in range(prefix, x.shape[1]):
                y, st = layer.step(x[:, t], st)
                torch.testing.assert_close(y, full[:, t], rtol=1e-10, atol=1e-12)
        assert torch.equal(keep["w"], layer(x[:, :5], return_state=True)[1]["inner"][0][0])  # state not mutated
        # the scan form's state continues the same way
        scan = make(kind, mini_batch=3, form="scan")
        _, st = scan(x[:, :5], return_state=True)
        y, _ = scan.step(x[:, 5], st)
        torch.testing.assert_close(y, full[:, 5], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_inner_gradient_against_finite_differences(kind):
    layer = make(kind, dim=6, heads=2)
    d = layer.head_dim
    g = torch.Generator().manual_seed(3)
    inner = tuple((torch.randn(w.shape[1:], generator=g) * 0.7, torch.randn(b.shape[1:], generator=g) * 0.7)
                  for w, b in zip(layer.inner_w, layer.inner_b))
    k, v = torch.randn(d, generator=g), torch.randn(d, generator=g)
    ln_w, ln_b = layer.ln_w[0].detach(), layer.ln_b[0].detach()
    got = layer.inner_grad(inner, k, v, ln_w, ln_b)
    eps = 1e-6
    for li, (w, b) in enumerate(inner):
        for pi, p in enumerate((w, b)):
            num = torch.zeros_like(p)
            for idx in range(p.numel()):
                def loss_at(delta):
                    q = p.clone().view(-1)
                    q[idx] += delta
                    new = list(list(layer_) for layer_ in inner)
                    new[li][pi] = q.view(p.shape)
                    return float(layer.inner_loss(tuple(tuple(x) for x in new), k, v, ln_w, ln_b))
                num.view(-1)[idx] = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
            torch.testing.assert_close(got[li][pi], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind,form", [("linear", "dual"), ("linear", "scan"), ("mlp", "dual"), ("mlp", "scan")])
def test_causality(kind, form):
    layer, x = make(kind, dim=4, heads=2, mini_batch=3, form=form), seq(b=1, t=7, d=4)
    jac = torch.autograd.functional.jacobian(lambda z: layer(z), x)              # (1, T, D, 1, T, D)
    dep = jac[0, :, :, 0].abs().sum((1, 3))                                         # (T out, T in)
    assert (dep.triu(1) == 0).all()                                                 # never on a later token
    below = torch.ones_like(dep, dtype=torch.bool).tril(-1)
    assert (dep.diagonal() > 0).all() and (dep[below] > 0).all()                  # on itself and every earlier one
    with torch.no_grad():                                                           # and exactly so
        y = layer(x)
        x2 = x.clone()
        x2[:, 4] += 1.0
        y2 = layer(x2)
    assert torch.equal(y[:, :4], y2[:, :4]) and not torch.allclose(y[:, 4:], y2[:, 4:])


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_outer_gradient_through_the_inner_steps(kind):
    layer, x = make(kind, dim=4, heads=2, mini_batch=2), seq(b=1, t=5, d=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: layer(z), (x,), eps=1e-6, atol=1e-7)
    # every outer parameter (projections, inner learning rate, initial inner weights, inner norm) gets a gradient
    params = dict(layer.named_parameters())
    w0 = params["inner_w.0"]
    assert torch.autograd.gradcheck(
        lambda w: torch.func.functional_call(layer, {**params, "inner_w.0": w}, (x.detach(),)), (w0,),
        eps=1e-6, atol=1e-7)
    loss = layer(x.detach()).pow(2).sum()
    grads = torch.autograd.grad(loss, list(params.values()))
    for n, gr in zip(params, grads):
        assert torch.isfinite(gr).all() and gr.abs().sum() > 0, n


def test_dtype_shapes_and_bad_input():
    torch.set_default_dtype(torch.float32)
    layer = TTTMLP(8, heads=2, mini_batch=4)
    x = torch.randn(3, 6, 8)
    y, st = layer(x, return_state=True)
    assert y.shape == (3, 6, 8) and y.dtype == torch.float32 and st["pos"] == 2
    assert layer.inner_w[0].shape == (2, 16, 4) and layer.inner_w[1].shape == (2, 4, 16)
    with pytest.raises(ArgumentError, match="heads: dim=8 is not divisible by heads=3"):
        TTTLinear(8, heads=3)
    with pytest.raises(ArgumentError, match="form"):
        TTTLinear(8, form="primal")
    with pytest.raises(ArgumentError, match="mini_batch"):
        TTTLinear(8, mini_batch=0)
    with pytest.raises(ArgumentError, match=r"x: expected a float tensor \(B, T, D\) with D = 8"):
        layer(torch.randn(3, 6, 5))
    with pytest.raises(ArgumentError, match="x: expected a non-empty"):
        layer(torch.randn(3, 0, 8))
    with pytest.raises(ArgumentError, match=r"x: expected a float tensor \(B, D\)"):
        layer.step(torch.randn(3, 1, 8))
    with pytest.raises(ArgumentError, match="state: made for 3 sequences, x has 2"):
        layer.step(torch.randn(2, 8), st)
