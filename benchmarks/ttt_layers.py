"""TTT layers (TTTLinear, TTTMLP) against linear and softmax attention of the same width on synthetic in-context
tasks that need memory, trained here on the CPU: accuracy against sequence length, and time per token.

Tasks (each token carries everything a layer needs, so no positional information is required):

* ``mqar``, multi-query associative recall: ``n`` key-value pairs (distinct keys of ``--keys`` symbols, values of
  ``--values`` symbols; a pair is one token, the sum of a key and a value embedding), then the ``n`` keys again in
  a random order as queries (key embedding + a query vector); predict each query's value.  Length ``2 n``.
  Metric: accuracy over the queries.
* ``regression``, in-context linear regression: ``y = w . x / sqrt(D)`` with ``w, x ~ N(0, I_D)`` drawn per
  sequence; ``n`` context tokens ``[x, y, 0]`` then ``--queries`` tokens ``[x, 0, 1]``; predict y at the queries.
  Length ``n + queries``.  Metric: mean squared error at the queries (1 = predicting 0), beside least squares on
  the same context (the min-norm solution when n < D).

Every model is one pre-norm residual block (sequence mixer, then a 4x GELU MLP) between an input map and a
readout, width ``--dim`` with ``--heads`` heads; the mixers: ``ttt_linear`` and ``ttt_mlp``
(metalearn.nn.ttt_layers, dual form, mini-batch ``--mini-batch``), ``linear_attention`` (causal, elu + 1 feature
map, Katharopoulos et al. 2020) and ``softmax_attention`` (causal, scaled dot product).  Each model trains for
the same number of steps on batches of a length drawn from the lengths listed (Adam, warm-up then cosine decay,
gradient clipping 1), then is evaluated on fixed sequences of each length.

Time per token: the mixer alone (batch ``--time-batch``), in the parallel form over a whole sequence (no
gradient) and in the recurrent form (one token with a state or cache of the given length: TTT ``step``, the
linear-attention recurrence, softmax attention over a key/value cache), median of repeats, in CPU time of the
process by default (``--clock wall``: wall-clock).

    python benchmarks/ttt_layers.py --steps 500 --out results/ttt_layers/ttt_layers_cpu.json
    python benchmarks/ttt_layers.py --time-only --out results/ttt_layers/time_per_token_cpu.json
    python benchmarks/ttt_layers.py --report results/ttt_layers/ttt_layers_cpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metalearn.nn.ttt_layers import TTTLinear, TTTMLP  # noqa: E402

MODELS = ("ttt_linear", "ttt_mlp", "linear_attention", "softmax_attention")


# ------------------------------------------------------------------------------------------------ baselines

class _Heads(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: dim={dim} is not divisible by heads={heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def split(self, z: Tensor) -> Tensor:                      # (B, T, D) -> (B, H, T, d)
        b, t, _ = z.shape
        return z.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def merge(self, z: Tensor) -> Tensor:                      # (B, H, T, d) -> (B, T, D)
        b, _, t, _ = z.shape
        return self.o(z.transpose(1, 2).reshape(b, t, self.dim))


class SoftmaxAttention(_Heads):
    """Causal multi-head softmax attention; ``step`` attends over a key/value cache."""

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def step(self, x: Tensor, cache: tuple[Tensor, Tensor] | None):
        q, k, v = (self.split(p(x[:, None])) for p in (self.q, self.k, self.v))
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        return self.merge(F.scaled_dot_product_attention(q, k, v))[:, 0], (k, v)


class LinearAttention(_Heads):
    """Causal linear attention with the elu + 1 feature map (Katharopoulos et al. 2020), in chunks of ``chunk``
    tokens (masked products inside a chunk, the running sums between chunks: linear in T); ``step`` is the
    recurrence on (sum phi(k) v^T, sum phi(k))."""
    chunk = 64

    @staticmethod
    def phi(z: Tensor) -> Tensor:
        return F.elu(z) + 1

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.phi(self.split(self.q(x))), self.phi(self.split(self.k(x))), self.split(self.v(x))
        b, h, t, d = q.shape
        s = q.new_zeros(b, h, d, d)                                   # sum phi(k) v^T of the earlier chunks
        z = q.new_zeros(b, h, 1, d)                                   # sum phi(k)
        outs = []
        for c in range(0, t, self.chunk):
            qc, kc, vc = q[:, :, c:c + self.chunk], k[:, :, c:c + self.chunk], v[:, :, c:c + self.chunk]
            m = qc.shape[2]
            a = (qc @ kc.transpose(-1, -2)).masked_fill(
                ~torch.ones(m, m, dtype=torch.bool, device=x.device).tril(), 0)
            num = a @ vc + qc @ s
            den = a.sum(-1, keepdim=True) + (qc * z).sum(-1, keepdim=True)
            outs.append(num / (den + 1e-6))
            s = s + kc.transpose(-1, -2) @ vc
            z = z + kc.sum(2, keepdim=True)
        return self.merge(torch.cat(outs, 2))

    def step(self, x: Tensor, state: tuple[Tensor, Tensor] | None):
        q, k, v = self.phi(self.split(self.q(x[:, None]))), self.phi(self.split(self.k(x[:, None]))), \
            self.split(self.v(x[:, None]))
        s, z = (k.transpose(-1, -2) @ v, k) if state is None else (state[0] + k.transpose(-1, -2) @ v, state[1] + k)
        out = (q @ s) / ((q * z).sum(-1, keepdim=True) + 1e-6)
        return self.merge(out)[:, 0], (s, z)


def mixer(kind: str, dim: int, heads: int, mini_batch: int) -> nn.Module:
    if kind == "ttt_linear":
        return TTTLinear(dim, heads, mini_batch)
    if kind == "ttt_mlp":
        return TTTMLP(dim, heads, mini_batch)
    if kind == "linear_attention":
        return LinearAttention(dim, heads)
    if kind == "softmax_attention":
        return SoftmaxAttention(dim, heads)
    raise ValueError(f"model: expected one of {MODELS}, got {kind!r}")


class SeqModel(nn.Module):
    """Input map -> x + mixer(LN(x)) -> x + MLP(LN(x)) -> LN -> readout."""

    def __init__(self, kind: str, inp: nn.Module, out_dim: int, dim: int, heads: int, mini_batch: int) -> None:
        super().__init__()
        self.inp, self.mix = inp, mixer(kind, dim, heads, mini_batch)
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.readout = nn.Linear(dim, out_dim)

    def forward(self, tokens) -> Tensor:
        h = self.inp(tokens)
        h = h + self.mix(self.n1(h))
        h = h + self.mlp(self.n2(h))
        return self.readout(self.n3(h))


# ------------------------------------------------------------------------------------------------ tasks

class MQAREmbed(nn.Module):
    def __init__(self, keys: int, values: int, dim: int) -> None:
        super().__init__()
        self.key, self.value = nn.Embedding(keys, dim), nn.Embedding(values + 1, dim)   # value id ``values``: query

    def forward(self, tokens: tuple[Tensor, Tensor]) -> Tensor:
        k, v = tokens
        return self.key(k) + self.value(v)


def mqar_batch(n: int, batch: int, keys: int, values: int, g: torch.Generator):
    """Keys (B, 2n), value ids (B, 2n) (``values`` marks a query), targets (B, n) of the query positions."""
    k = torch.argsort(torch.rand(batch, keys, generator=g), 1)[:, :n]                  # n distinct keys
    v = torch.randint(0, values, (batch, n), generator=g)
    order = torch.argsort(torch.rand(batch, n, generator=g), 1)
    qk = torch.gather(k, 1, order)
    target = torch.gather(v, 1, order)
    return (torch.cat([k, qk], 1), torch.cat([v, torch.full_like(v, values)], 1)), target


def regression_batch(n: int, batch: int, d: int, queries: int, g: torch.Generator):
    """Tokens (B, n + queries, d + 2), targets (B, queries), and the context (x (B, n, d), y (B, n)) and query
    inputs (B, queries, d) for the least-squares reference."""
    w = torch.randn(batch, d, generator=g)
    x = torch.randn(batch, n + queries, d, generator=g)
    y = (x @ w[:, :, None])[..., 0] / math.sqrt(d)
    flag = torch.zeros(batch, n + queries, 1)
    flag[:, n:] = 1
    shown = y.clone()
    shown[:, n:] = 0
    tokens = torch.cat([x, shown[..., None], flag], -1)
    return tokens, y[:, n:], (x[:, :n], y[:, :n], x[:, n:])


def least_squares_predict(ctx) -> tuple[Tensor, Tensor]:
    """Predictions at the queries (B, queries) of the min-norm least-squares fit of each context, and the fit."""
    x, y, xq = ctx
    w = torch.linalg.pinv(x) @ y[..., None]                                              # (B, d, 1)
    yq = (xq @ w)[..., 0]
    return yq, w


# ------------------------------------------------------------------------------------------------ train / eval

def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def build(task: str, kind: str, a) -> SeqModel:
    if task == "mqar":
        return SeqModel(kind, MQAREmbed(a.keys, a.values, a.dim), a.values, a.dim, a.heads, a.mini_batch)
    return SeqModel(kind, nn.Linear(a.x_dim + 2, a.dim), 1, a.dim, a.heads, a.mini_batch)


def batch_for(task: str, n: int, batch: int, a, g):
    if task == "mqar":
        return mqar_batch(n, batch, a.keys, a.values, g)
    return regression_batch(n, batch, a.x_dim, a.queries, g)


def loss_for(task: str, model: SeqModel, data) -> Tensor:
    if task == "mqar":
        tokens, target = data
        logits = model(tokens)[:, -target.shape[1]:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    tokens, target, _ = data
    return F.mse_loss(model(tokens)[:, -target.shape[1]:, 0], target)


def train(task: str, kind: str, a) -> tuple[SeqModel, dict]:
    torch.manual_seed(a.seed)
    model = build(task, kind, a)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    g = torch.Generator().manual_seed(a.seed + 1)
    lengths = a.mqar_pairs if task == "mqar" else a.reg_context
    t0, losses = time.process_time(), []
    for step in range(a.steps):
        n = lengths[int(torch.randint(0, len(lengths), (1,), generator=g))]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, a.steps, a.lr, a.warmup)
        loss = loss_for(task, model, batch_for(task, n, a.batch_size, a, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % a.log_every == 0:
            print(f"{task} {kind} step {step + 1} loss {statistics.mean(losses[-a.log_every:]):.4f}", flush=True)
    return model, {"cpu_s": time.process_time() - t0, "steps": a.steps, "batch_size": a.batch_size,
                   "final_loss": statistics.mean(losses[-a.log_every:]),
                   "params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def evaluate(task: str, model: SeqModel, a) -> dict:
    model.eval()
    out = {}
    lengths = a.mqar_pairs if task == "mqar" else a.reg_context
    for n in lengths:
        g = torch.Generator().manual_seed(10_000 + n)           # the same sequences for every model
        data = batch_for(task, n, a.eval_sequences, a, g)
        if task == "mqar":
            tokens, target = data
            pred = model(tokens)[:, -n:].argmax(-1)
            acc = float((pred == target).float().mean())
            m = target.numel()
            out[str(n)] = {"length": 2 * n, "accuracy": acc, "ci95": 1.96 * math.sqrt(acc * (1 - acc) / m),
                           "queries": m}
        else:
            tokens, target, ctx = data
            err = ((model(tokens)[:, -a.queries:, 0] - target) ** 2).mean(1)           # per sequence
            ls = ((least_squares_predict(ctx)[0] - target) ** 2).mean(1)
            out[str(n)] = {"length": n + a.queries, "mse": float(err.mean()),
                           "ci95": 1.96 * float(err.std()) / math.sqrt(err.numel()),
                           "least_squares_mse": float(ls.mean()), "sequences": err.numel()}
    model.train()
    return out


def _median_time(fn, repeats: int, clock: str = "cpu") -> float:
    """Median seconds of ``fn()``: CPU time of this process (``clock="cpu"``, with one thread the compute cost,
    whatever else runs on the machine) or wall-clock time (``"wall"``)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    fn()                                                            # warm-up
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        times.append(now() - t0)
    return statistics.median(times)


