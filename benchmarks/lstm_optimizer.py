"""Benchmark: the coordinatewise LSTM optimizer (Andrychowicz et al. 2016) against tuned SGD, NAG, RMSprop, Adam.

For one task family this script (1) meta-trains the LSTM optimizer (truncated 20-step unrolls, Adam, early
stopping on validation optimisees, checkpoints in --out), (2) tunes each baseline's learning rate by a logged grid
search on tuning optimisees of the same family, (3) runs every optimizer on the same >= 100 held-out test
optimisees and reports the loss after the horizon as mean ± 1.96·std/√n, (4) writes a result JSON and loss-vs-step
plots (docs/img/lstm_<task>*.png, .json) and the meta-training throughput (optimisee steps/s).

    python benchmarks/lstm_optimizer.py quadratic --out runs/lstm                     # random 10-d ‖Wθ − y‖²
    METALEARN_DATA=../shared/data python benchmarks/lstm_optimizer.py mnist --out runs/lstm
    ... --smoke                                                                        # seconds: a check that it runs

The defaults are the paper's optimizer (2 layers of 20, p = 10, output scale 0.1) and our MLP initialisation
(uniform ±1/√fan_in). ``--mlp-init normal`` gives the authors' released code's MNIST problem (weights and biases
N(0, 0.01²)); its results go to their own files (``lstm_mnist_normal_init*``) with the init in the setting names.
``--output-scale 0.01 --preprocess-p 5 --forget-bias 1`` is that code's optimizer.

``mnist`` also runs the generalisation settings of the paper with the optimizer trained on the base task
(1 hidden layer of 20 sigmoid units, 100 steps): 200 steps, 40 hidden units, 2 hidden layers, ReLU. Baselines are
tuned on each setting itself. MNIST splits: meta-training optimisees draw minibatches from training images
0-49999, validation and baseline tuning from 50000-54999, test optimisees from 55000-59999 (the "eval" loss is on
those 5000 images).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalearn.optim import (BASELINES, LearnedOptimizer, LSTMOptimizer, MetaTrainConfig, MLPFamily,  # noqa: E402
                             ProblemBatch, QuadraticFamily, meta_train, run_optimizer, sample_problems, tune_lr)
from metalearn.optim.meta import LR_GRID, VAL_METRICS, write_json  # noqa: E402
from metalearn.train.evaluator import mean_ci95  # noqa: E402


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def git_commit() -> dict:
    def run(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--", "metalearn", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True).stdout
    return {"commit": run("rev-parse", "--short", "HEAD") or None,
            "dirty_paths": [l[3:] for l in status.splitlines() if l.strip()]}


# the paper's baselines (sec. 3); BASELINES also holds the searched rules of benchmarks/searched_optim.py
PAPER_BASELINES = ("SGD", "NAG", "RMSprop", "Adam")

# the paper's generalisation settings (sec. 3.2), for the optimizer trained on 1x20 sigmoid, 100 steps:
# (key, name, MLPFamily arguments, steps as % of the training horizon)
GENERALISATION = [("200steps", "200 steps", {}, 200), ("40hidden", "40 hidden units", {"hidden": (40,)}, 100),
                  ("2layers", "2 hidden layers", {"hidden": (20, 20)}, 100), ("relu", "ReLU", {"activation": "relu"}, 100)]


def stats(values: torch.Tensor) -> dict:
    v = values.double()
    finite = torch.isfinite(v)
    if not bool(finite.all()):
        return {"mean": math.inf, "ci95": math.nan, "n": v.numel(), "diverged": int((~finite).sum())}
    m, ci = mean_ci95(v.numpy())
    return {"mean": m, "ci95": ci, "n": v.numel(), "diverged": 0}


def compare(setting: str, net: LSTMOptimizer, tune_family, test_family, steps: int, args, report_at=(100,)) -> dict:
    """Tune the baselines on ``tune_family``, run everything on the test optimisees of ``test_family``."""
    tune = ProblemBatch(tune_family, sample_problems(tune_family, args.tune_optimisees,
                                                     torch.Generator().manual_seed(args.seed + 2)))
    test = ProblemBatch(test_family, sample_problems(test_family, args.test_optimisees,
                                                     torch.Generator().manual_seed(args.seed + 3)))
    out = {"setting": setting, "steps": steps, "test_optimisees": len(test), "tune_optimisees": len(tune),
           "optimizers": {}}
    runs = {}
    for name in args.baselines:
        tic = time.perf_counter()
        print(f"[{setting}] grid search {name} on {len(tune)} tuning optimisees, {steps} steps")
        lr, grid = tune_lr(name, tune, steps, grid=args.grid)
        edge = lr in (min(args.grid), max(args.grid))
        runs[name] = (lambda ps, n=name, r=lr: BASELINES[n](ps, r), {"lr": lr, "grid": {str(k): v for k, v in
                                                                                         grid.items()},
                                                                      "lr_at_grid_edge": edge,
                                                                      "tune_seconds": time.perf_counter() - tic})
    runs["LSTM"] = (lambda ps: LearnedOptimizer(ps, net, check_finite=False), {})
    finals = {}
    for name, (make, info) in runs.items():
        tic = time.perf_counter()
        losses, ev = [], []
        for i in range(0, len(test.problems), args.chunk):          # chunks of optimisees bound the memory
            chunk = ProblemBatch(test_family, test.problems[i:i + args.chunk])
            l, params = run_optimizer(make, chunk, steps)                   # (steps + 1, m)
            losses.append(l)
            ev.append(chunk.eval_losses(params) if torch.isfinite(l[-1]).all()
                      else torch.full((len(chunk),), math.inf))
        losses, ev = torch.cat(losses, 1), torch.cat(ev).double().cpu()
        finals[name] = losses[-1]
        rec = {**info, "final": stats(losses[-1]), "eval_final": stats(ev),
               "curve_mean": [float(x) for x in losses.mean(1)],
               "final_per_optimisee": [float(x) for x in losses[-1]],
               "test_seconds": time.perf_counter() - tic}
        for t in report_at:
            if t < steps:
                rec[f"at_{t}"] = stats(losses[t])
        out["optimizers"][name] = rec
        lr = f" (lr {info['lr']:g})" if "lr" in info else ""
        print(f"[{setting}] {name:8s}{lr:14s} loss after {steps} steps {rec['final']['mean']:.4f} ± "
              f"{rec['final']['ci95']:.4f}   eval {rec['eval_final']['mean']:.4f} ± {rec['eval_final']['ci95']:.4f}")
    best_base = min(args.baselines, key=lambda n: out["optimizers"][n]["final"]["mean"])
    out["best_baseline"] = best_base
    diff = finals["LSTM"] - finals[best_base]          # paired: the same test optimisees for every optimizer
    out["paired_lstm_minus_best_baseline"] = {**stats(diff), "lstm_wins": int((diff < 0).sum())}
    d = out["paired_lstm_minus_best_baseline"]
    print(f"[{setting}] paired LSTM - {best_base}: {d['mean']:.4f} ± {d['ci95']:.4f}, LSTM lower on "
          f"{d['lstm_wins']}/{d['n']} optimisees")
    out["lstm_beats_best_baseline"] = (out["optimizers"]["LSTM"]["final"]["mean"]
                                       < out["optimizers"][best_base]["final"]["mean"])
    return out


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(max(6.4, 4.6 * n), 3.8), squeeze=False)
    colors = {"SGD": "tab:gray", "NAG": "tab:green", "RMSprop": "tab:orange", "Adam": "tab:blue", "LSTM": "tab:red"}
    for ax, res in zip(axes[0], results):
        for name, rec in res["optimizers"].items():
            label = f"{name} (lr {rec['lr']:g})" if "lr" in rec else name
            curve = [c if math.isfinite(c) else float("nan") for c in rec["curve_mean"]]
            ax.plot(range(len(curve)), curve, label=label, color=colors.get(name), lw=2 if name == "LSTM" else 1.2)
        ax.set_yscale("log")
        ax.set_xlabel("optimisee step")
        ax.set_ylabel("loss (mean over test optimisees)")
        ax.set_title(f"{res['setting']} (n={res['test_optimisees']})", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def train_net(family, val_family, cfg: MetaTrainConfig, out: Path, args) -> tuple[LSTMOptimizer, dict]:
    torch.manual_seed(args.seed)
    net = LSTMOptimizer(preprocess_p=args.preprocess_p, output_scale=args.output_scale, forget_bias=args.forget_bias)
    res = meta_train(net, family, cfg, out_dir=out, val_family=val_family, resume=args.resume)
    info = {"config": cfg.__dict__, "optimizer": {**net.config.__dict__, "forget_bias_init": args.forget_bias},
            "best_val": res.best_val, "best_val_metric": cfg.val_metric, "best_iteration": res.best_iteration,
            "iterations_done": res.iterations_done, "optimisee_steps": res.optimisee_steps,
            "train_seconds": res.train_seconds, "optimisee_steps_per_second": res.steps_per_second,
            "skipped_unrolls": res.skipped_unrolls, "history": res.history, "checkpoint": str(out / "best.pt")}
    print(f"meta-training: {res.iterations_done} iterations, {res.optimisee_steps} optimisee steps in "
          f"{res.train_seconds:.0f} s = {res.steps_per_second:.1f} optimisee steps/s (validation excluded); "
          f"best validation at iteration {res.best_iteration}")
    return net, info


def markdown(path: Path) -> str:
    """The results.md tables of a result JSON: ``python benchmarks/lstm_optimizer.py table docs/img/lstm_mnist.json``."""
    r = json.loads(Path(path).read_text())
    lines = []
    for s in r["settings"]:
        n, steps = s["test_optimisees"], s["steps"]
        ev = r["task"] == "mnist"          # quadratics have no data: the eval loss is the loss
        lines += [f"**{s['setting']}** ({n} test optimisees, {steps} steps; lr tuned on {s['tune_optimisees']})", "",
                  f"| optimizer | tuned lr | loss after {steps} steps |"
                  + (f" full-data loss after {steps} steps |" if ev else "")
                  + (" loss after 100 steps |" if steps > 100 else ""),
                  "|---|---|---|" + ("---|" if ev else "") + ("---|" if steps > 100 else "")]
        for name, o in s["optimizers"].items():
            lr = f"{o['lr']:g}" + (" (grid edge)" if o.get("lr_at_grid_edge") else "") if "lr" in o else "—"
            cell = lambda st: f"{st['mean']:.4f} ± {st['ci95']:.4f}" if math.isfinite(st["mean"]) else \
                f"diverged ({st['diverged']}/{st['n']})"
            row = f"| {'**LSTM**' if name == 'LSTM' else name} | {lr} | {cell(o['final'])} |"
            if ev:
                row += f" {cell(o['eval_final'])} |"
            if steps > 100:
                row += f" {cell(o['at_100'])} |"
            lines.append(row)
        d = s["paired_lstm_minus_best_baseline"]
        lines += ["", f"Paired on the same optimisees, LSTM − {s['best_baseline']} (the best tuned baseline): "
                  f"{d['mean']:+.4f} ± {d['ci95']:.4f}; the LSTM ends lower on {d['lstm_wins']} of {d['n']}.", ""]
    m = r["meta_training"]
    lines.append(f"Meta-training: {m['iterations_done']} iterations, {m['optimisee_steps']} optimisee steps in "
                 f"{m['train_seconds']:.0f} s = **{m['optimisee_steps_per_second']:.1f} optimisee steps/s** "
                 f"(validation excluded); best validation at iteration {m['best_iteration']}.")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        print(markdown(Path(sys.argv[2])))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("task", choices=["quadratic", "mnist"])
    p.add_argument("--out", default="runs/lstm", help="run directory root (checkpoints, metrics.jsonl)")
    p.add_argument("--img", default=str(ROOT / "docs" / "img"), help="where the PNG plots and the JSON go")
    p.add_argument("--iterations", type=int, help="meta-training trajectories (default: 300 quadratic, 120 mnist)")
    p.add_argument("--optimisees", type=int, help="optimisees per trajectory (default: 32 quadratic, 1 mnist)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam meta learning rate (the authors' code: 1e-3)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the meta-gradient's norm; 0: no clipping "
                                                                "(the paper and the authors' code do not clip)")
    p.add_argument("--val-every", type=int, default=10)
    p.add_argument("--val-optimisees", type=int, help="default: 64 quadratic, 8 mnist")
    p.add_argument("--val-metric", choices=VAL_METRICS, default="mean",
                   help="best.pt is chosen by the mean validation loss over the trajectory (mean) or over its "
                        "last unroll (last_unroll, as the authors' code)")
    p.add_argument("--output-scale", type=float, default=0.1, help="LSTM output multiplier (the paper: 0.1 on "
                                                                   "MNIST; the authors' code: 0.01)")
    p.add_argument("--preprocess-p", type=float, default=10.0, help="p of the gradient preprocessing (the paper: "
                                                                    "10; the authors' code: 5 on MNIST)")
    p.add_argument("--forget-bias", type=float, default=0.0, help="added to the LSTM's forget-gate bias at "
                                                                  "initialisation (the authors' code: 1)")
    p.add_argument("--mlp-init", choices=["uniform", "normal"], default="uniform",
                   help="mnist: MLP initialisation, uniform ±1/√fan_in or N(0, 0.01²) (the authors' code)")
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--test-optimisees", type=int, default=100)
    p.add_argument("--tune-optimisees", type=int, default=32)
    p.add_argument("--chunk", type=int, help="test optimisees run together (default: 100 quadratic, 5 mnist; "
                                             "small chunks keep the LSTM state in cache on a CPU)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue meta-training from <out>/<task>/last.pt")
    p.add_argument("--settings", default=",".join(["base"] + [g[0] for g in GENERALISATION]),
                   help="mnist: comma-separated subset of base," + ",".join(g[0] for g in GENERALISATION))
    p.add_argument("--baselines", default=",".join(PAPER_BASELINES),
                   help=f"comma-separated tuned baselines, of {','.join(BASELINES)}")
    p.add_argument("--smoke", action="store_true", help="tiny setting: checks that the script runs")
    args = p.parse_args()
    args.settings = args.settings.split(",")
    args.baselines = args.baselines.split(",")
    if set(args.baselines) - set(BASELINES) or not args.baselines:
        p.error(f"--baselines: unknown {sorted(set(args.baselines) - set(BASELINES))}; expected some of "
                f"{','.join(BASELINES)}")
    unknown = set(args.settings) - {"base", *(g[0] for g in GENERALISATION)}
    if unknown:
        p.error(f"--settings: unknown {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    args.grid = LR_GRID
    quad = args.task == "quadratic"
    args.chunk = args.chunk or (100 if quad else 5)
    if args.smoke:
        args.iterations, args.test_optimisees, args.tune_optimisees = 2, 4, 2
        args.val_every, args.val_optimisees, args.grid = 1, 2, (1e-2, 1e-1)
    iterations = args.iterations or (300 if quad else 120)
    optimisees = args.optimisees or (32 if quad else 1)
    val_optimisees = args.val_optimisees or (64 if quad else 8)
    steps = 20 if args.smoke else 100
    cfg = MetaTrainConfig(steps=steps, unroll=min(20, steps), optimisees=optimisees, iterations=iterations,
                          lr=args.lr, grad_clip=args.grad_clip or None, val_every=args.val_every,
                          val_optimisees=val_optimisees, val_metric=args.val_metric, patience=args.patience,
                          seed=args.seed)
    normal = not quad and args.mlp_init == "normal"
    init_note = " (N(0, 0.01²) init)" if normal else ""
    out = Path(args.out) / (args.task + ("_normal_init" if normal else "") + ("_smoke" if args.smoke else ""))
    img = Path(args.img)
    tag = f"lstm_{args.task}" + ("_normal_init" if normal else "") + ("_smoke" if args.smoke else "")
    result = {"task": args.task, "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              **git_commit(), "machine": machine(), "lr_grid": list(args.grid)}
    if not quad:
        result["mlp_init"] = args.mlp_init
    t0 = time.perf_counter()

    if quad:
        fam = QuadraticFamily(dim=10)
        net, result["meta_training"] = train_net(fam, fam, cfg, out, args)
        result["settings"] = [compare("10-d quadratics", net, fam, fam, steps, args)]
        plot(result["settings"], img / f"{tag}.png", "Random 10-d quadratics ‖Wθ − y‖², tuned baselines vs LSTM")
    else:
        from metalearn.data.mnist import load_mnist
        x, y = load_mnist("train")
        if args.smoke:
            x, y = torch.cat([x[:2000], x[50000:51000], x[55000:56000]]), \
                torch.cat([y[:2000], y[50000:51000], y[55000:56000]])
            tr, va, te = slice(0, 2000), slice(2000, 3000), slice(3000, 4000)
        else:
            tr, va, te = slice(0, 50000), slice(50000, 55000), slice(55000, 60000)

        def fam(part, **kw):
            return MLPFamily(x[part], y[part], init=args.mlp_init, **kw)

        net, result["meta_training"] = train_net(fam(tr), fam(va), cfg, out, args)
        result["meta_training"]["coordinates"] = sum(math.prod(s) for s in fam(tr).shapes.values())
        if "base" in args.settings:
            result["settings"] = [compare(f"MLP 20 sigmoid{init_note}, 100 steps", net, fam(va), fam(te), steps,
                                          args)]
            plot(result["settings"], img / f"{tag}.png",
                 f"MNIST MLP (1×20 sigmoid{init_note}), batch 128: tuned baselines vs LSTM")
            result["total_seconds"] = time.perf_counter() - t0
            write_json(result, img / f"{tag}.json")
            print(f"wrote {img / (tag + '.json')}")
        gen = [(k, name, kw, n) for k, name, kw, n in GENERALISATION if k in args.settings]
        if gen:
            result["settings"] = []
            for _, name, kw, n_steps in gen:
                result["settings"].append(compare(name + init_note, net, fam(va, **kw), fam(te, **kw),
                                                  n_steps * steps // 100, args))
                result["total_seconds"] = time.perf_counter() - t0
                write_json(result, img / f"{tag}_generalisation.json")      # after each setting: partial results
            plot(result["settings"], img / f"{tag}_generalisation.png",
                 "Generalisation: LSTM trained on MLP 1×20 sigmoid, 100 steps; baselines tuned per setting")
            print(f"wrote {img / (tag + '_generalisation.json')}")
    if quad:
        result["total_seconds"] = time.perf_counter() - t0
        write_json(result, img / f"{tag}.json")
        print(f"wrote {img / (tag + '.json')}  ({result['total_seconds']:.0f} s)")
    summary = {s["setting"]: {n: round(r["final"]["mean"], 4) for n, r in s["optimizers"].items()}
               for s in result["settings"]}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
