"""Benchmark: PowerSign and AddSign (Bello et al. 2017) against tuned SGD, NAG, RMSprop and Adam.

Families (each run writes results/searched_optim/<family>.json and docs/img/searched_<family>.png):

* ``quadratic``: random 10-d ``‖Wθ − y‖²``, 100 steps; ``mnist``: the MLP optimisee (1 hidden layer of 20
  sigmoid units, batch 128), 100 steps. The protocol of benchmarks/lstm_optimizer.py (same seeds, so the same
  tuning and test optimisees): each optimizer's lr is the best of the logged grid 1e-4, 3e-4, ..., 30 on 32
  tuning optimisees; every optimizer then runs on the same 100 test optimisees; loss after the horizon as
  mean ± 1.96·std/√n, and paired differences. The LSTM row of docs/img/lstm_<family>.json (its own run) is
  quoted next to ours when that file is there.
* ``cifar10``: a small CNN (conv 8-16-32, 3x3, ReLU, max-pool; 11 k parameters) trained from scratch for a fixed
  short budget (300 steps of batch 64, no augmentation) on CIFAR-10 train images 0-44999; each optimizer's lr
  is chosen from a 3-point grid (extended while the best is at an edge) by validation accuracy (images
  45000-49999, 2000 of them) at seed 0; test accuracy (10000 test images) over seeds 1..S at that lr,
  mean ± 1.96·std/√S.

    python benchmarks/searched_optim.py quadratic
    METALEARN_DATA=../shared/data python benchmarks/searched_optim.py mnist
    METALEARN_DATA=../shared/data python benchmarks/searched_optim.py cifar10 --seeds 3
    ... --smoke                                             # seconds: a check that it runs
    python benchmarks/searched_optim.py table results/searched_optim/mnist.json     # the docs table
    python benchmarks/searched_optim.py plot results/searched_optim/mnist.json docs/img/searched_mnist.png
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalearn.bench import git_state, machine_info  # noqa: E402
from metalearn.optim import (BASELINES, MLPFamily, ProblemBatch, QuadraticFamily, run_optimizer,  # noqa: E402
                             sample_problems, tune_lr)
from metalearn.optim.meta import LR_GRID, write_json  # noqa: E402
from metalearn.optim.searched import searched_baselines  # noqa: E402
from metalearn.train.evaluator import mean_ci95  # noqa: E402

CLASSICAL = ("SGD", "NAG", "RMSprop", "Adam")
COLORS = {"SGD": "tab:gray", "NAG": "tab:green", "RMSprop": "tab:orange", "Adam": "tab:blue", "LSTM": "black",
          "PowerSign": "tab:red", "PowerSign-ld": "tab:pink", "PowerSign-cd": "darkred", "PowerSign-rd": "salmon",
          "AddSign": "tab:purple", "AddSign-ld": "violet", "AddSign-cd": "indigo", "AddSign-rd": "plum"}
DECAY_NAMES = {"ld": "linear", "cd": "cyclic", "rd": "restart"}


def stats(values: torch.Tensor) -> dict:
    v = values.double()
    finite = torch.isfinite(v)
    if not bool(finite.all()):
        return {"mean": math.inf, "ci95": math.nan, "n": v.numel(), "diverged": int((~finite).sum())}
    m, ci = mean_ci95(v.numpy())
    return {"mean": m, "ci95": ci, "n": v.numel(), "diverged": 0}


def table(steps: int, decays: list[str]) -> dict:
    searched = searched_baselines(steps, ["constant", *[DECAY_NAMES[d] for d in decays]])
    return {**{k: BASELINES[k] for k in CLASSICAL}, **searched}


# ------------------------------------------------------------------------------- quadratic / MNIST MLP


def optimisee_family(args) -> dict:
    steps = 20 if args.smoke else 100
    if args.family == "quadratic":
        tune_fam = test_fam = QuadraticFamily(dim=10)
        setting = "10-d quadratics"
    else:
        from metalearn.data.mnist import load_mnist
        x, y = load_mnist("train")
        tune_fam, test_fam = MLPFamily(x[50000:55000], y[50000:55000]), MLPFamily(x[55000:60000], y[55000:60000])
        setting = "MLP 20 sigmoid, 100 steps"
    n_tune, n_test = (2, 4) if args.smoke else (args.tune_optimisees, args.test_optimisees)
    tune = ProblemBatch(tune_fam, sample_problems(tune_fam, n_tune, torch.Generator().manual_seed(args.seed + 2)))
    test = ProblemBatch(test_fam, sample_problems(test_fam, n_test, torch.Generator().manual_seed(args.seed + 3)))
    grid = (1e-2, 1e-1) if args.smoke else LR_GRID
    opts = table(steps, args.decays)
    out = {"setting": setting, "steps": steps, "tune_optimisees": n_tune, "test_optimisees": n_test,
           "lr_grid": list(grid), "optimizers": {}}
    finals = {}
    for name, make in opts.items():
        c0 = time.process_time()
        lr, scores = tune_lr(name, tune, steps, grid=grid, log=None, baselines=opts)
        losses, params = run_optimizer(lambda ps: make(ps, lr), test, steps)          # (steps + 1, n)
        ev = test.eval_losses(params).double().cpu() if torch.isfinite(losses[-1]).all() else \
            torch.full((n_test,), math.inf)
        finals[name] = losses[-1]
        out["optimizers"][name] = {"lr": lr, "lr_at_grid_edge": lr in (min(grid), max(grid)),
                                   "grid": {str(k): v for k, v in scores.items()}, "final": stats(losses[-1]),
                                   "eval_final": stats(ev), "curve_mean": [float(v) for v in losses.mean(1)],
                                   "final_per_optimisee": [float(v) for v in losses[-1]],
                                   "cpu_s": round(time.process_time() - c0, 2)}
        r = out["optimizers"][name]
        print(f"[{args.family}] {name:13s} lr {lr:<7g} loss after {steps} steps {r['final']['mean']:.4f} ± "
              f"{r['final']['ci95']:.4f}  ({r['cpu_s']:.1f} CPU s)", flush=True)
    best_classical = min(CLASSICAL, key=lambda n: out["optimizers"][n]["final"]["mean"])
    searched = [n for n in opts if n not in CLASSICAL]
    best_searched = min(searched, key=lambda n: out["optimizers"][n]["final"]["mean"])
    d = finals[best_searched] - finals[best_classical]
    out.update({"best_classical": best_classical, "best_searched": best_searched,
                "paired_best_searched_minus_best_classical": {**stats(d), "searched_wins": int((d < 0).sum())}})
    lstm_file = ROOT / "docs" / "img" / f"lstm_{args.family}.json"
    if lstm_file.is_file() and not args.smoke:
        ref = json.loads(lstm_file.read_text())
        s = ref["settings"][0]
        if s["steps"] == steps and s["test_optimisees"] == n_test:
            ours = {k: out["optimizers"][k]["final"]["mean"] for k in CLASSICAL}
            theirs = {k: s["optimizers"][k]["final"]["mean"] for k in CLASSICAL if k in s["optimizers"]}
            out["lstm_reference"] = {"file": str(lstm_file.relative_to(ROOT)), "command": ref.get("command"),
                                     "commit": ref.get("commit"), "LSTM": s["optimizers"]["LSTM"]["final"],
                                     "LSTM_curve_mean": s["optimizers"]["LSTM"]["curve_mean"],
                                     "classical_there": theirs,
                                     "classical_same_lr_there": {k: s["optimizers"][k].get("lr") for k in theirs},
                                     "max_abs_diff_classical": max(abs(ours[k] - theirs[k]) for k in theirs)}
    return out


# ------------------------------------------------------------------------------------------ CIFAR-10


class SmallCNN(nn.Module):
    """conv3x3 (8) -> ReLU -> pool -> conv3x3 (16) -> ReLU -> pool -> conv3x3 (32) -> ReLU -> pool -> fc 10."""

    def __init__(self, widths=(8, 16, 32)) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(nn.Conv2d(3, a, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(b, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(c * 16, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


#: the starting 3-point grids (from LR_GRID), extended while the best lr is at an edge
CIFAR_GRIDS = {"SGD": (0.03, 0.1, 0.3), "NAG": (0.01, 0.03, 0.1), "RMSprop": (3e-4, 1e-3, 3e-3),
               "Adam": (3e-4, 1e-3, 3e-3)}
SEARCHED_GRID = (0.01, 0.03, 0.1)


def cifar_run(make, lr, seed, data, args, eval_sets) -> dict:
    from metalearn.data.cifar10 import normalize
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = make(list(model.parameters()), lr)
    g = torch.Generator().manual_seed(10_000 + seed)
    x_tr, y_tr = data["train"]
    losses = []
    c0 = time.process_time()
    for step in range(args.cifar_steps):
        idx = torch.randint(0, x_tr.shape[0], (args.batch_size,), generator=g)
        loss = F.cross_entropy(model(normalize(x_tr[idx])), y_tr[idx])
        if not torch.isfinite(loss):
            losses += [math.inf] * (args.cifar_steps - step)
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    out = {"train_loss": losses, "train_cpu_s": round(time.process_time() - c0, 2)}
    model.eval()
    with torch.no_grad():
        for name in eval_sets:
            x, y = data[name]
            correct = sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum()) for i in range(0, len(y), 500))
            out[f"{name}_acc"] = 100.0 * correct / len(y)
    return out


def cifar_family(args) -> dict:
    from metalearn.data.cifar10 import load_cifar10, normalize
    x, y = load_cifar10(split="train", cache_dir=args.cache_dir, progress=False)
    xt, yt = load_cifar10(split="test", cache_dir=args.cache_dir, progress=False)
    n_val, n_test = (200, 500) if args.smoke else (args.val_images, 10000)
    data = {"train": (x[:45000], y[:45000]), "val": (normalize(x[45000:45000 + n_val]), y[45000:45000 + n_val]),
            "test": (normalize(xt[:n_test]), yt[:n_test])}
    if args.smoke:
        args.cifar_steps, args.seeds = 5, 1
    opts = table(args.cifar_steps, args.decays)
    out = {"setting": f"small CNN (8-16-32), {args.cifar_steps} steps of batch {args.batch_size}",
           "steps": args.cifar_steps, "batch_size": args.batch_size, "val_images": n_val, "test_images": n_test,
           "seeds": list(range(1, args.seeds + 1)), "optimizers": {}}
    for name, make in opts.items():
        c0 = time.process_time()
        ladder = sorted(set(LR_GRID))
        grid = list(CIFAR_GRIDS.get(name, SEARCHED_GRID))
        tried: dict[float, float] = {}
        while True:
            for lr in grid:
                if lr not in tried:
                    tried[lr] = cifar_run(make, lr, 0, data, args, ("val",))["val_acc"]
            best = max(tried, key=tried.get)
            i = ladder.index(best)
            lower, upper = min(tried), max(tried)
            if best == lower and i > 0 and len(tried) < 6:
                grid = [ladder[i - 1]]
            elif best == upper and i + 1 < len(ladder) and len(tried) < 6:
                grid = [ladder[i + 1]]
            else:
                break
        runs = [cifar_run(make, best, s, data, args, ("test",)) for s in out["seeds"]]
        accs = torch.tensor([r["test_acc"] for r in runs])
        curve = torch.tensor([r["train_loss"] for r in runs]).mean(0)
        m, ci = mean_ci95(accs.double().numpy()) if len(runs) > 1 else (float(accs[0]), math.nan)
        out["optimizers"][name] = {"lr": best, "val_acc_by_lr": {str(k): v for k, v in sorted(tried.items())},
                                   "lr_at_grid_edge": best in (min(tried), max(tried)),
                                   "test_acc": {"mean": m, "ci95": ci, "std": float(accs.std()) if len(runs) > 1
                                                else 0.0, "n": len(runs), "values": accs.tolist()},
                                   "train_loss_curve_mean": [float(v) for v in curve],
                                   "cpu_s": round(time.process_time() - c0, 2)}
        print(f"[cifar10] {name:13s} lr {best:<7g} test accuracy {m:.2f} ± {ci:.2f}%  "
              f"(val by lr {', '.join(f'{k:g}: {v:.1f}' for k, v in sorted(tried.items()))}; "
              f"{time.process_time() - c0:.0f} CPU s)", flush=True)
    best_classical = max(CLASSICAL, key=lambda n: out["optimizers"][n]["test_acc"]["mean"])
    searched = [n for n in opts if n not in CLASSICAL]
    out["best_classical"] = best_classical
    out["best_searched"] = max(searched, key=lambda n: out["optimizers"][n]["test_acc"]["mean"])
    return out


# -------------------------------------------------------------------------------------------- output


def plot(res: dict, path: Path, family: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    key = "train_loss_curve_mean" if family == "cifar10" else "curve_mean"
    for name, rec in res["optimizers"].items():
        curve = [c if math.isfinite(c) else float("nan") for c in rec[key]]
        if family == "cifar10":            # running mean over 20 steps: the minibatch losses are noisy
            k = 20
            curve = [sum(curve[max(0, i - k + 1):i + 1]) / len(curve[max(0, i - k + 1):i + 1]) for i in range(len(curve))]
        acc = f", {rec['test_acc']['mean']:.1f}%" if family == "cifar10" else ""
        ax.plot(range(len(curve)), curve, label=f"{name} (lr {rec['lr']:g}{acc})", color=COLORS.get(name),
                lw=1.8 if name.startswith(("PowerSign", "AddSign")) else 1.2,
                ls="--" if "-" in name else "-")
    ref = res.get("lstm_reference")
    if ref:
        ax.plot(range(len(ref["LSTM_curve_mean"])), ref["LSTM_curve_mean"], color="black", lw=1.0, ls=":",
                label=f"LSTM ({ref['file']})")
    if family == "cifar10":
        ax.set_ylim(top=2.45)
    else:
        ax.set_yscale("log")
        first = max(rec[key][0] for rec in res["optimizers"].values())
        top = 30 * first                    # a run that blows up mid-way would hide the others: clip the axis
        if any(max(c for c in rec[key] if math.isfinite(c)) > top for rec in res["optimizers"].values()):
            ax.set_ylim(top=top)
            ax.text(0.01, 0.99, f"clipped at {top:.3g}", transform=ax.transAxes, va="top", fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (running mean of 20)" if family == "cifar10" else "loss (mean over test optimisees)")
    n = f"{len(res['seeds'])} seeds" if family == "cifar10" else f"n={res['test_optimisees']}"
    ax.set_title(f"{family}: {res['setting']} ({n}); tuned lr per optimizer", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def markdown(path: Path) -> str:
    """The docs table of a result JSON: ``python benchmarks/searched_optim.py table results/searched_optim/X.json``."""
    r = json.loads(Path(path).read_text())
    s = r["result"]
    lines = []
    if r["family"] == "cifar10":
        lines += [f"| optimizer | tuned lr (val acc by lr) | test accuracy %, mean ± 95% CI ({len(s['seeds'])} seeds) |",
                  "|---|---|---|"]
        for name, o in s["optimizers"].items():
            grid = ", ".join(f"{float(k):g}: {v:.1f}" for k, v in o["val_acc_by_lr"].items())
            edge = " (grid edge)" if o["lr_at_grid_edge"] else ""
            t = o["test_acc"]
            lines.append(f"| {name} | {o['lr']:g}{edge} ({grid}) | {t['mean']:.2f} ± {t['ci95']:.2f} |")
        return "\n".join(lines)
    steps = s["steps"]
    ev = r["family"] == "mnist"
    lines += [f"| optimizer | tuned lr | loss after {steps} steps |" + (" full-data loss |" if ev else ""),
              "|---|---|---|" + ("---|" if ev else "")]
    cell = lambda st: f"{st['mean']:.4f} ± {st['ci95']:.4f}" if math.isfinite(st["mean"]) else \
        f"diverged ({st['diverged']}/{st['n']})"
    for name, o in s["optimizers"].items():
        edge = " (grid edge)" if o["lr_at_grid_edge"] else ""
        lines.append(f"| {name} | {o['lr']:g}{edge} | {cell(o['final'])} |" + (f" {cell(o['eval_final'])} |" if ev
                                                                               else ""))
    ref = s.get("lstm_reference")
    if ref:
        lines.append(f"| LSTM (quoted from `{ref['file']}`, commit `{ref['commit']}`) | — | {cell(ref['LSTM'])} |"
                     + (" |" if ev else ""))
    d = s["paired_best_searched_minus_best_classical"]
    lines += ["", f"Paired on the same optimisees, {s['best_searched']} − {s['best_classical']} (the best of each "
              f"kind): {d['mean']:+.4f} ± {d['ci95']:.4f}; {s['best_searched']} ends lower on {d['searched_wins']} "
              f"of {d['n']}."]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        print(markdown(Path(sys.argv[2])))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "plot":          # redraw a result JSON's plot: plot JSON PNG
        rec = json.loads(Path(sys.argv[2]).read_text())
        plot(rec["result"], Path(sys.argv[3]), rec["family"])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("family", choices=["quadratic", "mnist", "cifar10"])
    p.add_argument("--decays", default=None,
                   help="comma-separated decayed variants besides the constant one: ld,cd,rd "
                        "(default: all three for quadratic, ld for mnist and cifar10)")
    p.add_argument("--tune-optimisees", type=int, default=32)
    p.add_argument("--test-optimisees", type=int, default=100)
    p.add_argument("--cifar-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=3, help="cifar10: seeds at the tuned lr")
    p.add_argument("--cache-dir", default=None, help="cifar10: the decoded cache (default $METALEARN_CACHE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(ROOT / "results" / "searched_optim"))
    p.add_argument("--img", default=str(ROOT / "docs" / "img"))
    p.add_argument("--smoke", action="store_true", help="tiny setting: checks that the script runs")
    args = p.parse_args()
    decays = args.decays if args.decays is not None else ("ld,cd,rd" if args.family == "quadratic" else "ld")
    args.decays = [d.strip() for d in decays.split(",") if d.strip()]
    bad = [d for d in args.decays if d not in DECAY_NAMES]
    if bad:
        p.error(f"--decays: unknown {bad}; expected some of ld, cd, rd")
    for name in ("tune_optimisees", "test_optimisees", "cifar_steps", "batch_size", "val_images", "seeds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    git = git_state()                      # the commit of the code that runs (not of the tree at the end)
    c0, w0 = time.process_time(), time.perf_counter()
    res = cifar_family(args) if args.family == "cifar10" else optimisee_family(args)
    tag = args.family + ("_smoke" if args.smoke else "")
    record = {"family": args.family, "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              **git, "machine": machine_info("cpu"), "cpu_s": round(time.process_time() - c0, 1),
              "wall_s": round(time.perf_counter() - w0, 1), "result": res}
    path = write_json(record, Path(args.results) / f"{tag}.json")
    plot(res, Path(args.img) / f"searched_{tag}.png", args.family)
    print(f"wrote {path} ({record['cpu_s']:.0f} CPU s)")


if __name__ == "__main__":
    main()
