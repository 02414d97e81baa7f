"""Self-supervised tasks for Test-Time Training side by side on CIFAR-10-C level 5, at one training budget.

For each task (rotation, contrastive, masked reconstruction) the same network is trained jointly with the same
recipe and number of steps (``metalearn ttt train`` with ``--ssl-task``), then evaluated on the clean test images
and a few corruptions with the same test-time settings: joint training alone (``source``), standard TTT
(weights reset per image) and TTT-Online (weights carried along the stream).  Errors are in %, with the 95%
interval of the paired difference to joint training on the same images (1.96 sd / sqrt(n) of the per-image
difference).  Written to one JSON file with the command, the commit and the machine.

    python benchmarks/ttt_tasks.py --steps 400 --batch-size 32 --depth 8 --images 200 \\
        --corruptions gaussian_noise,defocus_blur,fog --ttt-steps 3 --copies 8 --ttt-lr 0.01 \\
        --runs runs/ttt_tasks --out results/ttt_tasks/cifar10c_l5_cpu.json
    python benchmarks/ttt_tasks.py ... --ttt-lr 0.1 --eval-only --out FILE   # the same runs, other TTT settings
    python benchmarks/ttt_tasks.py --report results/ttt_tasks/cifar10c_l5_cpu.json   # the table again
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("source", "ttt", "ttt_online")
NAMES = {"source": "joint training", "ttt": "TTT", "ttt_online": "TTT-Online"}


def paired(err_a: list[bool], err_b: list[bool]) -> tuple[float, float]:
    """Mean and 95% half-width (in % points) of the per-image difference err_a - err_b."""
    d = [float(a) - float(b) for a, b in zip(err_a, err_b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return 100 * mean, 100 * 1.96 * math.sqrt(var / n)


def table(res: dict) -> str:
    """Markdown tables: one row per (task, test set), then the mean over the corruptions per task."""
    head = ("| task | test set | joint training | TTT | TTT-Online | TTT - joint (95% CI) | "
            "TTT-Online - joint (95% CI) |\n|---|---|---|---|---|---|---|")
    rows = [head]
    for task, t in res["tasks"].items():
        if "eval" not in t:
            continue
        for name, row in t["eval"]["sets"].items():
            cells = [f"{row[m]['error']:.1f}" for m in METHODS]
            diffs = [f"{row[m]['vs_source'][0]:+.1f} ± {row[m]['vs_source'][1]:.1f}" for m in ("ttt", "ttt_online")]
            rows.append(f"| {task} | {name} | " + " | ".join(cells + diffs) + " |")
        mc = t["eval"].get("mean_corrupted")
        if mc:
            cells = [f"**{mc[m]['error']:.1f}**" for m in METHODS]
            diffs = [f"{mc[m]['vs_source'][0]:+.1f} ± {mc[m]['vs_source'][1]:.1f}" for m in ("ttt", "ttt_online")]
            rows.append(f"| {task} | mean of the corruptions | " + " | ".join(cells + diffs) + " |")
    budget = ["| task | joint-training steps x batch | final joint loss (main + task) | train acc (last batch) "
              "| CPU s training | CPU s evaluation |", "|---|---|---|---|---|---|"]
    for task, t in res["tasks"].items():
        tr = t.get("train", {})
        m = tr.get("last", {})
        ev = t.get("eval", {})
        budget.append(f"| {task} | {tr.get('steps')} x {tr.get('batch_size')} | {m.get('loss', float('nan')):.3f} "
                      f"({m.get('main', float('nan')):.3f} + {m.get('ssl', float('nan')):.3f}) | "
                      f"{100 * m.get('acc', float('nan')):.1f}% | {tr.get('cpu_s', float('nan')):.0f} | "
                      f"{ev.get('cpu_s', float('nan')):.0f} |")
    return "\n".join(rows) + "\n\n" + "\n".join(budget)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["rotation", "contrastive", "reconstruction"])
    p.add_argument("--config", default="tasks/ttt_cifar10_gn.yaml", help="the task file the runs start from")
    p.add_argument("--steps", type=int, default=400, help="joint-training steps (the same for every task)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.1, help="joint-training lr (constant: the milestones lie later)")
    p.add_argument("--images", type=int, default=200, help="first N test images of each set")
    p.add_argument("--corruptions", default="gaussian_noise,defocus_blur,fog")
    p.add_argument("--severity", type=int, default=5)
    p.add_argument("--ttt-steps", type=int, default=3)
    p.add_argument("--online-steps", type=int, default=1)
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--ttt-lr", type=float, default=0.01)
    p.add_argument("--chunk-size", type=int, default=50)
    p.add_argument("--runs", default="runs/ttt_tasks", help="run directories (one per task; reused when complete)")
    p.add_argument("--out", default="results/ttt_tasks/cifar10c_l5_cpu.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the finished runs in --runs (other test-time settings), without training")
    p.add_argument("--report", default=None, metavar="FILE", help="print the table of an existing results file")
    args = p.parse_args(argv)
    if args.report:
        print(table(json.loads(Path(args.report).read_text())))
        return 0

    import torch

    from metalearn.bench import git_state, machine_info
    from metalearn.ttt.config import load_ttt_config
    from metalearn.ttt.run import eval_run, train_run
    from metalearn.ttt.ssl import SSL_TASKS

    bad = [t for t in args.tasks if t not in SSL_TASKS]
    if bad:
        p.error(f"--tasks: unknown {bad}; expected names from {sorted(SSL_TASKS)}")
    for key in ("steps", "batch_size", "images", "ttt_steps", "online_steps", "copies", "threads"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')}: expected >= 1, got {getattr(args, key)}")
    torch.set_num_threads(args.threads)
    adapt = [f"ttt.steps={args.ttt_steps}", f"ttt.online_steps={args.online_steps}", f"ttt.copies={args.copies}",
             f"ttt.lr={args.ttt_lr}", f"ttt.chunk_size={args.chunk_size}"]
    common = [f"model.depth={args.depth}", f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
              f"train.lr={args.lr}", "train.log_every=25", f"train.checkpoint_every={args.steps}",
              "data.device=cpu", *adapt]
    # the test-time settings are passed to the evaluation too: a run's config.yaml holds those it was trained with
    evals = [f"eval.images={args.images}", f"eval.corruptions=clean,{args.corruptions}",
             f"eval.severity={args.severity}", "eval.methods=" + ",".join(METHODS), "eval.ttt_images=0", *adapt]
    out = Path(args.out)
    res = {"command": "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *sys.argv[1:]]),
           "git": git_state(), "machine": machine_info("cpu"),
           "budget": {"joint_training": f"{args.steps} steps x batch {args.batch_size} (the same for every task), "
                                        f"SGD lr {args.lr} momentum 0.9 wd 5e-4, ResNet-{args.depth} GN",
                      "test_time": f"standard TTT {args.ttt_steps} steps, TTT-Online {args.online_steps} step per "
                                   f"image, {args.copies} inputs per step, SGD lr {args.ttt_lr}, adapt trunk",
                      "test_sets": f"first {args.images} CIFAR-10 test images: clean + {args.corruptions} at "
                                   f"level {args.severity} (metalearn.data.corruptions)"},
           "settings": vars(args), "tasks": {}}
    if out.exists():   # keep the tasks already done by an interrupted run of the same command
        old = json.loads(out.read_text())
        if old.get("settings") == res["settings"]:
            res["tasks"] = old.get("tasks", {})

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(out)

    for task in args.tasks:
        entry = res["tasks"].setdefault(task, {})
        if "eval" in entry:
            print(f"{task}: done already", flush=True)
            continue
        cfg = load_ttt_config(args.config, [*common, f"ssl.task={task}"])
        run_dir = Path(args.runs) / task
        if args.eval_only and "train" not in entry:
            from metalearn.ttt.train import load_model
            if not (run_dir / "last.pt").is_file():
                p.error(f"--eval-only: {run_dir / 'last.pt'} does not exist; train the runs first")
            _, ck = load_model(run_dir / "last.pt")
            if ck["step"] != args.steps:
                p.error(f"--eval-only: {run_dir} was trained for {ck['step']} steps, not --steps {args.steps}")
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            entry["train"] = {"steps": ck["step"], "batch_size": args.batch_size, "run_dir": str(run_dir),
                              "reused": True, "cpu_s": 0.0, "last": json.loads(lines[-1]) if lines else {},
                              "ssl": cfg.ssl.make().settings()}
        if "train" not in entry:
            t0 = time.process_time()
            state = train_run(cfg, run_dir, device="cpu",
                              progress=lambda m, task=task: print(
                                  f"{task} step {m['step']} loss {m['loss']:.3f} (main {m['main']:.3f} ssl "
                                  f"{m['ssl']:.3f}) acc {100 * m['acc']:.1f}%", flush=True))
            entry["train"] = {"steps": state.step, "batch_size": args.batch_size,
                              "images_seen": state.step * args.batch_size, "cpu_s": time.process_time() - t0,
                              "wall_s": state.wall_s, "last": state.last, "run_dir": str(run_dir),
                              "ssl": cfg.ssl.make().settings()}
            save()
        t0 = time.process_time()
        ev = eval_run(run_dir, evals, device="cpu",
                      progress=lambda s, task=task: print(f"{task}: {s}", flush=True))
        labels = ev["labels"]
        sets = {}
        for name, row in ev["sets"].items():
            wrong = {m: [p != y for p, y in zip(row[m]["pred"], labels)] for m in METHODS}
            sets[name] = {m: {"error": row[m]["error"], "n": row[m]["n"], "wall_s": row[m]["wall_s"],
                              "vs_source": paired(wrong[m], wrong["source"]), "pred": row[m]["pred"]}
                          for m in METHODS}
        corrupted = [n for n in sets if n != "clean"]
        mean = {}
        if corrupted:
            for m in METHODS:
                wrong_m = [p != y for n in corrupted for p, y in zip(sets[n][m]["pred"], labels)]
                wrong_s = [p != y for n in corrupted for p, y in zip(sets[n]["source"]["pred"], labels)]
                mean[m] = {"error": 100 * sum(wrong_m) / len(wrong_m), "vs_source": paired(wrong_m, wrong_s)}
        entry["eval"] = {"cpu_s": time.process_time() - t0, "checkpoint_step": ev["step"], "sets": sets,
                         "mean_corrupted": mean, "ttt": ev["config"]["ttt"]}   # the settings evaluate_run used
        res["labels"] = labels
        save()
    res["cpu_s_total"] = sum(t.get("train", {}).get("cpu_s", 0) + t.get("eval", {}).get("cpu_s", 0)
                             for t in res["tasks"].values())
    save()
    print(table(res))
    print(f"\nwritten {out}; CPU {res['cpu_s_total']:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