@torch.no_grad()
def time_per_token(a) -> dict:
    """Seconds per token of each mixer alone: the parallel form over T tokens, and one recurrent step with a
    state / cache after T tokens."""
    res = {}
    for kind in MODELS:
        torch.manual_seed(0)
        m = mixer(kind, a.dim, a.heads, a.mini_batch).eval()
        res[kind] = {}
        for t in a.time_lengths:
            x = torch.randn(a.time_batch, t, a.dim)
            par = _median_time(lambda: m(x), a.time_repeats, a.clock) / (a.time_batch * t)
            if kind.startswith("ttt"):
                _, state = m(x, return_state=True)
                stepper = (lambda: m.step(x[:, -1], state))
            else:
                state = None
                cache = None
                if kind == "softmax_attention":
                    cache = (m.split(m.k(x)), m.split(m.v(x)))
                else:
                    phi_k = m.phi(m.split(m.k(x)))
                    cache = (phi_k.transpose(-1, -2) @ m.split(m.v(x)), phi_k.sum(2, keepdim=True))
                stepper = (lambda: m.step(x[:, -1], cache))
            rec = _median_time(stepper, a.time_repeats, a.clock) / a.time_batch
            res[kind][str(t)] = {"parallel_s_per_token": par, "step_s_per_token": rec}
            print(f"time {kind} T={t}: parallel {1e6 * par:.1f} us/token, step {1e6 * rec:.1f} us/token "
                  f"(state or cache of {t} tokens)", flush=True)
            del state
    return res


