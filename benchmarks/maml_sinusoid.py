"""MAML, first-order MAML and Meta-SGD on sinusoid regression (Finn et al. 2017 §5.1; Li et al. 2017, Table 1).

Tasks y = A·sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5] (:class:`metalearn.data.SinusoidTasks`);
a 1-40-40-1 ReLU MLP; one inner SGD step at lr 0.01 on K support points (Meta-SGD: a learned step size per
weight, initialised at 0.01); meta-batch 25; Adam at 1e-3 on the query MSE. The meta-batch runs through
:class:`metalearn.MAML` with ``torch.func.vmap`` over tasks (``Episode(batch=True)``).

Test: 100 fixed held-out tasks (their own seed), one inner step on K points, MSE on ``--test-points``
points of the same task; reported as mean ± 1.96·std/√100, beside Li et al. 2017, Table 1. The same run times
one meta-iteration with vmap and with the loop over tasks (median of interleaved repeats).

    python benchmarks/maml_sinusoid.py --algos maml fomaml metasgd --shots 5 10 20 --iterations 70000 \\
        --out results/maml_sinusoid
    python benchmarks/maml_sinusoid.py --algos maml --shots 5 --iterations 200 --out /tmp/s   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.bench import git_state, machine_info
from metalearn.data.sinusoid import SinusoidTasks
from metalearn.engine import set_threads, tune_allocator
from metalearn.learners.maml import MAML
from metalearn.train.evaluator import mean_ci95

# Li, Zhou, Chen & Li 2017 (Meta-SGD), Table 1: MSE ± 95% CI over 100 test tasks, one inner step
PUBLISHED = {("maml", 5): (1.13, 0.18), ("maml", 10): (0.85, 0.14), ("maml", 20): (0.71, 0.12),
             ("metasgd", 5): (0.90, 0.16), ("metasgd", 10): (0.53, 0.09), ("metasgd", 20): (0.31, 0.05)}
SOURCE = "Li et al. 2017 (Meta-SGD), Table 1"


def mlp(hidden: int = 40) -> nn.Module:
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def make_learner(algo: str, inner_lr: float, seed: int, vmap: bool = True) -> MAML:
    torch.manual_seed(seed)
    if algo not in ("maml", "fomaml", "metasgd"):
        raise ValueError(f"algo: expected maml, fomaml or metasgd, got {algo!r}")
    return MAML(mlp(), ways=1, inner_lr=inner_lr, inner_steps=1, eval_inner_steps=1,
                first_order=algo == "fomaml", learn_lr=algo == "metasgd", vmap=vmap, loss_fn=F.mse_loss)


def test_mse(learner: MAML, shots: int, points: int, tasks: int = 100, seed: int = 10_000) -> list[float]:
    """Per-task query MSE after one inner step on ``shots`` support points (fixed test tasks)."""
    sampler = SinusoidTasks(shots, points, batch_size=tasks, seed=seed)
    ep = sampler.sample()
    from metalearn.learners.maml import meta_batch
    params, buffers = dict(learner.model.named_parameters()), dict(learner.model.named_buffers())
    q_loss, _, _ = meta_batch(learner.model, params, buffers, learner.hyper(), learner.names, ep,
                              steps=learner.eval_inner_steps, rule=learner.rule, first_order=True,
                              loss_fn=F.mse_loss)
    return q_loss.detach().tolist()


def time_modes(algo: str, shots: int, inner_lr: float, repeats: int = 7, iters: int = 20) -> dict:
    """Median ms per meta-iteration, vmap vs the loop over tasks, interleaved."""
    out = {"vmap": [], "loop": []}
    runs = {m: make_learner(algo, inner_lr, 0, vmap=(m == "vmap")) for m in out}
    opts = {m: torch.optim.Adam(runs[m].parameters(), lr=1e-3) for m in out}
    sampler = SinusoidTasks(shots, shots, batch_size=25, seed=1)
    eps = [sampler.sample() for _ in range(iters)]
    for _ in range(repeats + 1):
        for m in out:
            t = time.perf_counter()
            for ep in eps:
                opts[m].zero_grad(set_to_none=True)
                runs[m].backward(ep)
                opts[m].step()
            out[m].append((time.perf_counter() - t) * 1000 / iters)
    med = {m: statistics.median(v[1:]) for m, v in out.items()}   # the first round is warm-up
    return {"vmap_ms": med["vmap"], "loop_ms": med["loop"], "vmap_speedup": med["loop"] / med["vmap"],
            "repeats": repeats, "iterations_per_repeat": iters}


def run(algo: str, shots: int, args: argparse.Namespace) -> dict:
    learner = make_learner(algo, args.inner_lr, args.seed)
    opt = torch.optim.Adam(learner.parameters(), lr=args.meta_lr)
    sampler = SinusoidTasks(shots, args.train_queries or shots, batch_size=args.meta_batch, seed=args.seed)
    curve, t0 = [], time.perf_counter()
    for it in range(1, args.iterations + 1):
        opt.zero_grad(set_to_none=True)
        loss, _ = learner.backward(sampler.sample())
        opt.step()
        if it % args.log_every == 0 or it == args.iterations:
            mse = test_mse(learner, shots, args.test_points, seed=args.val_seed)   # held-out curve tasks
            curve.append({"iteration": it, "train_loss": float(loss), "val_mse": statistics.fmean(mse)})
            print(f"{algo} K={shots} it {it}: train {float(loss):.3f}  val {curve[-1]['val_mse']:.3f}", flush=True)
    wall = time.perf_counter() - t0
    per_task = test_mse(learner, shots, args.test_points, seed=args.test_seed)
    mean, ci = mean_ci95(per_task)
    pub = PUBLISHED.get((algo, shots))
    res = {"kind": "metalearn-maml-sinusoid", "schema": 1, "algo": algo, "shots": shots,
           "mse": mean, "ci95": ci, "test_tasks": len(per_task), "test_points": args.test_points,
           "published": None if pub is None else {"mse": pub[0], "ci95": pub[1], "source": SOURCE},
           "inside_or_below": None if pub is None else bool(mean - ci <= pub[0]),
           "iterations": args.iterations, "meta_batch": args.meta_batch, "inner_lr": args.inner_lr,
           "meta_lr": args.meta_lr, "seed": args.seed, "train_wall_s": wall, "curve": curve,
           "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
           "git": git_state(), "machine": machine_info("cpu"),
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.time_modes:
        res["speed"] = time_modes(algo, shots, args.inner_lr)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", nargs="+", default=["maml", "fomaml", "metasgd"],
                   choices=["maml", "fomaml", "metasgd"])
    p.add_argument("--shots", nargs="+", type=int, default=[5, 10, 20])
    p.add_argument("--iterations", type=int, default=70000)
    p.add_argument("--meta-batch", type=int, default=25)
    p.add_argument("--inner-lr", type=float, default=0.01)
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--train-queries", type=int, default=0, help="query points per training task (0: K)")
    p.add_argument("--test-points", type=int, default=100)
    p.add_argument("--log-every", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-seed", type=int, default=20_000)
    p.add_argument("--test-seed", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-time-modes", dest="time_modes", action="store_false")
    p.add_argument("--out", default="results/maml_sinusoid")
    args = p.parse_args(argv)
    tune_allocator()
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = (git_state().get("commit") or "nocommit")[:8]
    for algo in args.algos:
        for k in args.shots:
            res = run(algo, k, args)
            path = out / f"{algo}_k{k}-{commit}.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(res, indent=1))
            os.replace(tmp, path)
            pub = res["published"]
            print(f"{algo} K={k}: MSE {res['mse']:.3f} ± {res['ci95']:.3f}"
                  + (f" (published {pub['mse']} ± {pub['ci95']})" if pub else "") + f" -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
