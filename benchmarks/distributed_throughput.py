"""Meta-training throughput with 1 and N processes on torch.distributed: episodes/s, meta-iterations/s and the
scaling efficiency, for ProtoNet (DistributedDataParallel) and second-order MAML (all-reduce of the
meta-gradient) on the bundled Omniglot (28x28, no download).

Every measurement is its own ``torchrun --nproc_per_node N`` job running this file with ``--worker``: the same
meta-batch of ``--meta-batch`` tasks split across the N processes (metalearn.distributed.MetaBatchStep, as
``metalearn train`` does), one thread per process, ``--warmup`` untimed steps, then ``--steps`` timed steps
(sample, forward, backward, gradient reduction, Adam) between two barriers.  Scaling efficiency is
``(meta-iterations/s with N) / (N x meta-iterations/s with 1)``; 1 process runs under torchrun too (without a
process group, the single-process code path).  The load average of the machine is recorded before and after
each job.

    nice -n 10 python benchmarks/distributed_throughput.py --procs 1 2 \
        --out results/speed/distributed_throughput_cpu.json
    python benchmarks/distributed_throughput.py --device cuda --procs 1 8 --threads 4 \
        --out results/speed/distributed_throughput_gpu.json       # a GPU node: one process per GPU
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    # name: (learner, ways, shots, queries)
    "protonet": ("protonet", 5, 5, 15),
    "maml": ("maml", 5, 1, 15),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args: argparse.Namespace) -> None:
    import torch

    from metalearn import distributed as D
    from metalearn.data.bundled import load_bundled
    from metalearn.episodes import EpisodeSampler
    from metalearn.learners.maml import MAML
    from metalearn.learners.protonet import ProtoNet
    from metalearn.nn import Conv4, MamlConv4

    D.init_from_env()
    torch.set_num_threads(args.threads)
    device = D.device_for(torch.device(args.device))
    kind, ways, shots, queries = WORKLOADS[args.workload]
    data = load_bundled("background").to(device)
    sampler = EpisodeSampler(data, ways, shots, queries, batch_size=args.meta_batch, seed=0)
    torch.manual_seed(0)
    if kind == "protonet":
        learner = ProtoNet(Conv4(1), check_support=False)
    else:
        learner = MAML(MamlConv4(1, ways, pool="stride", image_size=28), ways, inner_lr=0.4, inner_steps=1)
    learner = learner.to(device).train()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    step = D.MetaBatchStep(learner, args.meta_batch) if D.active() else None

    def one() -> None:
        ep = sampler.sample(tasks=(step.lo, step.hi)) if step is not None else sampler.sample()
        opt.zero_grad(set_to_none=True)
        loss, _ = step.backward(ep) if step is not None else learner.backward(ep)
        opt.step()

    def barrier() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        D.any_true(False)

    for _ in range(args.warmup):
        one()
    barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        one()
    barrier()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cpus = D.all_gather(torch.tensor([cpu], dtype=torch.float64)).reshape(-1).tolist() if D.active() else [cpu]
    if D.is_main():
        Path(args.worker_out).write_text(json.dumps({"wall_s": wall, "cpu_s": cpus}))
    D.shutdown()


def measure(args: argparse.Namespace, workload: str, procs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "w.json"
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(Path(__file__).resolve()),
               "--worker", "--worker-out", str(out), "--workload", workload, "--device", args.device,
               "--threads", str(args.threads), "--meta-batch", str(args.meta_batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
        load0 = os.getloadavg()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        load1 = os.getloadavg()
        if r.returncode != 0:
            raise SystemExit(f"{workload} with {procs} processes failed:\n{r.stderr[-3000:]}")
        w = json.loads(out.read_text())
    wall = w["wall_s"]
    return {"workload": workload, "processes": procs, "meta_batch": args.meta_batch, "steps": args.steps,
            "wall_s": round(wall, 3), "meta_iterations_per_s": round(args.steps / wall, 3),
            "episodes_per_s": round(args.steps * args.meta_batch / wall, 2),
            "cpu_s_per_process": [round(c, 2) for c in w["cpu_s"]],
            "loadavg_1min_before_after": [round(load0[0], 2), round(load1[0], 2)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=sorted(WORKLOADS))
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process: cuda:LOCAL_RANK)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--meta-batch", type=int, default=8, help="tasks per meta-batch, split across the processes")
    p.add_argument("--steps", type=int, default=12, help="timed meta-iterations (default 12)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, help="result JSON (e.g. results/speed/distributed_throughput_cpu.json)")
    p.add_argument("--note", default="", help="a remark stored in the JSON (e.g. the machine's load)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workload", default="protonet", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if any(n < 1 for n in args.procs) or args.meta_batch < max(args.procs):
        raise SystemExit(f"--procs: expected counts >= 1 and <= --meta-batch={args.meta_batch}, got {args.procs}")
    sys.path.insert(0, str(ROOT))
    from metalearn.bench import git_state, machine_info
    rows = []
    for workload in args.workloads:
        for n in args.procs:
            row = measure(args, workload, n)
            print(f"{workload:9s} {n} process{'es' * (n > 1)}: {row['meta_iterations_per_s']:.2f} meta-iterations/s, "
                  f"{row['episodes_per_s']:.1f} episodes/s (load {row['loadavg_1min_before_after']})", flush=True)
            rows.append(row)
    base = {r["workload"]: r["meta_iterations_per_s"] for r in rows if r["processes"] == 1}
    for r in rows:
        if r["workload"] in base:
            r["speedup"] = round(r["meta_iterations_per_s"] / base[r["workload"]], 3)
            r["scaling_efficiency"] = round(r["speedup"] / r["processes"], 3)
    machine = machine_info(args.device)
    machine.update(torch_threads=args.threads, processes=None)
    result = {"kind": "metalearn-distributed-throughput", "command": shlex.join(["python", *sys.argv]),
              "git": git_state(), "machine": machine, "device": args.device, "note": args.note,
              "settings": {"meta_batch": args.meta_batch, "steps": args.steps, "warmup": args.warmup,
                           "threads_per_process": args.threads,
                           "workloads": {k: dict(zip(("learner", "ways", "shots", "queries"), WORKLOADS[k]))
                                         for k in args.workloads}},
              "rows": rows}
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
