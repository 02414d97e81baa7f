"""Episode sampler throughput (episodes/s) next to the time of one ProtoNet training step.

Shows that sampling is not the bottleneck: for Omniglot 20-way 5-shot 15-query and miniImageNet 5-way 5-shot
15-query, time ``EpisodeSampler.sample()`` (gather + rotation + uint8->float) and one forward/backward/Adam
step of ProtoNet(Conv4) on the same episode, on the CPU (and CUDA if present).

    METALEARN_DATA=../shared/data python benchmarks/sampler_throughput.py [--device cpu] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from metalearn.data.miniimagenet import load_miniimagenet
from metalearn.data.omniglot import load_omniglot
from metalearn.episodes import EpisodeSampler
from metalearn.learners.protonet import ProtoNet
from metalearn.nn import Conv4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device, repeats: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure(name, data, ways, shots, queries, device, repeats, batch_sizes=(1, 32)) -> list[dict]:
    data = data.to(device)
    rows = []
    learner = ProtoNet(Conv4(in_channels=data.image_shape[0])).to(device)
    opt = torch.optim.Adam(learner.parameters())
    one = EpisodeSampler(data, ways, shots, queries, batch_size=1, seed=0)
    ep = one.sample()

    def step():
        loss, _ = learner.loss(ep)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_step = time_it(step, device, max(3, repeats // 10))
    for b in batch_sizes:
        s = EpisodeSampler(data, ways, shots, queries, batch_size=b, seed=0)
        t = time_it(s.sample, device, repeats)
        rows.append({"dataset": name, "setting": f"{ways}w{shots}s{queries}q", "device": str(device),
                     "batch": b, "sample_ms": t * 1e3, "episodes_per_s": b / t, "train_step_ms": t_step * 1e3})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    rows = measure("omniglot", load_omniglot(split="train"), 20, 5, 15, dev, args.repeats)
    rows += measure("miniimagenet", load_miniimagenet(split="train"), 5, 5, 15, dev, args.repeats)
    machine = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine())
    print(f"machine: {machine}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'dataset':<14}{'setting':<12}{'B':>4}{'sample ms':>11}{'episodes/s':>12}{'train step ms (B=1)':>22}")
    for r in rows:
        print(f"{r['dataset']:<14}{r['setting']:<12}{r['batch']:>4}{r['sample_ms']:>11.2f}"
              f"{r['episodes_per_s']:>12.0f}{r['train_step_ms']:>22.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
