"""Time one MAML meta-iteration: our vmapped meta-batch against our loop over tasks, in the same run.

Each mode runs the same meta-iteration (the meta-batch's forward, inner loop, query loss, backward and an
Adam step) on the same random Omniglot-shaped episodes (28x28x1, 15 queries per class), with the strided
Conv4 + batch-statistics BatchNorm of MAML's Omniglot network.  Reported per mode: median milliseconds over
``--repeats`` timed iterations after ``--warmup``, the speed-up against the loop, peak memory, and the largest
difference of the meta-gradient from the loop's (relative to the gradient's largest entry; first-order modes
against fo-loop, the others against loop).

Modes: loop (the reference: a Python loop over tasks), vmap, vmap-chunk (back-propagated in chunks of
``--chunk-size`` tasks), fo-loop / fo-vmap (first-order MAML), compile (torch.compile of the meta-batch
loss), compile-cudagraphs (torch.compile mode="reduce-overhead", CUDA only), bf16 (vmap under bf16 autocast,
CUDA only).  A mode that fails is reported with its error, not hidden.

    python benchmarks/maml_speed.py --device cuda --json runs/maml_speed.json
    python benchmarks/maml_speed.py --device cpu --tasks 8 --repeats 3      # a small CPU run
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from metalearn.learners.maml import MAML
from metalearn.nn import MamlConv4
from metalearn.types import Episode

SETTINGS = {"5w1s-1step": (5, 1, 1), "5w5s-5step": (5, 5, 5), "5w1s-5step": (5, 1, 5), "5w5s-1step": (5, 5, 1)}
ALL_MODES = ["loop", "vmap", "vmap-chunk", "fo-loop", "fo-vmap", "compile", "compile-cudagraphs", "bf16"]


def episode(tasks: int, ways: int, shots: int, queries: int, device: torch.device, seed: int) -> Episode:
    g = torch.Generator(device="cpu").manual_seed(seed)
    sy = torch.arange(ways).repeat_interleave(shots)[None].expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries)[None].expand(tasks, -1).contiguous()
    ep = Episode(torch.rand(tasks, ways * shots, 1, 28, 28, generator=g), sy,
                 torch.rand(tasks, ways * queries, 1, 28, 28, generator=g), qy, ways)
    return ep.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(mode: str, learner: MAML, opt: torch.optim.Optimizer, device: torch.device):
    """A function ep -> None that runs one meta-iteration in ``mode``."""
    if mode in ("compile", "compile-cudagraphs"):
        loss_fn = torch.compile(lambda ep: learner.loss(ep)[0],
                                mode="reduce-overhead" if mode == "compile-cudagraphs" else None)

        def step(ep):
            opt.zero_grad(set_to_none=True)
            loss_fn(ep).backward()
            opt.step()
        step.loss_fn = loss_fn
        return step
    if mode == "bf16":
        def step(ep):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = learner.loss(ep)[0]
            loss.backward()
            opt.step()
        return step

    def step(ep):
        opt.zero_grad(set_to_none=True)
        learner.backward(ep)
        opt.step()
    return step


def meta_gradient(learner: MAML, ep: Episode, mode: str, device: torch.device) -> list[torch.Tensor]:
    learner.zero_grad(set_to_none=True)
    if mode == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = learner.loss(ep)[0]
        loss.backward()
    else:
        learner.backward(ep)
    return [p.grad.detach().clone() for p in learner.parameters()]


def run_mode(mode: str, setting: str, args, device: torch.device, reference: list | None) -> dict:
    ways, shots, steps = SETTINGS[setting]
    torch.manual_seed(args.seed)
    model = MamlConv4(1, ways, hidden=args.hidden, pool="stride").to(device)
    first_order = mode.startswith("fo-")
    vmap = mode not in ("loop", "fo-loop")
    chunk = args.chunk_size if mode == "vmap-chunk" else 0
    learner = MAML(model, ways, inner_lr=0.4, inner_steps=steps, first_order=first_order, vmap=vmap,
                   chunk_size=chunk, check_finite=False).to(device)
    ep = episode(args.tasks, ways, shots, args.queries, device, args.seed)
    grads = meta_gradient(learner, ep, mode, device) if mode not in ("compile", "compile-cudagraphs") else None
    opt = torch.optim.Adam(learner.parameters(), 1e-3)
    step = make_step(mode, learner, opt, device)
    if grads is None:  # compiled: the gradient of the compiled loss at the initial parameters, before any step
        learner.zero_grad(set_to_none=True)
        step.loss_fn(ep).backward()
        grads = [p.grad.detach().clone() for p in learner.parameters()]
    for _ in range(args.warmup):
        step(ep)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        step(ep)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    out = {"setting": setting, "mode": mode, "tasks": args.tasks, "inner_steps": steps, "ms_median": statistics.median(times),
           "ms_all": times, "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                             if device.type == "cuda" else None)}
    if grads is not None and reference is not None:
        scale = max(float(r.abs().max()) for r in reference)
        out["max_grad_diff_rel"] = max(float((a - b).abs().max()) for a, b in zip(grads, reference)) / scale
    if mode in ("loop", "fo-loop"):
        out["_grads"] = grads
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--settings", default="5w1s-1step,5w5s-5step", help=f"comma list of {sorted(SETTINGS)}")
    p.add_argument("--modes", default="loop,vmap,vmap-chunk,fo-loop,fo-vmap,compile,compile-cudagraphs,bf16")
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None, help="write all results to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    settings = [s for s in args.settings.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    for s in settings:
        if s not in SETTINGS:
            p.error(f"--settings: unknown {s!r}; expected from {sorted(SETTINGS)}")
    for m in modes:
        if m not in ALL_MODES:
            p.error(f"--modes: unknown {m!r}; expected from {ALL_MODES}")
    if "loop" not in modes:
        modes = ["loop"] + modes  # the reference always runs
    machine = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    print(f"# {machine}", flush=True)
    results = []
    for s in settings:
        refs: dict = {}
        loop_ms = None
        for m in modes:
            ref = refs.get("fo-loop" if m.startswith("fo-") else "loop")
            if m in ("compile-cudagraphs", "bf16") and device.type != "cuda":
                results.append({"setting": s, "mode": m, "skipped": "CUDA only"})
                continue
            try:
                r = run_mode(m, s, args, device, ref)
            except Exception as e:  # report, do not hide
                r = {"setting": s, "mode": m, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            if m in ("loop", "fo-loop"):
                refs[m] = r.pop("_grads", None)
            if m == "loop":
                loop_ms = r.get("ms_median")
            if loop_ms and "ms_median" in r:
                r["speedup_vs_loop"] = loop_ms / r["ms_median"]
            results.append(r)
            if "error" in r or "skipped" in r:
                print(f"{s:12s} {m:20s} {r.get('error') or r.get('skipped')}", flush=True)
            else:
                mem = "" if r["peak_mem_gib"] is None else f"  peak {r['peak_mem_gib']:.2f} GiB"
                diff = f"  grad diff {r['max_grad_diff_rel']:.1e}" if "max_grad_diff_rel" in r else ""
                print(f"{s:12s} {m:20s} {r['ms_median']:9.1f} ms  x{r.get('speedup_vs_loop', 1.0):5.2f}{mem}{diff}",
                      flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        from metalearn.data.cache import atomic_write
        with atomic_write(args.json, mode="w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
