"""Meta-training the LSTM optimizer, running any optimizer on held-out optimisees, tuning baselines.

Meta-training (Andrychowicz et al. 2016, sec. 2 and 3): each iteration samples M fresh optimisees and runs them
for ``steps`` optimisee steps, cut into truncated unrolls of ``unroll`` steps. After each unroll the meta-loss
(the sum over the unroll's steps of the optimisees' losses, averaged over the M optimisees) is back-propagated
into the LSTM's weights and Adam takes one step; the optimisee's parameters and the LSTM state are then
detached and carried on. Optimisee gradients are constants (no second derivatives). Every ``val_every``
iterations the optimizer is scored on held-out optimisees; ``best.pt`` keeps the best, ``last.pt`` everything
needed to resume, and training stops early after ``patience`` validations without improvement.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from metalearn.data.cache import atomic_write
from metalearn.optim.lstm import KIND, LSTMOptimizer, LSTMOptimizerConfig, LSTMState, LearnedOptimizer, \
    apply_updates
from metalearn.optim.optimisees import OptimiseeFamily, Problem, ProblemBatch, sample_problems
from metalearn.optim.searched import AddSign, PowerSign
from metalearn.train.checkpoint import atomic_save, load_checkpoint


VAL_METRICS = ("mean", "last_unroll")


@dataclass(frozen=True)
class MetaTrainConfig:
    """Settings of [`meta_train`][metalearn.optim.meta.meta_train] (Andrychowicz et al. 2016: 100 steps, unrolls
    of 20).

    Attributes:
        steps: Optimisee steps per trajectory (the horizon); a multiple of ``unroll``.
        unroll: Truncation length: one meta-step of Adam after every ``unroll`` optimisee steps.
        optimisees: M, fresh optimisees per iteration (the meta-loss is their mean).
        iterations: Number of trajectories (iterations of meta-training).
        lr: Adam's meta learning rate (the paper picks it by random search; the authors' code defaults to 1e-3).
        grad_clip: Clip the meta-gradient's norm to this value; None does not clip (neither the paper nor the
            authors' code clips; the clip keeps one unusually bad unroll from dominating Adam's moments).
        val_every: Validate every this many iterations (``best.pt`` keeps the best).
        val_optimisees: Held-out optimisees of each validation.
        val_metric: What ``best.pt`` is chosen by: ``mean``, the mean loss over the whole trajectory (the
            meta-objective), or ``last_unroll``, the mean loss over its last ``unroll`` steps (the authors' code
            keeps the optimizer with the lowest loss summed over the last unroll; closer to the final loss that
            the benchmark reports).
        patience: Stop after this many validations without improvement; None never stops early.
        seed: Seed of the optimisees drawn.
    """

    steps: int = 100
    unroll: int = 20
    optimisees: int = 1
    iterations: int = 100
    lr: float = 1e-3
    grad_clip: float | None = 1.0
    val_every: int = 10
    val_optimisees: int = 32
    val_metric: str = "mean"
    patience: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "unroll", "optimisees", "iterations", "val_every", "val_optimisees"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        if self.unroll > self.steps:
            raise ValueError(f"unroll: expected <= steps ({self.steps}), got {self.unroll}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip: expected > 0 or None, got {self.grad_clip}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience: expected >= 1 or None, got {self.patience}")
        if self.val_metric not in VAL_METRICS:
            raise ValueError(f"val_metric: expected one of {VAL_METRICS}, got {self.val_metric!r}")


@dataclass
class MetaTrainResult:
    """What [`meta_train`][metalearn.optim.meta.meta_train] returns.

    Attributes:
        best_val: Best validation score (``cfg.val_metric`` of the validation optimisees' losses).
        best_iteration: Iteration of the best validation (-1 before the first).
        iterations_done: Iterations run, resumed ones included.
        optimisee_steps: Optimisee steps taken in meta-training (M per step).
        train_seconds: Meta-training time, validation excluded.
        skipped_unrolls: Unrolls whose meta-loss was not finite (no meta-step taken).
        history: One dict per validation.
    """
    best_val: float = math.inf           # cfg.val_metric on the validation optimisees
    best_iteration: int = -1
    iterations_done: int = 0
    optimisee_steps: int = 0             # optimisee steps taken in meta-training (M per step)
    train_seconds: float = 0.0           # meta-training time, validation excluded
    skipped_unrolls: int = 0             # unrolls whose meta-loss was not finite (no meta-step taken)
    history: list = field(default_factory=list)   # one dict per validation

    @property
    def steps_per_second(self) -> float:
        """Meta-training throughput in optimisee steps per second (validation excluded)."""
        return self.optimisee_steps / self.train_seconds if self.train_seconds > 0 else float("nan")


def _leaves(params: dict) -> dict:
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def unroll(net: LSTMOptimizer, batch: ProblemBatch, params: dict, state: LSTMState, grads: dict, t0: int,
           length: int) -> tuple[Tensor, dict, LSTMState, dict, Tensor]:
    """One truncated unroll of ``length`` steps from step ``t0``.

    Args:
        net: The LSTM optimizer.
        batch: The optimisees.
        params: Their parameters at step ``t0``.
        state: The LSTM's state at step ``t0``.
        grads: The gradients at step ``t0``.
        t0: The step the unroll starts from.
        length: The number of steps (>= 1).

    Returns:
        (meta_loss, params, state, grads, losses): ``meta_loss`` = Σ_{t=t0+1}^{t0+length} mean_M f(θ_t),
        differentiable in the LSTM's weights; ``losses`` (length, M) detached; params/state/grads are those of the
        last step (params and state still attached to the graph; detach them before the next unroll).

    Raises:
        ValueError: ``length`` < 1.
    """
    if length < 1:
        raise ValueError(f"unroll length: expected >= 1, got {length}")
    meta_loss, record = 0.0, []
    for t in range(t0 + 1, t0 + length + 1):
        updates, state = net.update(grads, state, check_finite=False)
        params = apply_updates(params, updates)
        losses = batch.losses(params, t)                                         # (M,)
        meta_loss = meta_loss + losses.mean()
        g = torch.autograd.grad(losses.sum(), list(params.values()), retain_graph=True)   # constants
        grads = dict(zip(params, g))
        record.append(losses.detach())
    return meta_loss, params, state, grads, torch.stack(record)


def _trajectory_no_meta(net: LSTMOptimizer, batch: ProblemBatch, steps: int) -> Tensor:
    """(steps + 1, M) losses of the LSTM optimizer on ``batch`` (functional API, no meta-graph)."""
    return run_optimizer(lambda ps: LearnedOptimizer(ps, net, check_finite=False), batch, steps)[0]


def meta_train(net: LSTMOptimizer, family: OptimiseeFamily, cfg: MetaTrainConfig,
               out_dir: str | os.PathLike | None = None, val_family: OptimiseeFamily | None = None,
               resume: bool = False, log: Callable[[str], None] | None = print) -> MetaTrainResult:
    """Meta-train ``net`` in place on ``family``; validate on ``val_family`` (default: ``family``, other seeds).

    At the end ``net`` holds the best-validated weights.

    Args:
        net: The LSTM optimizer to train.
        family: Where the training optimisees come from
            ([`QuadraticFamily`][metalearn.optim.optimisees.QuadraticFamily],
            [`MLPFamily`][metalearn.optim.optimisees.MLPFamily], or your own).
        cfg: The settings.
        out_dir: Where to write ``metrics.jsonl`` (one line per validation), ``best.pt`` (the best-validated
            weights, loadable with [`LSTMOptimizer.load`][metalearn.optim.lstm.LSTMOptimizer.load]) and
            ``last.pt`` (weights, Adam, RNG, iteration); None writes nothing.
        val_family: Where the validation optimisees come from (default: ``family``, other seeds).
        resume: Continue from ``out_dir/last.pt``.
        log: Called with one line of progress per validation; None is silent.

    Returns:
        The best validation, the iterations done and the throughput.

    Raises:
        ValueError: ``cfg.steps`` is not a multiple of ``cfg.unroll``.
    """
    if cfg.steps % cfg.unroll:
        raise ValueError(f"steps ({cfg.steps}) must be a multiple of unroll ({cfg.unroll})")
    say = log or (lambda s: None)
    out = Path(out_dir) if out_dir is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)
    val_problems = sample_problems(val_family or family, cfg.val_optimisees,
                                   torch.Generator().manual_seed(cfg.seed + 1_000_003))
    val_batch = ProblemBatch(val_family or family, val_problems)
    adam = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    res, start, best_state, bad = MetaTrainResult(), 0, None, 0
    if resume and out is not None and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt")
        free = ("iterations", "patience")       # may change on resume (train longer, stop differently)
        # settings added since the checkpoint was written take their defaults, which keep the old behaviour
        old = {k: v for k, v in {**asdict(MetaTrainConfig()), **ck.get("meta_config", {})}.items() if k not in free}
        if old != {k: v for k, v in asdict(cfg).items() if k not in free} or ck.get("config") != asdict(net.config):
            raise ValueError(f"{out / 'last.pt'} was written with another config (only {free} may change on "
                             "resume); use a fresh out_dir")
        net.load_state_dict(ck["state_dict"])
        adam.load_state_dict(ck["adam"])
        gen.set_state(ck["rng"])
        start, bad = ck["iteration"], ck["bad"]
        res = MetaTrainResult(**{k: v for k, v in ck["result"].items()})
        best_state = ck["best_state_dict"]
        say(f"resumed at iteration {start} (best val {res.best_val:.4g} at {res.best_iteration})")

    def checkpoint(it: int) -> None:
        if out is None:
            return
        atomic_save({"format": 1, "kind": KIND, "config": asdict(net.config), "meta_config": asdict(cfg),
                     "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                     "best_state_dict": best_state, "adam": adam.state_dict(), "rng": gen.get_state(),
                     "iteration": it, "bad": bad, "result": asdict(res)}, out / "last.pt")

    n_unrolls = cfg.steps // cfg.unroll
    for it in range(start, cfg.iterations):
        tic = time.perf_counter()
        batch = ProblemBatch(family, sample_problems(family, cfg.optimisees, gen))
        params = _leaves(batch.params)
        state = net.init(params)
        loss0 = batch.losses(params, 0)
        grads = dict(zip(params, torch.autograd.grad(loss0.sum(), list(params.values()))))
        for k in range(n_unrolls):
            meta_loss, params, state, grads, _ = unroll(net, batch, params, state, grads, k * cfg.unroll,
                                                        cfg.unroll)
            if not torch.isfinite(meta_loss):
                res.skipped_unrolls += 1
                break          # this trajectory diverged: drop the rest of it, sample fresh optimisees
            adam.zero_grad(set_to_none=True)
            meta_loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            adam.step()
            params, state = _leaves(params), state.detach()
            res.optimisee_steps += cfg.unroll * cfg.optimisees
        res.train_seconds += time.perf_counter() - tic
        res.iterations_done = it + 1
        if (it + 1) % cfg.val_every == 0 or it + 1 == cfg.iterations:
            losses = _trajectory_no_meta(net, val_batch, cfg.steps)            # (steps+1, M)
            finite = bool(torch.isfinite(losses).all())
            scores = {"mean": float(losses[1:].mean()), "last_unroll": float(losses[-cfg.unroll:].mean())}
            val = scores[cfg.val_metric] if finite else math.inf
            final = float(losses[-1].mean())
            improved = val < res.best_val
            if improved:
                res.best_val, res.best_iteration, bad = val, it + 1, 0
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                if out is not None:
                    net.save(out / "best.pt", iteration=it + 1, val=val)
            else:
                bad += 1
            rec = {"iteration": it + 1, "val_mean_loss": scores["mean"] if finite else math.inf,
                   "val_last_unroll_loss": scores["last_unroll"] if finite else math.inf, "val_final_loss": final,
                   "optimisee_steps": res.optimisee_steps, "train_seconds": round(res.train_seconds, 3),
                   "steps_per_second": res.steps_per_second, "skipped_unrolls": res.skipped_unrolls}
            res.history.append(rec)
            say(f"it {it + 1:5d}  val mean loss {rec['val_mean_loss']:.4f}  last unroll "
                f"{rec['val_last_unroll_loss']:.4f}  final {final:.4f}  "
                f"{res.steps_per_second:.1f} optimisee steps/s{'  *' if improved else ''}")
            if out is not None:
                with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
            checkpoint(it + 1)
            if cfg.patience is not None and bad >= cfg.patience:
                say(f"early stop: {bad} validations without improvement")
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    return res


def run_optimizer(make_opt: Callable[[list], torch.optim.Optimizer], batch: ProblemBatch, steps: int,
                  ) -> tuple[Tensor, dict]:
    """Run a ``torch.optim``-style optimizer on the stacked optimisees of ``batch`` for ``steps`` steps.

    Every built-in rule is elementwise, so stacking M optimisees gives each its own run. A diverging run gives
    inf/nan losses, not an error.

    Args:
        make_opt: ``make_opt(list_of_leaf_tensors)`` builds the optimizer (e.g.
            ``lambda ps: torch.optim.Adam(ps, lr=1e-2)``).
        batch: The optimisees.
        steps: The number of steps (>= 1).

    Returns:
        (losses, params): losses (steps + 1, M) float64 on the CPU, losses[t] = f(θ_t) on the step-t batch;
        params: final, stacked.

    Raises:
        ValueError: ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    params = {k: v.detach().clone().requires_grad_(True) for k, v in batch.params.items()}  # stepped in place
    opt = make_opt(list(params.values()))
    out = []
    for t in range(steps + 1):
        with torch.enable_grad():
            losses = batch.losses(params, t)
        out.append(losses.detach().to("cpu", torch.float64))
        if t == steps:
            break
        if not bool(torch.isfinite(losses).all()):       # diverged: the rest of the curve is inf
            out.extend([torch.full_like(out[-1], math.inf)] * (steps - t))
            break
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            losses.sum().backward()
        opt.step()
    return torch.stack(out), {k: v.detach() for k, v in params.items()}


BASELINES: dict[str, Callable[[list, float], torch.optim.Optimizer]] = {
    "SGD": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
    "NAG": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, nesterov=True),
    "RMSprop": lambda ps, lr: torch.optim.RMSprop(ps, lr=lr),
    "Adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
    # Bello et al. 2017 (metalearn.optim.searched), constant sign decay; searched_baselines(T) adds ld/cd/rd
    "PowerSign": lambda ps, lr: PowerSign(ps, lr=lr),
    "AddSign": lambda ps, lr: AddSign(ps, lr=lr),
}
LR_GRID = tuple(float(f"{m}e{e}") for e in range(-4, 2) for m in (1, 3))   # 1e-4, 3e-4, ..., 10, 30