def table(res: dict) -> str:
    s = res["settings"]
    lines = []
    if "mqar" in res["tasks"]:
        lengths = [str(n) for n in s["mqar_pairs"]]
        lines += ["Multi-query associative recall, accuracy % on the queries (95% CI), by sequence length:", "",
                  "| model | " + " | ".join(f"T = {2 * int(n)} ({n} pairs)" for n in lengths) + " | params | "
                  "CPU s training |", "|---|" + "---|" * (len(lengths) + 2)]
        for kind, r in res["tasks"]["mqar"].items():
            cells = [f"{100 * r['eval'][n]['accuracy']:.1f} ± {100 * r['eval'][n]['ci95']:.1f}" for n in lengths]
            lines.append(f"| {kind} | " + " | ".join(cells) + f" | {r['train']['params']} | "
                         f"{r['train']['cpu_s']:.0f} |")
        lines.append("")
    if "regression" in res["tasks"]:
        lengths = [str(n) for n in s["reg_context"]]
        q = s["queries"]
        lines += ["In-context linear regression, mean squared error at the queries (95% CI; 1 = predicting 0), "
                  "by sequence length:", "",
                  "| model | " + " | ".join(f"T = {int(n) + q} ({n} examples)" for n in lengths) + " | params | "
                  "CPU s training |", "|---|" + "---|" * (len(lengths) + 2)]
        ls = None
        for kind, r in res["tasks"]["regression"].items():
            cells = [f"{r['eval'][n]['mse']:.3f} ± {r['eval'][n]['ci95']:.3f}" for n in lengths]
            ls = [f"{r['eval'][n]['least_squares_mse']:.3f}" for n in lengths]
            lines.append(f"| {kind} | " + " | ".join(cells) + f" | {r['train']['params']} | "
                         f"{r['train']['cpu_s']:.0f} |")
        if ls:
            lines.append("| least squares (min-norm) on the context | " + " | ".join(ls) + " | | |")
        lines.append("")
    if res.get("time"):
        ts = [str(t) for t in s["time_lengths"]]
        clock = "CPU time" if s.get("clock", "wall") == "cpu" else "wall-clock time"
        lines += [f"Time per token, microseconds of {clock} (one mixer, width {s['dim']}, batch {s['time_batch']}, "
                  f"{res['machine'].get('torch_threads')} thread): parallel form over T tokens / one recurrent step "
                  "after T tokens:", "",
                  "| mixer | " + " | ".join(f"T = {t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
        for kind, r in res["time"].items():
            lines.append(f"| {kind} | " + " | ".join(
                f"{1e6 * r[t]['parallel_s_per_token']:.1f} / {1e6 * r[t]['step_s_per_token']:.1f}" for t in ts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["mqar", "regression"], choices=["mqar", "regression"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mini-batch", type=int, default=8, help="TTT inner mini-batch (tokens)")
    p.add_argument("--steps", type=int, default=500, help="training steps, the same for every model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--keys", type=int, default=32)
    p.add_argument("--values", type=int, default=32)
    p.add_argument("--mqar-pairs", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--x-dim", type=int, default=8)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--reg-context", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--eval-sequences", type=int, default=256)
    p.add_argument("--time-lengths", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--time-batch", type=int, default=4)
    p.add_argument("--time-repeats", type=int, default=5)
    p.add_argument("--no-time", action="store_true", help="skip the time per token")
    p.add_argument("--time-only", action="store_true", help="only the time per token (no training)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="time per token in CPU time of the process (default) or wall-clock time")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/ttt_layers/ttt_layers_cpu.json")
    p.add_argument("--report", default=None, metavar="FILE")
    a = p.parse_args(argv)
    if a.report:
        print(table(json.loads(Path(a.report).read_text())))
        return 0
    for key in ("dim", "heads", "mini_batch", "steps", "batch_size", "eval_sequences", "threads", "log_every"):
        if getattr(a, key) < 1:
            p.error(f"--{key.replace('_', '-')}: expected >= 1, got {getattr(a, key)}")
    if max(a.mqar_pairs) > a.keys or min(a.mqar_pairs) < 1:
        p.error(f"--mqar-pairs: expected values in [1, --keys={a.keys}], got {a.mqar_pairs}")
    torch.set_num_threads(a.threads)
    from metalearn.bench import git_state, machine_info
    res = {"command": "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *sys.argv[1:]]),
           "git": git_state(), "machine": machine_info("cpu"), "settings": vars(a), "tasks": {}, "time": {}}
    out = Path(a.out)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(out)

    t_all = time.process_time()
    for task in ([] if a.time_only else a.tasks):
        for kind in a.models:
            model, tr = train(task, kind, a)
            t0 = time.process_time()
            ev = evaluate(task, model, a)
            res["tasks"].setdefault(task, {})[kind] = {"train": tr, "eval": ev,
                                                         "eval_cpu_s": time.process_time() - t0}
            save()
    if not a.no_time:
        res["time"] = time_per_token(a)
    res["cpu_s_total"] = time.process_time() - t_all
    save()
    print(table(res))
    print(f"\nwritten {out}; CPU {res['cpu_s_total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
