"""bf16 keeps accuracy for TTT's joint training: the same budget in fp32 and in bf16, from the same seed.

Trains the task file's ResNet (by default ResNet-26 with GroupNorm and the rotation head, ``tasks/ttt_cifar10_gn.yaml``)
on CIFAR-10 twice -- ``train.precision=fp32`` and ``bf16`` -- for ``--steps`` optimiser steps with the same
initialisation, batches and augmentations, then scores both models (in fp32) on the first ``--test-images`` CIFAR-10
test images: the main head's accuracy with its 95% CI (normal approximation of the binomial), the rotation head's
accuracy over the four rotations, and how often the two models predict the same class. The training loss of
both runs is kept every ``log_every`` steps. One JSON in ``--out`` (the report's precision table reads it).

    METALEARN_DATA=../shared/data python benchmarks/ttt_precision.py --steps 300 --threads 1 --out results/speed
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def score(model, x, y, batch: int = 500) -> dict:
    """Main-head predictions and accuracy, rotation-head accuracy (all four rotations), in fp32."""
    import torch
    preds, rot_ok = [], 0
    model.eval()
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            xb = x[i:i + batch].float() / 255.0
            preds.append(model(xb).argmax(-1))
            if model.has_rotation_head:
                for k in range(4):
                    r = model(torch.rot90(xb, k, (2, 3)), head="rotation").argmax(-1)
                    rot_ok += int((r == k).sum())
    pred = torch.cat(preds)
    n = y.shape[0]
    acc = float((pred == y).float().mean())
    return {"pred": pred, "accuracy": 100 * acc, "ci95": 100 * 1.96 * math.sqrt(acc * (1 - acc) / n),
            "rotation_accuracy": 100 * rot_ok / (4 * n) if model.has_rotation_head else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="tasks/ttt_cifar10_gn.yaml")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/speed")
    args = p.parse_args(argv)
    if args.steps < 1 or args.test_images < 1 or args.threads < 1:
        p.error("--steps, --test-images and --threads: expected >= 1")

    import torch

    from precision_check import compare, write_result

    from metalearn.bench import git_state, machine_info
    from metalearn.data.cifar10 import load_cifar10
    from metalearn.engine import resolve_precision, tune_allocator
    from metalearn.ttt.config import load_ttt_config
    from metalearn.ttt.run import build_model
    from metalearn.ttt.train import train_joint
    tune_allocator()
    torch.set_num_threads(args.threads)
    git = git_state()
    if resolve_precision("auto", "cpu") != "bf16":
        print("note: this CPU has no native bf16; the bf16 run is emulated and slow", flush=True)
    cfg = load_ttt_config(args.task)
    images, labels = load_cifar10(cfg.data.root, "train", cfg.data.cache_dir)
    xt, yt = load_cifar10(cfg.data.root, "test", cfg.data.cache_dir)
    xt, yt = xt[:args.test_images], yt[:args.test_images]
    row: dict = {"task": args.task}
    preds = {}
    for prec in ("fp32", "bf16"):
        c = load_ttt_config(args.task, [f"train.precision={prec}", f"train.max_steps={args.steps}",
                                        "train.log_every=10"])
        torch.manual_seed(c.train.seed)
        model = build_model(c)
        curve: list = []
        t0 = time.perf_counter()
        train_joint(model, images, labels, c.train, None, progress=curve.append,
                    task=c.ssl.make() if model.has_ssl_head else None)
        wall = time.perf_counter() - t0
        s = score(model, xt, yt)
        preds[prec] = s.pop("pred")
        row[prec] = {**s, "episodes": int(yt.shape[0]), "test_images": int(yt.shape[0]), "train_wall_s": wall,
                     "loss_curve": [[m["step"], m["loss"]] for m in curve]}
        print(f"{prec}: {s['accuracy']:.2f} ± {s['ci95']:.2f} (rotation {s['rotation_accuracy']}), "
              f"train {wall:.0f} s", flush=True)
    compare(row)
    row["prediction_agreement"] = 100 * float((preds["fp32"] == preds["bf16"]).float().mean())
    res = {"kind": "metalearn-precision-check", "schema": 1, "steps": args.steps, "rows": [row],
           "note": f"TTT joint training (batch {cfg.train.batch_size}, each image at 4 rotations); n = CIFAR-10 "
                   "test images, not episodes; both models scored in fp32",
           "command": shlex.join(["python", "benchmarks/ttt_precision.py", *(argv if argv is not None
                                                                             else sys.argv[1:])]),
           "git": git, "machine": machine_info("cpu"),
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_result(res, args.out, "ttt_precision")
    return 0


if __name__ == "__main__":
    sys.exit(main())
