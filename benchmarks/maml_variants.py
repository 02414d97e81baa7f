"""Second-order MAML on the CPU: where the time goes, and which variants of the step help.

One process, one thread count, glibc's allocator tuned (the project's default), Omniglot-shaped random data
(5-way 1-shot 15-query, 28x28, 8 tasks per meta-batch, MamlConv4 with stride-2 convs, one inner step). Every
variant computes the same meta-gradient; each is timed interleaved with the others (round-robin, median of
``--reps`` steps) and its meta-gradient on a fixed meta-batch is compared with a float64 loop (max abs error /
max abs value). Variants:

* ``loop_nchw`` (the reference: the per-task loop, NCHW weights, batch norm from primitive ops),
* ``loop_cl`` (channels-last weights, as the engine's default),
* ``loop_cl_native_bn`` / ``loop_nchw_native_bn`` (``nn.BatchNorm2d`` without running statistics: its fused
  kernels; valid on the loop path only, since ``vmap`` through it gives wrong second-order gradients),
* ``vmap_cl`` / ``vmap_nchw`` (the tasks batched with ``torch.func.vmap``).

Then a ``torch.profiler`` breakdown of the reference and of the engine's defaults: self CPU time per operator
class (conv forward, conv backward, element-wise, reductions, copies, other) and the operator count.

    python benchmarks/maml_variants.py --threads 1 --reps 9 --out results/speed
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANTS = {   # name: (vmap, channels_last, norm)
    "loop_nchw": (False, False, "batch"),
    "loop_cl": (False, True, "batch"),
    "loop_cl_native_bn": (False, True, "torch"),
    "loop_nchw_native_bn": (False, False, "torch"),
    "vmap_cl": (True, True, "batch"),
    "vmap_nchw": (True, False, "batch"),
}


def build(name: str, dtype=None):
    import torch

    from metalearn.engine import channels_last
    from metalearn.learners.maml import MAML
    from metalearn.nn import MamlConv4
    vm, cl, norm = VARIANTS[name]
    torch.manual_seed(0)
    net = MamlConv4(1, 5, pool="stride", norm=norm)
    if dtype is not None:
        net = net.to(dtype)
    learner = MAML(net, 5, inner_lr=0.4, vmap=vm, check_finite=False)
    return channels_last(learner) if cl else learner


def meta_grad(learner, episode):
    import torch
    learner.zero_grad()
    learner.loss(episode)[0].backward()
    return torch.cat([p.grad.flatten().double() for p in learner.parameters()])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--out", default="results/speed")
    p.add_argument("--quick", action="store_true", help="2 timed rounds, no profile (a smoke run)")
    args = p.parse_args(argv)
    import metalearn  # noqa: F401  (the OpenMP default before torch loads)
    import torch
    from cpu_throughput import _images
    from op_classes import categorise
    from torch.profiler import ProfilerActivity, profile

    from metalearn.bench import git_state, machine_info
    from metalearn.data.cache import atomic_write
    from metalearn.engine import tune_allocator
    from metalearn.episodes import EpisodeSampler
    tuned = tune_allocator()
    torch.set_num_threads(args.threads)
    git = git_state()
    t0 = time.perf_counter()
    fixed = EpisodeSampler(_images(400, 20, 1, 28), 5, 1, 15, batch_size=args.tasks, seed=5).sample()
    ep64 = type(fixed)(fixed.support_x.double(), fixed.support_y, fixed.query_x.double(), fixed.query_y, fixed.ways)
    ref = meta_grad(build("loop_nchw", torch.float64), ep64)
    learners = {n: build(n) for n in VARIANTS}
    errors = {n: float((meta_grad(lr, fixed) - ref).abs().max() / ref.abs().max()) for n, lr in learners.items()}
    sampler = EpisodeSampler(_images(400, 20, 1, 28, (0, 90, 180, 270)), 5, 1, 15, batch_size=args.tasks, seed=0)
    ep = sampler.sample()
    for lr in learners.values():          # warm-up
        meta_grad(lr, ep)
    times: dict = {n: [] for n in VARIANTS}
    for _ in range(2 if args.quick else args.reps):
        for n, lr in learners.items():
            t = time.perf_counter()
            meta_grad(lr, ep)
            times[n].append(time.perf_counter() - t)
    base = times["loop_nchw"]
    rows = [{"variant": n, "vmap": VARIANTS[n][0], "channels_last": VARIANTS[n][1], "norm": VARIANTS[n][2],
             "ms": 1e3 * statistics.median(ts),
             "speedup_vs_loop_nchw": statistics.median(b / t for b, t in zip(base, ts)),
             "meta_grad_rel_err_vs_fp64": errors[n], "samples_ms": [1e3 * t for t in ts]}
            for n, ts in times.items()]
    profiles = {}
    if not args.quick:
        for n in ("loop_nchw", "loop_cl", "vmap_cl"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    meta_grad(learners[n], ep)
            profiles[n] = categorise(prof)
    result = {"kind": "metalearn-maml-variants", "schema": 1, "threads": args.threads, "tasks": args.tasks,
              "allocator_tuned": tuned, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows,
              "profiles": profiles, "quick": args.quick,
              "command": shlex.join(["python", "benchmarks/maml_variants.py", *(argv or sys.argv[1:])]),
              "git": git, "machine": machine_info("cpu"), "wall_s": time.perf_counter() - t0,
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"maml_variants_{args.threads}t-{(git.get('commit') or 'nocommit')[:8]}.json"
    with atomic_write(path, mode="w") as f:
        json.dump(result, f, indent=1)
    print("| variant | ms | speed-up vs loop_nchw | meta-grad error vs fp64 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['ms']:.1f} | {r['speedup_vs_loop_nchw']:.2f}× | "
              f"{r['meta_grad_rel_err_vs_fp64']:.1e} |")
    for n, pr in profiles.items():
        print(n, {k: f"{100 * v:.0f}%" for k, v in pr["share"].items()}, pr["aten_calls"], "aten calls")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
