"""bf16 keeps accuracy: the same training budget in fp32 and in bf16, for each Omniglot metric learner.

For every task file given, train twice from the same seed -- ``train.precision=fp32`` and ``bf16`` -- for
``--steps`` steps, then evaluate each run's best checkpoint on the task's 1000 test episodes (each run in its
own precision). Reports both accuracies with their 95% CIs, whether each lies inside the other's CI, and the
training time of each; one JSON in ``--out``.

    python benchmarks/precision_check.py tasks/protonet_omniglot_5w1s.yaml tasks/matchnet_omniglot_5w1s.yaml \\
        tasks/siamese_omniglot_5w1s.yaml --steps 1000 --threads 1 --out results/speed
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path


def overrides(precision: str, steps: int, threads: int) -> list[str]:
    """The ``--set`` overrides of one short run. It validates on the val classes, so it trains on train alone
    (the Omniglot task files train on train + val)."""
    return ["train.split=train", f"train.precision={precision}", f"train.steps={steps}", f"train.threads={threads}",
            f"train.lr_step={max(1, steps // 2)}", f"train.val_every={max(1, steps // 4)}",
            f"train.checkpoint_every={max(1, steps // 4)}"]


def compare(row: dict) -> dict:
    """Add to ``row`` (with ``fp32`` and ``bf16`` results holding ``accuracy``, ``ci95``, ``train_wall_s``) whether
    each accuracy lies inside the other's CI, whether the CIs overlap, and bf16's training speed-up."""
    a, b = row["fp32"], row["bf16"]
    gap = abs(b["accuracy"] - a["accuracy"])
    row.update(bf16_inside_fp32_ci=gap <= a["ci95"], fp32_inside_bf16_ci=gap <= b["ci95"],
               cis_overlap=gap <= a["ci95"] + b["ci95"], train_speedup=a["train_wall_s"] / b["train_wall_s"])
    return row


def write_result(res: dict, out: str | os.PathLike, stem: str) -> Path:
    """Write ``res`` atomically to ``out/<stem>-<commit>.json`` (the commit from ``res["git"]``) and print it."""
    from metalearn.data.cache import atomic_write
    path = Path(out) / f"{stem}-{(res['git'].get('commit') or 'nocommit')[:8]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode="w") as f:
        f.write(json.dumps(res, indent=1))
    print(f"-> {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tasks", nargs="+")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/precision_check", help="parent of the run directories")
    p.add_argument("--out", default="results/speed")
    args = p.parse_args(argv)
    from metalearn.bench import git_state, machine_info
    from metalearn.cli import evaluate_run, train_task
    from metalearn.config import load_config
    from metalearn.engine import tune_allocator
    tune_allocator()
    git = git_state()
    rows = []
    for task in args.tasks:
        row = {"task": task}
        for prec in ("fp32", "bf16"):
            sets = overrides(prec, args.steps, args.threads)
            cfg = load_config(task, sets)
            run = Path(args.runs) / f"{cfg.name}-{prec}-{cfg.hash()}"
            t0 = time.perf_counter()
            outcome = train_task(cfg, run, resume=(run / "last.pt").exists(), progress=False)
            ev = evaluate_run(run)
            row[prec] = {"accuracy": ev["accuracy"], "ci95": ev["ci95"], "episodes": ev["episodes"],
                         "train_wall_s": outcome.wall_s, "wall_s": time.perf_counter() - t0,
                         "best_step": outcome.state.best_step, "overrides": sets}
            print(f"{cfg.name} {prec}: {ev['accuracy']:.2f} ± {ev['ci95']:.2f} (train {outcome.wall_s:.0f} s)",
                  flush=True)
        rows.append(compare(row))
    res = {"kind": "metalearn-precision-check", "schema": 1, "steps": args.steps, "rows": rows,
           "command": shlex.join(["python", "benchmarks/precision_check.py", *(argv or sys.argv[1:])]),
           "git": git, "machine": machine_info("cpu"), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_result(res, args.out, "precision_check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
