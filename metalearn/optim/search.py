"""Neural Optimizer Search at small scale (Bello, Zoph, Vasudevan & Le 2017, "Neural Optimizer Search with
Reinforcement Learning", sec. 3): a controller samples update rules from the paper's grammar, each rule is scored
on a cheap proxy task, and the controller is trained with REINFORCE towards rules that score well.

**The grammar** (the paper's sec. 3.1 and its Figure 2). A rule is a sequence of K groups; group k computes

    o_k = b(u1(op1), u2(op2))

from two operands, two unary functions and one binary function, and a step is ``θ ← θ − lr · o_{K−1}``.

* Operands (``OPERANDS``): ``g``, ``g2`` (g²), ``g3`` (g³), ``m`` / ``v`` / ``gamma`` (bias-corrected running
  averages of g, g², g³ with decays 0.9, 0.999, 0.999), ``sign_g``, ``sign_m``, the constants ``one`` and
  ``two``, the weight scaled as a decay term ``wd4`` … ``wd1`` (10⁻⁴·θ … 10⁻¹·θ), ``adam`` (m̂ / (√v̂ + ε),
  Adam's update) and ``rmsprop`` (g / (√r + ε), r the 0.99 running average of g², RMSprop's update), and the
  outputs ``o0`` … of earlier groups.
* Unary functions (``UNARY``): ``id``, ``neg``, ``exp``, ``log_abs`` (log|x|), ``sqrt_abs`` (√|x|), ``clip5`` /
  ``clip4`` / ``clip3`` (x clipped to ±10⁻⁵, ±10⁻⁴, ±10⁻³), ``sign``.
* Binary functions (``BINARY``): ``add``, ``sub``, ``mul``, ``div`` (x / (y + δ), δ = 1e-8), ``pow`` (xʸ),
  ``left`` (x, y ignored).

In this grammar PowerSign is two groups, ``o0 = sign_g · sign_m``, ``o1 = exp(o0) · g``
(``POWERSIGN``), and AddSign three (``ADDSIGN``). Left out of the paper's grammar: the noise operand
ε ~ N(0, 0.01) and the dropout functions, which make a rule's proxy score a random variable, and the decay
schedules, which [`metalearn.optim.searched`][metalearn.optim.searched] provides for the two published rules.

**The search**: [`Controller`][metalearn.optim.search.Controller] is an LSTM that emits the 5·K tokens one at a
time (each conditioned on the ones before; an operand ``o_j`` can only be chosen in a group after j).
[`reinforce_search`][metalearn.optim.search.reinforce_search] samples a batch of rules per controller step,
scores each with a caller's function (deterministic, cached by the rule's canonical form) and takes one Adam
step on ``−Σ (R − mean R) / std R · log p(rule) − c · entropy``. [`random_search`][metalearn.optim.search.random_search]
samples the same number of rules uniformly, the baseline any search has to beat. The paper trained the
controller with PPO on 12 800 rules, each scored by training a small ConvNet on CIFAR-10 for 5 epochs; here
the proxy is a few MLP optimisees for 100 steps ([`proxy_score`][metalearn.optim.search.proxy_score]), so a
search takes minutes on one CPU core (``benchmarks/optimizer_search.py``).

There is no library for this grammar or controller that fits (the authors released the found rules, not the
search), hence our own code.

Examples:
    >>> from metalearn.optim.search import POWERSIGN, Rule
    >>> POWERSIGN.formula()
    'exp(sign(g) · sign(m̂)) · g'
    >>> Rule((("adam", "g", "id", "id", "left"),)).formula()
    'Adam'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from metalearn.checks import ArgumentError, check_float, check_int

if TYPE_CHECKING:
    from metalearn.optim.optimisees import ProblemBatch

#: base operands (the paper's, without its noise term); earlier groups' outputs ``o0``, ``o1``, ... come on top
OPERANDS = ("g", "g2", "g3", "m", "v", "gamma", "sign_g", "sign_m", "one", "two", "wd4", "wd3", "wd2", "wd1",
            "adam", "rmsprop")
#: unary functions (the paper's, without dropout)
UNARY = ("id", "neg", "exp", "log_abs", "sqrt_abs", "clip5", "clip4", "clip3", "sign")
#: binary functions
BINARY = ("add", "sub", "mul", "div", "pow", "left")
#: what each of a group's five tokens is
SLOTS = ("operand", "operand", "unary", "unary", "binary")
DELTA = 1e-8          # of div: x / (y + δ)

_OPERAND_TEXT = {"g": "g", "g2": "g²", "g3": "g³", "m": "m̂", "v": "v̂", "gamma": "γ̂", "sign_g": "sign(g)",
                 "sign_m": "sign(m̂)", "one": "1", "two": "2", "wd4": "1e-4·θ", "wd3": "1e-3·θ", "wd2": "1e-2·θ",
                 "wd1": "1e-1·θ", "adam": "Adam", "rmsprop": "RMSprop"}
_UNARY_TEXT = {"id": "{}", "neg": "−{}", "exp": "exp({})", "log_abs": "log|{}|", "sqrt_abs": "√|{}|",
               "clip5": "clip({}, 1e-5)", "clip4": "clip({}, 1e-4)", "clip3": "clip({}, 1e-3)", "sign": "sign({})"}
_BINARY_TEXT = {"add": "{} + {}", "sub": "{} − {}", "mul": "{} · {}", "div": "{} / ({} + δ)", "pow": "{} ^ {}",
                "left": "{}"}
_UNARY_FN: dict[str, Callable[[Tensor], Tensor]] = {
    "id": lambda x: x, "neg": torch.neg, "exp": torch.exp, "log_abs": lambda x: torch.log(x.abs()),
    "sqrt_abs": lambda x: x.abs().sqrt(), "clip5": lambda x: x.clamp(-1e-5, 1e-5),
    "clip4": lambda x: x.clamp(-1e-4, 1e-4), "clip3": lambda x: x.clamp(-1e-3, 1e-3), "sign": torch.sign}
_BINARY_FN: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": lambda x, y: x / (y + DELTA),
    "pow": torch.pow, "left": lambda x, y: x}
_WD = {"wd4": 1e-4, "wd3": 1e-3, "wd2": 1e-2, "wd1": 1e-1}


def _is_group_ref(name: str) -> bool:
    return len(name) > 1 and name[0] == "o" and name[1:].isdigit()


@dataclass(frozen=True)
class Rule:
    """An update rule of the grammar: ``groups[k] = (op1, op2, u1, u2, b)``; the step is ``−lr ·`` the last
    group's output.

    Raises:
        ArgumentError: An empty rule, a group that is not 5 names, an unknown name, or an operand ``o_j``
            used in group j or before it.
    """

    groups: tuple

    def __post_init__(self) -> None:
        groups = tuple(tuple(g) for g in self.groups) if isinstance(self.groups, (list, tuple)) else None
        if not groups:
            raise ArgumentError(f"groups: expected one or more groups of 5 names, got {self.groups!r}")
        for k, grp in enumerate(groups):
            if len(grp) != 5 or not all(isinstance(t, str) for t in grp):
                raise ArgumentError(f"groups[{k}]: expected (op1, op2, u1, u2, b), got {grp!r}")
            for slot, tok in zip(SLOTS, grp):
                if slot == "operand":
                    ok = tok in OPERANDS or (_is_group_ref(tok) and int(tok[1:]) < k)
                    if not ok:
                        earlier = f", o0 … o{k - 1}" if k else ""
                        raise ArgumentError(f"groups[{k}]: operand {tok!r} is not one of {', '.join(OPERANDS)}"
                                            f"{earlier}")
                elif tok not in (UNARY if slot == "unary" else BINARY):
                    choices = UNARY if slot == "unary" else BINARY
                    raise ArgumentError(f"groups[{k}]: {slot} function {tok!r} is not one of {', '.join(choices)}")
        object.__setattr__(self, "groups", groups)

    # ------------------------------------------------------------------------------------------ text
    def formula(self) -> str:
        """The rule as one expression, earlier groups substituted (``exp(sign(g) · sign(m̂)) · g``)."""
        texts: list[str] = []
        for op1, op2, u1, u2, b in self.groups:
            def operand(name: str) -> tuple[str, bool]:       # (text, is compound)
                if _is_group_ref(name):
                    t = texts[int(name[1:])]
                    return t, any(c in t for c in " ^")
                return _OPERAND_TEXT[name], False

            def unary(u: str, name: str) -> tuple[str, bool]:
                t, compound = operand(name)
                if u == "id":
                    return t, compound
                if u == "neg":
                    return "−" + (f"({t})" if compound else t), False
                return _UNARY_TEXT[u].format(t), False

            a, ca = unary(u1, op1)
            if b == "left":
                texts.append(a)
                continue
            c, cc = unary(u2, op2)
            wrap_a = ca and b != "add"
            wrap_c = cc and b not in ("add", "div")
            texts.append(_BINARY_TEXT[b].format(f"({a})" if wrap_a else a, f"({c})" if wrap_c else c))
        return texts[-1]

    def __str__(self) -> str:
        return self.formula()

    def to_json(self) -> list:
        return [list(g) for g in self.groups]

    @classmethod
    def from_json(cls, data: Sequence[Sequence[str]]) -> "Rule":
        return cls(tuple(tuple(g) for g in data))

    # ------------------------------------------------------------------------------------ structure
    def canonical(self) -> "Rule":
        """The same rule without what cannot change its value: the second operand of ``left`` (and its unary
        function) become ``one`` / ``id``, and groups the last one does not use are dropped (the rest
        renumbered). Two rules with the same canonical form give the same steps."""
        groups = [list(g) for g in self.groups]
        for g in groups:
            if g[4] == "left":
                g[1], g[3] = "one", "id"
        used = {len(groups) - 1}
        for k in range(len(groups) - 1, -1, -1):
            if k in used:
                for op in groups[k][:2]:
                    if _is_group_ref(op):
                        used.add(int(op[1:]))
        keep = sorted(used)
        new_index = {old: new for new, old in enumerate(keep)}
        out = []
        for k in keep:
            g = [f"o{new_index[int(t[1:])]}" if i < 2 and _is_group_ref(t) else t for i, t in enumerate(groups[k])]
            out.append(tuple(g))
        return Rule(tuple(out))

    def operands(self) -> set[str]:
        """The base operands the rule reads (so a step computes only the running averages it needs)."""
        return {t for g in self.groups for t in g[:2] if not _is_group_ref(t)}

    def evaluate(self, values: dict[str, Tensor]) -> Tensor:
        """The update for the operand ``values`` (a mapping with at least ``operands()``)."""
        outs: list[Tensor] = []
        for op1, op2, u1, u2, b in self.groups:
            x = outs[int(op1[1:])] if _is_group_ref(op1) else values[op1]
            y = outs[int(op2[1:])] if _is_group_ref(op2) else values[op2]
            outs.append(_BINARY_FN[b](_UNARY_FN[u1](x), _UNARY_FN[u2](y)))
        return outs[-1]


#: PowerSign (α = e, constant decay) in the grammar: exp(sign(g)·sign(m̂))·g
POWERSIGN = Rule((("sign_g", "sign_m", "id", "id", "mul"), ("o0", "g", "exp", "id", "mul")))
#: AddSign (α = 1, constant decay) in the grammar: (1 + sign(g)·sign(m̂))·g
ADDSIGN = Rule((("sign_g", "sign_m", "id", "id", "mul"), ("one", "o0", "id", "id", "add"),
                ("o1", "g", "id", "id", "mul")))


def operand_values(rule: Rule, p: Tensor, g: Tensor, state: dict, betas: tuple[float, float, float],
                   rms_alpha: float, eps: float) -> dict[str, Tensor]:
    """Update the running averages in ``state`` (in place) with ``g`` and return the operands ``rule`` reads.

    ``state`` holds ``step`` (steps taken before this one) and whichever of ``m``, ``v``, ``gamma``, ``r`` the
    rule needs; the averages are zero-initialised on first use, and ``m``, ``v``, ``gamma`` are bias-corrected
    as Adam's are (``m̂ = m / (1 − β₁ᵗ)``).

    Args:
        rule: The rule (only the operands it reads are computed).
        p: The parameter (for the weight-decay operands).
        g: Its gradient.
        state: The parameter's state, updated in place (``step`` is not advanced here).
        betas: Decays of the averages of g, g², g³.
        rms_alpha: Decay of the ``rmsprop`` operand's average of g².
        eps: ε of the ``adam`` and ``rmsprop`` operands.
    """
    need = rule.operands()
    t = state["step"] + 1
    b1, b2, b3 = betas
    vals: dict[str, Tensor] = {}
    if need & {"m", "sign_m", "adam"}:
        m = state.setdefault("m", torch.zeros_like(p))
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        vals["m"] = m / (1.0 - b1 ** t)
        vals["sign_m"] = torch.sign(m)
    if need & {"v", "adam"}:
        v = state.setdefault("v", torch.zeros_like(p))
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        vals["v"] = v / (1.0 - b2 ** t)
    if "adam" in need:
        vals["adam"] = vals["m"] / (vals["v"].sqrt() + eps)
    if "gamma" in need:
        c = state.setdefault("gamma", torch.zeros_like(p))
        c.mul_(b3).add_(g * g * g, alpha=1.0 - b3)
        vals["gamma"] = c / (1.0 - b3 ** t)
    if "rmsprop" in need:
        r = state.setdefault("r", torch.zeros_like(p))
        r.mul_(rms_alpha).addcmul_(g, g, value=1.0 - rms_alpha)
        vals["rmsprop"] = g / (r.sqrt() + eps)
    for name in need - vals.keys():
        if name == "g":
            vals[name] = g
        elif name == "g2":
            vals[name] = g * g
        elif name == "g3":
            vals[name] = g * g * g
        elif name == "sign_g":
            vals[name] = torch.sign(g)
        elif name in ("one", "two"):
            vals[name] = torch.full_like(g, 1.0 if name == "one" else 2.0)
        elif name in _WD:
            vals[name] = _WD[name] * p
    return vals


class RuleOptimizer(torch.optim.Optimizer):
    """A rule of the grammar as a ``torch.optim`` optimizer: ``θ ← θ − lr · rule(g, state, θ)``.

    Args:
        params: Parameters or parameter groups.
        rule: The [`Rule`][metalearn.optim.search.Rule].
        lr: Learning rate (>= 0).
        betas: Decays of the running averages of g, g², g³ (0.9, 0.999, 0.999: Adam's, and the paper's).
        rms_alpha: Decay of the ``rmsprop`` operand's average of g² (0.99, ``torch.optim.RMSprop``'s).
        eps: ε of the ``adam`` and ``rmsprop`` operands (1e-8).

    Examples:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = RuleOptimizer([w], POWERSIGN, lr=0.1)
        >>> (w ** 2).sum().backward(); opt.step()     # g = 2, signs agree: 0.1 · e · 2
        >>> round(w.item(), 4)
        0.4563
    """

    def __init__(self, params: Iterable, rule: Rule, lr: float = 1e-2,
                 betas: tuple[float, float, float] = (0.9, 0.999, 0.999), rms_alpha: float = 0.99,
                 eps: float = 1e-8) -> None:
        if not isinstance(rule, Rule):
            raise ArgumentError(f"rule: expected a metalearn.optim.search.Rule, got {type(rule).__name__}")
        lr = check_float("lr", lr, 0.0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 3):
            raise ArgumentError(f"betas: expected three decays in [0, 1), got {betas!r}")
        betas = tuple(check_float(f"betas[{i}]", b, 0.0, 1.0) for i, b in enumerate(betas))
        if any(b >= 1.0 for b in betas):
            raise ArgumentError(f"betas: expected three decays in [0, 1), got {betas!r}")
        rms_alpha = check_float("rms_alpha", rms_alpha, 0.0, 1.0)
        eps = check_float("eps", eps, 0.0)
        self.rule = rule
        super().__init__(params, dict(lr=lr, betas=betas, rms_alpha=rms_alpha, eps=eps))

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
                state = self.state[p]
                state.setdefault("step", 0)
                vals = operand_values(self.rule, p, p.grad, state, group["betas"], group["rms_alpha"],
                                      group["eps"])
                update = self.rule.evaluate(vals)
                p.sub_(group["lr"] * torch.broadcast_to(update, p.shape))
                state["step"] += 1
        return loss


# ------------------------------------------------------------------------------------------- sampling


def _choices(slot: str, group: int) -> list[str]:
    if slot == "operand":
        return list(OPERANDS) + [f"o{j}" for j in range(group)]
    return list(UNARY if slot == "unary" else BINARY)


def sample_uniform(groups: int, generator: torch.Generator) -> Rule:
    """A rule of ``groups`` groups with every token drawn uniformly from what its slot allows."""
    groups = check_int("groups", groups, 1)
    out = []
    for k in range(groups):
        toks = []
        for slot in SLOTS:
            ch = _choices(slot, k)
            toks.append(ch[int(torch.randint(len(ch), (1,), generator=generator))])
        out.append(tuple(toks))
    return Rule(tuple(out))


class Controller(nn.Module):
    """The search's policy: an LSTM that emits a rule's 5·``groups`` tokens one after another.

    Each step feeds the embedding of the previous token (a start token first) to an ``LSTMCell`` and reads the
    next token from a linear head of its slot kind (operand, unary, binary); the operands ``o_j`` not yet
    defined in a group are masked out. Logits are squashed as ``c · tanh(l / c)`` (c = ``logit_clip``), as NAS
    controllers do, so that no token's probability collapses to one early.

    Args:
        groups: Groups per rule (K).
        hidden: LSTM width.
        embed: Token embedding width.
        logit_clip: c above.
    """

    def __init__(self, groups: int = 2, hidden: int = 32, embed: int = 16, logit_clip: float = 2.5) -> None:
        super().__init__()
        self.groups = check_int("groups", groups, 1)
        hidden, embed = check_int("hidden", hidden, 1), check_int("embed", embed, 1)
        self.logit_clip = check_float("logit_clip", logit_clip, 0.0, strict=True)
        self.operands = list(OPERANDS) + [f"o{j}" for j in range(self.groups - 1)]
        self.vocab = {"operand": self.operands, "unary": list(UNARY), "binary": list(BINARY)}
        self.offset = {"operand": 1, "unary": 1 + len(self.operands)}
        self.offset["binary"] = self.offset["unary"] + len(UNARY)
        self.embed = nn.Embedding(1 + len(self.operands) + len(UNARY) + len(BINARY), embed)
        self.cell = nn.LSTMCell(embed, hidden)
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, len(v)) for k, v in self.vocab.items()})

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[list[Rule], Tensor, Tensor]:
        """``n`` rules, with the log-probability of each (differentiable) and the summed entropies of its
        token distributions.

        Args:
            n: How many rules.
            generator: Draws the tokens (None: the global generator).
        """
        n = check_int("n", n, 1)
        hidden = self.cell.hidden_size
        h = torch.zeros(n, hidden)
        c = torch.zeros(n, hidden)
        prev = torch.zeros(n, dtype=torch.long)            # the start token
        logp = torch.zeros(n)
        ent = torch.zeros(n)
        tokens: list[list[str]] = [[] for _ in range(n)]
        for k in range(self.groups):
            for slot in SLOTS:
                h, c = self.cell(self.embed(prev), (h, c))
                logits = self.heads[slot](h)
                logits = self.logit_clip * torch.tanh(logits / self.logit_clip)
                if slot == "operand":
                    allowed = len(OPERANDS) + k
                    mask = torch.arange(logits.shape[1]) >= allowed
                    logits = logits.masked_fill(mask, -1e9)     # finite: keeps 0 · log 0 out of the gradient
                lp = torch.log_softmax(logits, dim=1)
                p = lp.exp()
                idx = torch.multinomial(p.detach(), 1, generator=generator).squeeze(1)
                logp = logp + lp.gather(1, idx[:, None]).squeeze(1)
                ent = ent - (p * lp).sum(1)
                for i, j in enumerate(idx.tolist()):
                    tokens[i].append(self.vocab[slot][j])
                prev = idx + self.offset[slot]
        rules = [Rule(tuple(tuple(t[5 * k:5 * k + 5]) for k in range(self.groups))) for t in tokens]
        return rules, logp, ent


# ------------------------------------------------------------------------------------------- scoring


def run_rule_grid(rule: Rule, batch: "ProblemBatch", steps: int, lrs: Sequence[float],
                  betas: tuple[float, float, float] = (0.9, 0.999, 0.999), rms_alpha: float = 0.99,
                  eps: float = 1e-8) -> Tensor:
    """Run ``rule`` on every optimisee of ``batch`` at every lr of ``lrs`` at once: the M optimisees are
    repeated L times along the stacked dimension, so one vmapped run replaces L runs (the same steps as
    [`RuleOptimizer`][metalearn.optim.search.RuleOptimizer] at each lr, tested).

    Args:
        rule: The rule.
        batch: The optimisees, a [`ProblemBatch`][metalearn.optim.optimisees.ProblemBatch].
        steps: Optimisee steps.
        lrs: The learning rates (L of them).
        betas: As [`RuleOptimizer`][metalearn.optim.search.RuleOptimizer]'s.
        rms_alpha: As [`RuleOptimizer`][metalearn.optim.search.RuleOptimizer]'s.
        eps: As [`RuleOptimizer`][metalearn.optim.search.RuleOptimizer]'s.

    Returns:
        (steps + 1, L, M) float64 losses; once an optimisee's loss is not finite, the rest of its curve is inf.
    """
    steps = check_int("steps", steps, 1)
    lrs = [check_float(f"lrs[{i}]", v, 0.0) for i, v in enumerate(lrs)]
    if not lrs:
        raise ArgumentError("lrs: expected one or more learning rates")
    L, M = len(lrs), len(batch)
    vloss = torch.func.vmap(batch.family.loss)
    lr = torch.tensor(lrs, dtype=torch.float64).repeat_interleave(M)   # (L·M,): lr-major, each lr's M optimisees
    params = {k: v.detach().repeat(L, *([1] * (v.dim() - 1))) for k, v in batch.params.items()}
    lr = {k: lr.to(v.dtype).view(-1, *([1] * (v.dim() - 1))) for k, v in params.items()}
    states = {k: {"step": 0} for k in params}
    dead = torch.zeros(L * M, dtype=torch.bool)
    out = []
    for t in range(steps + 1):
        leaves = {k: v.requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            losses = vloss(leaves, _repeat(batch.batch(t), L))       # each batch drawn once, used L times
        dead |= ~torch.isfinite(losses.detach())
        out.append(torch.where(dead, torch.full_like(losses.detach(), math.inf), losses.detach())
                   .to("cpu", torch.float64))
        if t == steps or bool(dead.all()):
            break
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        with torch.no_grad():
            new = {}
            for (k, p), g in zip(leaves.items(), grads):
                p = p.detach()
                vals = operand_values(rule, p, g, states[k], betas, rms_alpha, eps)
                new[k] = p - lr[k] * torch.broadcast_to(rule.evaluate(vals), p.shape)
                states[k]["step"] += 1
        params = new
    while len(out) < steps + 1:
        out.append(torch.full((L * M,), math.inf, dtype=torch.float64))
    return torch.stack(out).view(steps + 1, L, M)


def _repeat(data, times: int):
    if isinstance(data, Tensor):
        return data.repeat(times, *([1] * (data.dim() - 1)))
    if isinstance(data, (tuple, list)):
        return type(data)(_repeat(d, times) for d in data)
    if isinstance(data, dict):
        return {k: _repeat(v, times) for k, v in data.items()}
    raise ArgumentError(f"batch: expected Tensors, or tuples/lists/dicts of Tensors, got {type(data).__name__}")


def proxy_score(rule: Rule, batch: "ProblemBatch", steps: int, lr_grid: Sequence[float]) -> dict:
    """Score ``rule`` on the optimisees of ``batch`` (a [`ProblemBatch`][metalearn.optim.optimisees.ProblemBatch]):
    run it ``steps`` steps at every lr of ``lr_grid`` ([`run_rule_grid`][metalearn.optim.search.run_rule_grid])
    and keep the lr with the lowest mean final loss.

    Args:
        rule: The rule.
        batch: The proxy's optimisees.
        steps: Optimisee steps.
        lr_grid: The learning rates tried.

    Returns:
        ``{"score", "lr", "final", "initial"}``: score = log(initial / min(final, initial)) ≥ 0, the loss
        reduction in log space (0 when the rule diverges or does not reduce the loss); ``final`` is the mean
        final loss at the best lr (inf when every lr diverged).
    """
    losses = run_rule_grid(rule, batch, steps, lr_grid)
    initial = float(losses[0, 0].mean())
    finals = losses[-1].mean(1)                                     # (L,), inf where any optimisee diverged
    i = int(torch.argmin(torch.nan_to_num(finals, nan=math.inf)))
    best = float(finals[i])
    if not math.isfinite(best):
        return {"score": 0.0, "lr": None, "final": math.inf, "initial": initial}
    return {"score": max(0.0, math.log(initial / best)), "lr": float(lr_grid[i]), "final": best,
            "initial": initial}


class _Cache:
    """Scores by canonical rule: the proxy is deterministic, so a rule sampled twice is scored once."""

    def __init__(self, score_fn: Callable[[Rule], dict]) -> None:
        self.score_fn, self.table, self.evaluations = score_fn, {}, 0

    def __call__(self, rule: Rule) -> dict:
        key = rule.canonical()
        if key not in self.table:
            self.table[key] = self.score_fn(key)
            self.evaluations += 1
        return self.table[key]


def reinforce_search(score_fn: Callable[[Rule], dict], controller: Controller, steps: int, batch_size: int = 10,
                     lr: float = 0.05, entropy: float = 0.01, generator: torch.Generator | None = None,
                     log: Callable[[str], None] | None = None) -> dict:
    """Train ``controller`` with REINFORCE for ``steps`` updates of ``batch_size`` sampled rules each.

    The advantage of a rule is its score minus the batch's mean, divided by the batch's std (a rule scored
    alone gets 0); the loss is ``−mean(A · log p) − entropy · mean(H)``, one Adam step per batch.

    Args:
        score_fn: ``score_fn(rule) -> {"score": float, ...}``, deterministic (cached by canonical rule).
        controller: The policy, trained in place.
        steps: Controller updates.
        batch_size: Rules per update.
        lr: Adam's learning rate.
        entropy: Weight of the entropy bonus.
        generator: Draws the samples (seeded: the same search again).
        log: Gets one line per update (None: quiet).

    Returns:
        ``{"history": [{"step", "mean_score", "best_so_far", "entropy", "evaluations"}], "rules": {formula:
        {"rule", "score", "lr", "final", "samples"}}, "samples", "evaluations"}``.
    """
    steps, batch_size = check_int("steps", steps, 1), check_int("batch_size", batch_size, 1)
    cache = _Cache(score_fn)
    opt = torch.optim.Adam(controller.parameters(), lr=check_float("lr", lr, 0.0, strict=True))
    history, seen, best = [], {}, 0.0
    for step in range(1, steps + 1):
        rules, logp, ent = controller.sample(batch_size, generator)
        scores = []
        for r in rules:
            s = cache(r)
            scores.append(s["score"])
            _record(seen, r, s)
        R = torch.tensor(scores)
        adv = (R - R.mean()) / (R.std() + 1e-8) if batch_size > 1 else torch.zeros_like(R)
        loss = -(adv * logp).mean() - entropy * ent.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        best = max(best, max(scores))
        history.append({"step": step, "mean_score": float(R.mean()), "best_so_far": best,
                        "entropy": float(ent.detach().mean()), "evaluations": cache.evaluations})
        if log:
            log(f"  controller step {step:3d}: mean score {float(R.mean()):.3f}, best so far {best:.3f}, "
                f"entropy {float(ent.detach().mean()):.2f}, {cache.evaluations} rules scored")
    return {"history": history, "rules": seen, "samples": steps * batch_size, "evaluations": cache.evaluations}


def random_search(score_fn: Callable[[Rule], dict], groups: int, samples: int,
                  generator: torch.Generator | None = None) -> dict:
    """``samples`` rules drawn uniformly ([`sample_uniform`][metalearn.optim.search.sample_uniform]), scored
    like [`reinforce_search`][metalearn.optim.search.reinforce_search]'s (same return, ``history`` one entry
    per sample).

    Args:
        score_fn: As [`reinforce_search`][metalearn.optim.search.reinforce_search]'s.
        groups: Groups per rule.
        samples: Rules drawn.
        generator: Draws them (None: seed 0).
    """
    samples = check_int("samples", samples, 1)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    cache = _Cache(score_fn)
    history, seen, best = [], {}, 0.0
    for i in range(1, samples + 1):
        r = sample_uniform(groups, generator)
        s = cache(r)
        _record(seen, r, s)
        best = max(best, s["score"])
        history.append({"sample": i, "score": s["score"], "best_so_far": best})
    return {"history": history, "rules": seen, "samples": samples, "evaluations": cache.evaluations}


def _record(seen: dict, rule: Rule, s: dict) -> None:
    canon = rule.canonical()
    key = canon.formula()
    if key in seen:
        seen[key]["samples"] += 1
    else:
        seen[key] = {"rule": canon.to_json(), "score": s["score"], "lr": s["lr"], "final": s["final"],
                     "samples": 1}


def top_rules(rules: dict, k: int) -> list[tuple[str, dict]]:
    """The ``k`` best rules of a search's ``rules`` by score (ties: fewer groups, then the formula), one per
    proxy result.

    Canonical forms do not see algebra (``sign(g) + sign(m̂)`` and ``sign(m̂) − −sign(g)`` are two forms of one
    rule), so rules whose proxy runs ended at exactly the same loss with the same lr are taken as one: the
    first of them is kept, and the others are listed in its ``same_as``.

    Args:
        rules: The ``rules`` of a [`reinforce_search`][metalearn.optim.search.reinforce_search] or
            [`random_search`][metalearn.optim.search.random_search] result.
        k: How many.
    """
    k = check_int("k", k, 1)
    ranked = sorted(rules.items(), key=lambda kv: (-kv[1]["score"], len(kv[1]["rule"]), kv[0]))
    out: list[tuple[str, dict]] = []
    seen: dict[tuple, dict] = {}
    for f, r in ranked:
        if r["score"] <= 0:
            break
        key = (r["score"], r["final"], r["lr"])
        if key in seen:
            seen[key]["same_as"].append(f)
            continue
        if len(out) == k:
            continue                      # still collect the forms of the rules already chosen
        entry = {**r, "same_as": []}
        seen[key] = entry
        out.append((f, entry))
    return out
