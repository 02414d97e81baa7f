"""CPU throughput of every workload against the machine's own ceilings, levers off vs the default policy.

One run measures, each in a fresh subprocess (the allocator and OpenMP settings are per process), interleaved
A/B/A/B so that a noisy machine hits both sides alike:

* ceilings: fp32 and bf16 ``torch.mm`` (2048²) and a oneDNN 3×3 conv (64→64 channels, 28×28, batch 256,
  channels-last) in GFLOP/s;
* workloads, as the trainer and evaluator run them: ProtoNet Omniglot 60-way 1-shot 5-query training step;
  ProtoNet evaluation of 5-way 1-shot 15-query episodes (10 per forward): 100 episodes per call
  (``protonet_eval``), and the whole 1000-episode protocol on a split of Omniglot's test size
  (``protonet_eval_1000``: the default policy embeds each of its images once, see ``evaluate``); Matching Networks training steps
  (Omniglot 20-way 1-shot, miniImageNet 5-way 5-shot 84 px); Siamese training step (30 classes × 5 images);
  second-order MAML 5-way 1-shot 15-query, 8 tasks (loop and vmap, with the meta-gradient's error against a
  float64 reference; and ``maml2_procs``: the meta-batch split over N processes of one thread each, vmap in each,
  the meta-gradient all-reduced over gloo, as ``torchrun --nproc_per_node N -m metalearn train`` runs it, measured
  at N = each ``--threads`` value >= 2 against the loop with the levers off at one thread); TTT's ResNet-26 (GroupNorm) joint training step, batch 32 × 4 rotations; one 20-step
  unroll of the LSTM optimizer on the MNIST MLP (M = 4 optimisees).

Policies (besides these two, the Conv4 training steps run once more as ``eager_tail``: the default policy with
``METALEARN_KERNELS=off``, PyTorch's own BatchNorm / max-pool / ReLU in place of the fused kernel): ``off`` --
glibc's default allocator, OpenMP's default wait policy, fp32, NCHW conv weights, the
evaluation with autograd's no_grad and unfolded BatchNorm, Conv4 blocks with the ReLU before the pool (how the
project ran before the engine); ``default`` -- what ``metalearn train``/``eval`` do now (metalearn.engine:
tuned allocator, the OpenMP wait policy of ``metalearn._omp`` (a brief spin on a quiet machine, PASSIVE next to
a busy one), ``precision: auto`` -> bf16 on the encoder where the CPU has native
bf16, channels-last weights, folded BatchNorm under inference_mode). FLOPs of one step are counted with
``torch.utils.flop_counter`` (forward + backward). Synthetic uint8 images of the real shapes: speed does not
depend on pixel values.

    python benchmarks/cpu_throughput.py --threads 1 2 --out results/speed        # ~10 min on 2 cores
    python benchmarks/cpu_throughput.py --threads 1 --repeats 1 --quick --out /tmp/speed   # a smoke run

``--profile`` adds, for each workload at one thread with the default policy (and ``eager_tail``), the self CPU time
of three calls by operator class (conv forward / backward, batch norm, pooling, matmul, element-wise, ...): where the time goes
once the convolutions are fast.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = ["ceiling_mm", "ceiling_conv", "protonet_train", "protonet_eval", "protonet_eval_1000",
             "matchnet_train_omniglot",
             "matchnet_train_mini", "siamese_train", "maml2_loop", "maml2_vmap", "maml2_procs", "ttt_joint", "lstm_mnist"]
POLICIES = ["off", "default"]
# the Conv4 training steps are also timed with the default policy but PyTorch's own BatchNorm, max-pool and ReLU
# (METALEARN_KERNELS=off): the "eager_tail" policy, so that the fused kernel's share of the speed-up is measured
# in the same run
KERNEL_WORKLOADS = {"protonet_train", "matchnet_train_omniglot", "matchnet_train_mini", "siamese_train"}
# N processes of one thread each on one meta-batch (``torchrun --nproc_per_node N -m metalearn train``): measured
# at N = --threads >= 2, default policy only; its "levers off" column is the loop's (maml2_loop, 1 thread, off)
PROCS = {"maml2_procs"}
# one call is a whole evaluation (about two minutes with the levers off): warmed up inside _build on 10 episodes,
# then timed once with the levers off and three times with the default policy
WHOLE = {"protonet_eval_1000"}


# ------------------------------------------------------------------------------------------- the worker

def _worker(spec: dict) -> dict:
    """Runs in a fresh process: set the policy, build the workload, time it. Returns a JSON-able dict."""
    policy, threads, workload, quick = spec["policy"], spec["threads"], spec["workload"], spec["quick"]
    device = spec.get("device", "cpu")
    if policy == "off":
        os.environ["METALEARN_OMP"] = "default"
        os.environ["METALEARN_MALLOC"] = "default"
    if policy == "eager_tail":
        os.environ["METALEARN_KERNELS"] = "off"
    import metalearn  # noqa: F401  (sets the OpenMP default before torch loads, unless turned off above)
    import torch

    from metalearn import distributed as D
    from metalearn.engine import tune_allocator
    tuned = tune_allocator()
    if workload in PROCS:
        D.init_from_env()
        extra_procs = {"processes": D.world_size(), "threads_per_process": 1}
        threads = 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fn, flops, extra = _build(workload, "default" if policy == "eager_tail" else policy, quick, device)
    if device.startswith("cuda"):
        inner = fn

        def fn():
            inner()
            torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    reps = 3 if quick else spec["reps"]
    warm = 1 if quick else 3
    if workload in WHOLE:
        reps, warm = (1 if policy == "off" else 3), 0
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    if spec.get("profile") and policy in ("default", "eager_tail") and threads == 1 and workload not in WHOLE | PROCS \
            and not workload.startswith("ceiling") and not device.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from op_classes import categorise
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fn()
        extra["profile"] = categorise(prof)
    if device.startswith("cuda"):
        extra["max_memory_allocated"] = int(torch.cuda.max_memory_allocated())
    if workload in PROCS:
        extra.update(extra_procs)
        threads = spec["threads"]
        D.shutdown()
    return {"workload": workload, "policy": policy, "threads": threads, "device": device, "ms": med * 1000,
            "samples_ms": [t * 1000 for t in times], "gflop": flops / 1e9 if flops else None,
            "gflops": (flops / med / 1e9) if flops else None, "allocator_tuned": tuned,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
            **extra}


def _count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _images(n_classes: int, per_class: int, c: int, size: int, rotations=(0,)):
    import torch

    from metalearn.data.storage import ClassImages
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n_classes * per_class, c, size, size), dtype=torch.uint8, generator=g)
    return ClassImages(imgs, torch.arange(n_classes) * per_class, torch.full((n_classes,), per_class),
                       tuple(f"c{i}" for i in range(n_classes)), tuple(rotations))


def _old_conv4_order(module) -> None:
    """Conv4 blocks as the project had them before the engine: conv, BN, ReLU, pool."""
    from torch import nn
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        mods = list(seq._modules.values())
        if len(mods) == 4 and isinstance(mods[2], nn.MaxPool2d) and isinstance(mods[3], nn.ReLU):
            keys = list(seq._modules)
            seq._modules[keys[2]], seq._modules[keys[3]] = mods[3], mods[2]


def _prepare(learner, policy: str, device: str = "cpu"):
    from metalearn.engine import channels_last, fused_kernels, resolve_precision
    learner = learner.to(device)
    if policy == "off":
        _old_conv4_order(learner)
        learner.precision = "fp32"
    else:
        fused_kernels(channels_last(learner))
        learner.precision = resolve_precision("auto", device, learner.bf16_safe)
    return learner


def _train_step(learner, sampler):
    import torch
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    learner.train()

    def step():
        ep = sampler.sample()
        opt.zero_grad(set_to_none=True)
        learner.backward(ep)
        opt.step()
    return step


def _build(workload: str, policy: str, quick: bool, device: str = "cpu"):
    import torch

    from metalearn.episodes import EpisodeSampler as _Sampler
    dev = torch.device(device)

    def EpisodeSampler(data, *a, **k):   # noqa: N802  (the data, and so the episodes, on the device)
        return _Sampler(data.to(dev), *a, **k)
    extra: dict = {}
    if workload == "ceiling_mm":
        dt = torch.float32 if policy == "off" else torch.bfloat16
        a, b = torch.randn(2048, 2048).to(dev, dt), torch.randn(2048, 2048).to(dev, dt)
        extra["dtype"] = str(dt).replace("torch.", "")
        return (lambda: [torch.mm(a, b) for _ in range(4)]), 4 * 2 * 2048 ** 3, extra
    if workload == "ceiling_conv":
        dt = torch.float32 if policy == "off" else torch.bfloat16
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dev, dt).to(memory_format=torch.channels_last)
        x = torch.randn(256, 64, 28, 28).to(dev, dt).contiguous(memory_format=torch.channels_last)
        extra["dtype"] = str(dt).replace("torch.", "")
        with torch.no_grad():
            fn = lambda: [conv(x) for _ in range(4)]   # noqa: E731
            flops = 4 * 2 * 256 * 28 * 28 * 64 * 64 * 9
        return (lambda: torch.no_grad()(fn)()), flops, extra
    if workload == "protonet_train":
        from metalearn.learners.protonet import ProtoNet
        from metalearn.nn import Conv4
        learner = _prepare(ProtoNet(Conv4(1), check_support=False), policy, device)
        step = _train_step(learner, EpisodeSampler(_images(400, 20, 1, 28, (0, 90, 180, 270)), 60, 1, 5, seed=0))
        return step, _count_flops(step), extra
    if workload == "protonet_eval":
        from metalearn.learners.protonet import ProtoNet
        from metalearn.nn import Conv4
        from metalearn.train.evaluator import evaluate
        learner = _prepare(ProtoNet(Conv4(1), check_support=False), policy, device)
        sampler = EpisodeSampler(_images(400, 20, 1, 28, (0, 90, 180, 270)), 5, 1, 15, batch_size=10, seed=0)
        episodes = 20 if quick else 100
        fold = policy != "off"
        fn = lambda: evaluate(learner, sampler, episodes, fold_bn=fold)   # noqa: E731
        learner.eval()
        ep = sampler.sample()
        with torch.no_grad():
            flops = _count_flops(lambda: learner.predict(ep)) * episodes // sampler.batch_size
        extra["episodes_per_call"] = episodes
        return fn, flops, extra
    if workload == "protonet_eval_1000":
        # the whole protocol: 1000 5-way 1-shot 15-query episodes from a split shaped like Omniglot's test split
        # (423 characters x 20 drawings x 4 rotation classes = 33840 images under their angles, against
        # 80000 images the episodes draw), so that the default policy embeds each image once
        # (evaluate's reuse_embeddings) and the levers-off run embeds every episode's images
        from metalearn.learners.protonet import ProtoNet
        from metalearn.nn import Conv4
        from metalearn.train.evaluator import evaluate
        learner = _prepare(ProtoNet(Conv4(1), check_support=False), policy, device)
        data = _images(60 if quick else 423, 20, 1, 28, (0, 90, 180, 270))
        episodes = 200 if quick else 1000
        fold = policy != "off"
        evaluate(learner, EpisodeSampler(data, 5, 1, 15, batch_size=10, seed=1), 10, fold_bn=fold,
                 reuse_embeddings=fold)                                                # warm-up
        fn = lambda: evaluate(learner, EpisodeSampler(data, 5, 1, 15, batch_size=10, seed=0), episodes,   # noqa: E731
                              fold_bn=fold)
        learner.eval()
        sampler = EpisodeSampler(data, 5, 1, 15, batch_size=10, seed=0)
        ep = sampler.sample()
        with torch.no_grad():
            per_draw = _count_flops(lambda: learner.predict(ep))
            if fold:      # what the default policy runs: every image once, then the head per episode
                z = learner.encode(torch.cat([ep.support_x, ep.query_x], dim=1))
                head = _count_flops(lambda: learner.logits_from_embeddings(z[:, :5], ep.support_y, z[:, 5:], 5))
                per_image = _count_flops(lambda: learner.encode(ep.query_x[0, :1]))
                flops = per_image * data.images.shape[0] * 4 + head * (episodes // sampler.batch_size)
            else:
                flops = per_draw * (episodes // sampler.batch_size)
        extra["episodes_per_call"] = episodes
        extra["images_in_split"] = int(data.images.shape[0]) * 4
        extra["images_drawn"] = episodes * 5 * 16
        return fn, flops, extra
    if workload in ("matchnet_train_omniglot", "matchnet_train_mini"):
        from metalearn.learners.matchnet import MatchingNet
        from metalearn.nn import Conv4
        if workload == "matchnet_train_omniglot":
            data, shape = _images(400, 20, 1, 28, (0, 90, 180, 270)), (20, 1, 5)
        else:
            data, shape = _images(64, 40 if quick else 100, 3, 84), (5, 5, 15)
        c = data.image_shape[0]
        learner = _prepare(MatchingNet(Conv4(c), scale=10.0, check_support=False), policy, device)
        step = _train_step(learner, EpisodeSampler(data, *shape, seed=0))
        return step, _count_flops(step), extra
    if workload == "siamese_train":
        from metalearn.learners.siamese import Siamese
        from metalearn.nn import Conv4
        learner = _prepare(Siamese(Conv4(1), 64, fill=1.0, check_support=False), policy, device)
        step = _train_step(learner, EpisodeSampler(_images(400, 20, 1, 28, (0, 90, 180, 270)), 30, 1, 4, seed=0))
        return step, _count_flops(step), extra
    if workload in ("maml2_loop", "maml2_vmap", "maml2_procs"):
        from metalearn import distributed as D
        from metalearn.learners.maml import MAML
        from metalearn.nn import MamlConv4
        vm = workload != "maml2_loop"

        def make(dtype):
            torch.manual_seed(0)
            net = MamlConv4(1, 5, pool="stride").to(dev, dtype)
            return MAML(net, 5, inner_lr=0.4, vmap=vm, check_finite=False)
        learner = make(torch.float32)   # NCHW under both policies, as the engine builds MAML (maml_variants.py)
        # meta-gradient of one fixed meta-batch against the float64 loop
        ep = EpisodeSampler(_images(400, 20, 1, 28), 5, 1, 15, batch_size=8, seed=5).sample()
        tasks = 32 if dev.type == "cuda" else 8
        sampler = EpisodeSampler(_images(400, 20, 1, 28, (0, 90, 180, 270)), 5, 1, 15, batch_size=tasks, seed=0)
        extra["tasks"] = tasks
        ref = make(torch.float64)
        ref.vmap = False
        ep64 = type(ep)(ep.support_x.double(), ep.support_y, ep.query_x.double(), ep.query_y, ep.ways)
        ref.loss(ep64)[0].backward()
        learner.zero_grad()
        if workload in PROCS:   # this process's share of the tasks; the meta-gradient all-reduced over the processes
            mstep = D.MetaBatchStep(learner, tasks)
            opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
            learner.train()

            def step():
                shard = sampler.sample(tasks=(mstep.lo, mstep.hi))
                opt.zero_grad(set_to_none=True)
                mstep.backward(shard)
                opt.step()
            fixed = EpisodeSampler(_images(400, 20, 1, 28), 5, 1, 15, batch_size=8, seed=5).sample(
                tasks=(mstep.lo, mstep.hi))
            mstep.backward(fixed)
        else:
            step = _train_step(learner, sampler)
            learner.loss(ep)[0].backward()
        g = torch.cat([p.grad.flatten().double() for p in learner.parameters()])
        r = torch.cat([p.grad.flatten() for p in ref.parameters()])
        extra["meta_grad_rel_err_vs_fp64"] = float((g - r).abs().max() / r.abs().max())
        # FLOPs of the whole meta-batch: every process runs an equal share
        return step, _count_flops(step) * D.world_size(), extra
    if workload == "ttt_joint":
        from metalearn.engine import resolve_precision
        from metalearn.nn.resnet_cifar import ResNetCIFAR
        from metalearn.ttt.train import joint_loss
        model = ResNetCIFAR(26, norm="gn").to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.rand(32, 3, 32, 32, device=dev), torch.randint(0, 10, (32,), device=dev)
        # as `metalearn ttt train` runs it: train.precision auto, NCHW
        precision = "fp32" if policy == "off" else resolve_precision("auto", dev)

        def step():
            opt.zero_grad(set_to_none=True)
            joint_loss(model, x, y, precision=precision)[0].backward()
            opt.step()
        extra["precision"] = precision
        return step, _count_flops(step), extra
    if workload == "lstm_mnist":
        from metalearn.optim import LSTMOptimizer, MLPFamily
        from metalearn.optim.meta import unroll
        from metalearn.optim.optimisees import ProblemBatch, sample_problems
        g = torch.Generator().manual_seed(0)
        fam = MLPFamily(torch.randint(0, 256, (6000, 28, 28), dtype=torch.uint8, generator=g).to(dev),
                        torch.randint(0, 10, (6000,), generator=g).to(dev))
        net = LSTMOptimizer().to(dev)
        batch = ProblemBatch(fam, sample_problems(fam, 4, g))

        def step():
            params = {k: v.clone().requires_grad_() for k, v in batch.params.items()}
            loss0 = batch.losses(params, 0)
            grads = dict(zip(params, torch.autograd.grad(loss0.sum(), list(params.values()))))
            meta_loss, *_ = unroll(net, batch, params, net.init(params), grads, 0, 20)
            meta_loss.backward()
        extra["precision"] = "fp32"
        return step, _count_flops(step), extra
    raise ValueError(f"workload: unknown {workload!r}; expected one of {WORKLOADS}")


# ------------------------------------------------------------------------------------------- the driver

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_procs(spec: dict, timeout: float, env: dict) -> dict:
    """``spec["threads"]`` worker processes in one gloo group (the variables torchrun sets); rank 0's record."""
    n = spec["threads"]
    env = dict(env, WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in range(n)]
    outs = []
    try:
        for pr in procs:
            outs.append(pr.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for pr in procs:
            pr.kill()
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    for pr, (_, err) in zip(procs, outs):
        if pr.returncode != 0:
            return {**spec, "error": (err.strip().splitlines() or ["failed"])[-1]}
    return json.loads(outs[0][0].strip().splitlines()[-1])


def _run_worker(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)       # each policy decides
    env.pop("GOMP_SPINCOUNT", None)
    if spec["workload"] in PROCS:
        return _run_procs(spec, timeout, env)
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if r.returncode != 0:
        return {**spec, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def summarize(records: list[dict]) -> list[dict]:
    """One row per (workload, threads): median ms and GFLOP/s per policy, the ratio, % of the bf16 ceiling."""
    by: dict = {}
    for r in records:
        if "error" in r:
            by.setdefault((r["workload"], r["threads"]), {}).setdefault(r["policy"], []).append(r)
            continue
        by.setdefault((r["workload"], r["threads"]), {}).setdefault(r["policy"], []).append(r)
    ceil = {}
    for (w, t), pols in by.items():
        if w == "ceiling_conv":
            ok = [x["gflops"] for x in pols.get("default", []) if "error" not in x]
            if ok:
                ceil[t] = statistics.median(ok)
    rows = []
    for (w, t), pols in sorted(by.items(), key=lambda kv: (WORKLOADS.index(kv[0][0]), kv[0][1])):
        row = {"workload": w, "threads": t}
        for p in POLICIES:
            ok = [x for x in pols.get(p, []) if "error" not in x]
            if ok:
                row[f"{p}_ms"] = statistics.median(x["ms"] for x in ok)
                gf = [x["gflops"] for x in ok if x.get("gflops")]
                row[f"{p}_gflops"] = statistics.median(gf) if gf else None
                for k in ("meta_grad_rel_err_vs_fp64", "dtype", "episodes_per_call", "images_in_split",
                          "images_drawn", "profile"):
                    if k in ok[0]:
                        row[f"{p}_{k}"] = ok[0][k]
            errs = [x["error"] for x in pols.get(p, []) if "error" in x]
            if errs:
                row[f"{p}_error"] = errs[0]
        if w in PROCS:   # against the loop with the levers off at one thread, as the goal is stated
            loop = [x for x in by.get(("maml2_loop", 1), {}).get("off", []) if "error" not in x]
            if loop:
                row["off_ms"] = statistics.median(x["ms"] for x in loop)
                row["off_reference"] = "maml2_loop, 1 thread, levers off"
        if row.get("off_ms") and row.get("default_ms"):
            row["speedup"] = row["off_ms"] / row["default_ms"]
        tail = [x for x in pols.get("eager_tail", []) if "error" not in x]
        if tail and row.get("default_ms"):
            row["eager_tail_ms"] = statistics.median(x["ms"] for x in tail)
            row["kernel_speedup"] = row["eager_tail_ms"] / row["default_ms"]
            if "profile" in tail[0]:
                row["eager_tail_profile"] = tail[0]["profile"]
        if t in ceil and row.get("default_gflops") and not w.startswith("ceiling"):
            row["pct_of_bf16_conv_ceiling"] = 100 * row["default_gflops"] / ceil[t]
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    lines = ["| workload | threads | levers off, ms | default, ms | speed-up | GFLOP/s (default) | % of bf16 conv ceiling |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        def f(x, d=1):
            return "–" if x is None else f"{x:.{d}f}"
        lines.append(f"| {r['workload']} | {r['threads']} | {f(r.get('off_ms'))} | {f(r.get('default_ms'))} | "
                     f"{f(r.get('speedup'), 2)}× | {f(r.get('default_gflops'), 0)} | "
                     f"{f(r.get('pct_of_bf16_conv_ceiling'), 0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--workloads", nargs="+", default=WORKLOADS, choices=WORKLOADS)
    p.add_argument("--repeats", type=int, default=2, help="interleaved off/default rounds per workload")
    p.add_argument("--reps", type=int, default=7, help="timed calls per worker (median)")
    p.add_argument("--quick", action="store_true", help="fewer calls and smaller data (a smoke run)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per worker")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the same table on a GPU")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile 3 calls of each default-policy workload at one thread: self CPU "
                        "time by operator class (benchmarks/op_classes.py) in the result")
    p.add_argument("--out", default="results/speed")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from metalearn.bench import git_state, machine_info
    records = []
    t0 = time.perf_counter()
    for w in args.workloads:
        for t in args.threads:
            if w in PROCS and (t < 2 or args.device != "cpu"):   # N >= 2 processes on the CPU
                continue
            for _ in range(args.repeats):
                for pol in (["default"] if w in PROCS else
                            POLICIES + (["eager_tail"] if w in KERNEL_WORKLOADS and args.device == "cpu" else [])):
                    rec = _run_worker({"workload": w, "policy": pol, "threads": t, "quick": args.quick,
                                       "reps": args.reps, "device": args.device, "profile": args.profile},
                                      args.timeout)
                    records.append(rec)
                    msg = rec.get("error") or f"{rec['ms']:.1f} ms" + (
                        f", {rec['gflops']:.0f} GFLOP/s" if rec.get("gflops") else "")
                    print(f"{w:24s} {t}T {pol:8s} {msg}", flush=True)
    git = git_state()
    result = {"kind": "metalearn-cpu-throughput", "schema": 1, "rows": summarize(records), "records": records,
              "command": shlex.join(["python", "benchmarks/cpu_throughput.py", *(argv or sys.argv[1:])]),
              "git": git, "machine": machine_info(args.device), "device": args.device, "wall_s": time.perf_counter() - t0,
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "cpu" if args.device == "cpu" else "gpu"
    path = out / f"{kind}_throughput-{(git.get('commit') or 'nocommit')[:8]}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    print(markdown(result))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
