"""How far the vmapped second-order meta-gradient is from the loop's, per normalisation layer and dtype.

For each layer, a small conv net (conv -> norm -> ReLU -> linear) is meta-trained for one meta-batch both ways
(``meta_batch`` with ``vmap_tasks=True`` and ``False``, 2 inner SGD steps, second order) and the largest
difference of the meta-gradients is printed relative to the gradient's largest entry.  Then the same for
MAML's Omniglot network (``MamlConv4``, primitive BatchNorm) in float64 and float32.  ``MAML(vmap=True)``
refuses the layers that come out wrong (``check_vmap_safe``); this script calls ``meta_batch`` directly to
show why.

    python benchmarks/vmap_norm_check.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from metalearn.inner import sgd
from metalearn.learners.maml import meta_batch
from metalearn.nn import BatchNorm2d, MamlConv4
from metalearn.types import Episode


def episode(tasks: int, ways: int, shots: int, queries: int, size: int, dtype: torch.dtype,
            draw=torch.randn) -> Episode:
    g = torch.Generator().manual_seed(0)
    sy = torch.arange(ways).repeat_interleave(shots)[None].expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries)[None].expand(tasks, -1).contiguous()
    return Episode(draw(tasks, ways * shots, 1, size, size, generator=g, dtype=dtype), sy,
                   draw(tasks, ways * queries, 1, size, size, generator=g, dtype=dtype), qy, ways)


def vmap_vs_loop(model: nn.Module, ep: Episode, steps: int, lr: float) -> float:
    params = dict(model.named_parameters())
    grads = []
    for vm in (True, False):
        q, _, _ = meta_batch(model, params, {}, {}, list(params), ep, steps=steps, rule=sgd(lr), vmap_tasks=vm)
        grads.append(torch.autograd.grad(q.mean(), list(params.values())))
    scale = max(float(b.abs().max()) for b in grads[1])
    return max(float((a - b).abs().max()) for a, b in zip(*grads)) / scale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    layers = {
        "metalearn.nn.BatchNorm2d": lambda: BatchNorm2d(4),
        "nn.BatchNorm2d (batch stats)": lambda: nn.BatchNorm2d(4, track_running_stats=False),
        "nn.InstanceNorm2d": lambda: nn.InstanceNorm2d(4, affine=True),
        "nn.LayerNorm": lambda: nn.LayerNorm([4, 6, 6]),
        "nn.GroupNorm": lambda: nn.GroupNorm(2, 4),
    }
    rows = []
    ep = episode(3, 3, 2, 2, 6, torch.float64)
    for name, make in layers.items():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), make(), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 6 * 6, 3)).double()
        rows.append({"model": f"conv + {name}", "dtype": "float64", "inner_steps": 2,
                     "rel_diff": vmap_vs_loop(net, ep, 2, 0.5)})
    # MAML's Omniglot network; normal inputs, and uniform [0, 1) inputs as in benchmarks/maml_speed.py
    for (hidden, tasks, ways, shots, steps, draw) in ((32, 4, 5, 1, 1, torch.randn), (32, 4, 5, 5, 5, torch.randn),
                                                      (64, 8, 5, 1, 1, torch.rand)):
        for dtype in (torch.float64, torch.float32):
            torch.manual_seed(0)
            net = MamlConv4(1, ways, hidden=hidden, pool="stride").to(dtype)
            ep = episode(tasks, ways, shots, 15, 28, dtype, draw)
            rows.append({"model": f"MamlConv4 ({hidden} filters) {ways}w{shots}s, {tasks} tasks, "
                                  f"{'uniform' if draw is torch.rand else 'normal'} inputs",
                         "dtype": str(dtype).replace("torch.", ""), "inner_steps": steps,
                         "rel_diff": vmap_vs_loop(net, ep, steps, 0.4)})
    for r in rows:
        print(f"{r['model']:56s} {r['dtype']:8s} {r['inner_steps']} steps  {r['rel_diff']:.1e}", flush=True)
    if args.json:
        from metalearn.data.cache import atomic_write
        with atomic_write(args.json, mode="w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