def tune_lr(name: str, batch: ProblemBatch, steps: int, grid: Sequence[float] = LR_GRID,
            log: Callable[[str], None] | None = print,
            baselines: dict[str, Callable[[list, float], torch.optim.Optimizer]] | None = None,
            ) -> tuple[float, dict]:
    """Grid search of baseline ``name``'s learning rate: the lr with the lowest mean loss after ``steps`` steps.

    Args:
        name: The baseline, a key of ``baselines``.
        batch: The tuning optimisees (not the test ones).
        steps: The number of steps of each run.
        grid: The learning rates tried.
        log: Gets one line per learning rate (None: quiet).
        baselines: Where ``name`` is looked up (default ``BASELINES``; e.g. ``{**BASELINES,
            **searched_baselines(steps)}`` for the decayed PowerSign / AddSign variants).

    Returns:
        (best lr, {lr: mean final loss}).

    Raises:
        ValueError: An unknown ``name``.
    """
    table = BASELINES if baselines is None else baselines
    if name not in table:
        raise ValueError(f"name: expected one of {sorted(table)}, got {name!r}")
    scores = {}
    for lr in grid:
        losses, _ = run_optimizer(lambda ps: table[name](ps, lr), batch, steps)
        final = float(losses[-1].mean())
        scores[lr] = final if math.isfinite(final) else math.inf
        if log:
            log(f"  tune {name:8s} lr {lr:<8g} final loss {scores[lr]:.4g}")
    best = min(scores, key=scores.get)
    return best, scores


def write_json(obj, path: str | os.PathLike) -> Path:
    with atomic_write(path, mode="w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
    return Path(path)
