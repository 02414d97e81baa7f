"""Benchmark: Neural Optimizer Search at small scale (Bello et al. 2017, sec. 3) on the MNIST MLP.

A REINFORCE controller (metalearn.optim.search) samples update rules from the paper's grammar; each rule is
scored on a cheap proxy: 4 MLP optimisees (1 hidden layer of 20 sigmoid units, batch 128, images 0-49999 of the
MNIST training split) for 100 steps, at the best lr of the grid 1e-3 ... 10, score = log(initial / final loss).
Random search gets the same number of sampled rules. Then the held-out check, the protocol of
benchmarks/searched_optim.py (same seeds, so the same tuning and test optimisees, images 50000-59999): the best
rules found (controller's top ``--top``, random search's best) and the tuned baselines (SGD, NAG, RMSprop, Adam,
PowerSign, AddSign) each get the lr of the grid 1e-4, 3e-4, ..., 30 with the lowest loss on 32 tuning
optimisees, then run on 100 test optimisees; loss after 100 steps, mean ± 95% CI, and the paired difference of
the best found rule against the best baseline. ``--transfer`` repeats the held-out check on other MLPs
(e.g. ``relu``: 20 ReLU units; ``2layers``: two hidden layers of 20 sigmoid units) with the same rules.

    METALEARN_DATA=../shared/data python benchmarks/optimizer_search.py \\
        --out results/optimizer_search/mnist.json --plot docs/img/optimizer_search_mnist.png
    ... --smoke                                 # seconds: a check that it runs
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalearn.bench import git_state, machine_info  # noqa: E402
from metalearn.optim import BASELINES, MLPFamily, ProblemBatch, run_optimizer, sample_problems, tune_lr  # noqa: E402
from metalearn.optim.meta import LR_GRID, write_json  # noqa: E402
from metalearn.optim.search import (ADDSIGN, POWERSIGN, Controller, Rule, RuleOptimizer, proxy_score,  # noqa: E402
                                    random_search, reinforce_search, top_rules)
from searched_optim import stats  # noqa: E402  (mean ± 95% CI of final losses, inf when any diverged)

PROXY_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
BASELINE_NAMES = ("SGD", "NAG", "RMSprop", "Adam", "PowerSign", "AddSign")
TRANSFER = {"base": dict(hidden=(20,), activation="sigmoid"), "relu": dict(hidden=(20,), activation="relu"),
            "2layers": dict(hidden=(20, 20), activation="sigmoid"), "40hidden": dict(hidden=(40,),
                                                                                      activation="sigmoid")}


def heldout(setting: str, rules: dict[str, Rule], images, labels, args) -> dict:
    """Tune every rule and baseline on the tuning optimisees, run them on the test ones (searched_optim's
    protocol and seeds)."""
    kw = TRANSFER[setting]
    tune_fam = MLPFamily(images[50000:55000], labels[50000:55000], **kw)
    test_fam = MLPFamily(images[55000:60000], labels[55000:60000], **kw)
    tune = ProblemBatch(tune_fam, sample_problems(tune_fam, args.tune_optimisees,
                                                  torch.Generator().manual_seed(args.seed + 2)))
    test = ProblemBatch(test_fam, sample_problems(test_fam, args.test_optimisees,
                                                  torch.Generator().manual_seed(args.seed + 3)))
    grid = (1e-2, 1e-1, 1.0) if args.smoke else LR_GRID
    table = {name: BASELINES[name] for name in BASELINE_NAMES}
    for label, rule in rules.items():
        table[label] = (lambda r: (lambda ps, lr: RuleOptimizer(ps, r, lr)))(rule)
    out, finals = {}, {}
    for name, make in table.items():
        lr, scores = tune_lr(name, tune, args.steps, grid=grid, log=None, baselines=table)
        losses, _ = run_optimizer(lambda ps: make(ps, lr), test, args.steps)
        finals[name] = losses[-1]
        out[name] = {"lr": lr, "lr_at_grid_edge": lr in (min(grid), max(grid)), "final": stats(losses[-1]),
                     "curve_mean": [float(v) for v in losses.mean(1)],
                     "formula": rules[name].formula() if name in rules else None}
        print(f"[{setting}] {name:22s} lr {lr:<7g} loss after {args.steps} steps {out[name]['final']['mean']:.4f} "
              f"± {out[name]['final']['ci95']:.4f}", flush=True)
    best_baseline = min(BASELINE_NAMES, key=lambda n: out[n]["final"]["mean"])
    found = [n for n in rules if n.startswith("controller")]
    best_found = min(found, key=lambda n: out[n]["final"]["mean"]) if found else None
    res = {"setting": setting, "mlp": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
           "steps": args.steps, "tune_optimisees": args.tune_optimisees, "test_optimisees": args.test_optimisees,
           "lr_grid": list(grid), "optimizers": out, "best_baseline": best_baseline, "best_found": best_found}
    if best_found is not None:
        d = finals[best_found] - finals[best_baseline]
        res["paired_best_found_minus_best_baseline"] = {**stats(d), "found_wins": int((d < 0).sum())}
    return res


def plot(rec: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    c = rec["controller"]["history"]
    per = rec["args"]["batch"]
    ax.plot([h["step"] * per for h in c], [h["best_so_far"] for h in c], color="tab:red", label="controller: best")
    ax.plot([h["step"] * per for h in c], [h["mean_score"] for h in c], color="tab:red", lw=0.8, alpha=0.5,
            label="controller: batch mean")
    r = rec["random"]["history"]
    ax.plot([h["sample"] for h in r], [h["best_so_far"] for h in r], color="tab:gray", label="random: best")
    for name in ("Adam", "PowerSign"):
        if name in rec["proxy_references"]:
            ax.axhline(rec["proxy_references"][name]["score"], ls=":", lw=1, color="black" if name == "Adam" else
                       "tab:purple", label=f"{name} on the proxy")
    ax.set_xlabel("rules sampled")
    ax.set_ylabel("proxy score, log(initial / final loss)")
    ax.set_title("search on the proxy (4 MLPs, 100 steps)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    h = rec["heldout"][0]
    for name, o in h["optimizers"].items():
        style = dict(lw=1.6) if name.startswith(("controller", "random")) else dict(lw=0.9, ls="--")
        label = f"{name}: {o['formula']}" if o.get("formula") else name
        ax.plot(o["curve_mean"], label=label[:60], **style)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over test optimisees)")
    ax.set_title(f"held-out test optimisees (n={h['test_optimisees']}), tuned lr", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "optimizer_search" / "mnist.json"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "img" / "optimizer_search_mnist.png"))
    p.add_argument("--controller-steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=12, help="rules per controller step")
    p.add_argument("--groups", type=int, default=2, help="groups per rule (PowerSign needs 2)")
    p.add_argument("--controller-lr", type=float, default=0.05)
    p.add_argument("--entropy", type=float, default=0.01)
    p.add_argument("--proxy-optimisees", type=int, default=4)
    p.add_argument("--steps", type=int, default=100, help="optimisee steps of the proxy and of the held-out runs")
    p.add_argument("--top", type=int, default=3, help="controller rules re-evaluated on held-out optimisees")
    p.add_argument("--tune-optimisees", type=int, default=32)
    p.add_argument("--test-optimisees", type=int, default=100)
    p.add_argument("--transfer", default="", help=f"comma-separated MLPs besides the base one: "
                                                  f"{', '.join(k for k in TRANSFER if k != 'base')}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny setting: checks that the script runs")
    args = p.parse_args()
    for name in ("controller_steps", "batch", "groups", "proxy_optimisees", "steps", "top", "tune_optimisees",
                 "test_optimisees", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    for name in ("controller_lr", "entropy"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            p.error(f"--{name.replace('_', '-')}: expected a number >= 0, got {getattr(args, name)}")
    transfer = [t.strip() for t in args.transfer.split(",") if t.strip()]
    bad = [t for t in transfer if t not in TRANSFER or t == "base"]
    if bad:
        p.error(f"--transfer: unknown {bad}; expected some of {', '.join(k for k in TRANSFER if k != 'base')}")
    if args.smoke:
        args.controller_steps, args.batch, args.proxy_optimisees, args.steps = 2, 3, 2, 10
        args.tune_optimisees, args.test_optimisees, args.top = 2, 3, 1
    out_path, plot_path = Path(args.out), Path(args.plot)
    torch.set_num_threads(args.threads)
    git = git_state()                      # the commit of the code that runs
    c0, w0 = time.process_time(), time.perf_counter()
    from metalearn.data.mnist import load_mnist
    images, labels = load_mnist("train")
    fam = MLPFamily(images[:50000], labels[:50000])
    proxy = ProblemBatch(fam, sample_problems(fam, args.proxy_optimisees,
                                              torch.Generator().manual_seed(args.seed + 10)))
    grid = (1e-2, 1.0) if args.smoke else PROXY_GRID
    score = lambda rule: proxy_score(rule, proxy, args.steps, grid)          # noqa: E731
    refs = {"Adam": Rule((("adam", "one", "id", "id", "left"),)), "PowerSign": POWERSIGN, "AddSign": ADDSIGN,
            "SGD": Rule((("g", "one", "id", "id", "left"),))}
    proxy_refs = {k: {**score(r), "formula": r.formula()} for k, r in refs.items()}
    for k, v in proxy_refs.items():
        print(f"proxy score of {k:9s} {v['score']:.3f} (lr {v['lr']})", flush=True)

    torch.manual_seed(args.seed)
    controller = Controller(groups=args.groups)
    t0 = time.perf_counter()
    ctrl = reinforce_search(score, controller, args.controller_steps, args.batch, lr=args.controller_lr,
                            entropy=args.entropy, generator=torch.Generator().manual_seed(args.seed + 20),
                            log=lambda s: print(s, flush=True))
    ctrl["wall_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    rnd = random_search(score, args.groups, ctrl["samples"], torch.Generator().manual_seed(args.seed + 30))
    rnd["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"random search: best {rnd['history'][-1]['best_so_far']:.3f} after {rnd['samples']} samples "
          f"({rnd['evaluations']} distinct)", flush=True)
    ctop, rtop = top_rules(ctrl["rules"], args.top), top_rules(rnd["rules"], 1)
    chosen: dict[str, Rule] = {}
    for i, (formula, r) in enumerate(ctop, 1):
        chosen[f"controller #{i}"] = Rule.from_json(r["rule"])
        print(f"controller #{i}: {formula}  (proxy {r['score']:.3f}, lr {r['lr']})")
    for formula, r in rtop:
        chosen["random #1"] = Rule.from_json(r["rule"])
        print(f"random #1: {formula}  (proxy {r['score']:.3f}, lr {r['lr']})")
    held = [heldout(s, chosen, images, labels, args) for s in ["base", *transfer]]
    for rec in (ctrl, rnd):
        rec["top"] = [{"formula": f, **r} for f, r in top_rules(rec["rules"], 10)]
        del rec["rules"]
    record = {"kind": "metalearn-optimizer-search",
              "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), **git,
              "machine": machine_info("cpu"), "args": vars(args), "smoke": args.smoke,
              "proxy": {"family": "MLP 20 sigmoid, batch 128, MNIST train images 0-49999",
                        "optimisees": args.proxy_optimisees, "steps": args.steps, "lr_grid": list(grid),
                        "score": "log(initial loss / final loss) at the best lr, 0 if it diverges"},
              "proxy_references": proxy_refs, "controller": ctrl, "random": rnd,
              "chosen": {k: {"rule": r.to_json(), "formula": r.formula()} for k, r in chosen.items()},
              "heldout": held, "cpu_s": round(time.process_time() - c0, 1),
              "wall_s": round(time.perf_counter() - w0, 1)}
    path = write_json(record, out_path)
    plot(record, plot_path)
    print(f"wrote {path} ({record['cpu_s']:.0f} CPU s)")


if __name__ == "__main__":
    main()
