"""CIFAR-10-C level-5 table for Test-Time Training and the baselines, beside the TTT paper's Table A2.

``run`` evaluates three trained runs (``metalearn ttt train``) on the clean test set and the 15 corruptions
with :func:`metalearn.ttt.run.eval_run`: the GN joint-training run (source = "joint training", TTT, TTT-Online),
the GN object-only run (source = "object only") and the BN run (source, norm adaptation, Tent).  ``report``
prints the markdown table and draws the bar chart.

  python benchmarks/ttt_eval.py run --gn runs/ttt/gn --objonly runs/ttt/objonly --bn runs/ttt/bn \\
      --device cuda --out results/ttt_cifar10c.json                       # full test sets (the config's eval.*)
  python benchmarks/ttt_eval.py run ... --set eval.images=1000 --gn-set eval.methods=source --out X.json
  python benchmarks/ttt_eval.py run ... --set eval.images=100 --set eval.ttt_images=10 --device cpu --threads 1
  python benchmarks/ttt_eval.py report results/ttt_cifar10c.json --png docs/img/ttt_cifar10c.png
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ["clean", "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
        "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
        "jpeg_compression"]
SHORT = ["orig", "gauss", "shot", "impul", "defoc", "glass", "motn", "zoom", "snow", "frost", "fog", "brit",
         "contr", "elast", "pixel", "jpeg"]
#: Sun et al. 2020, Table A2 (ResNet-26 GN, level 5, error %): orig, the 15 corruptions in SETS order.
PAPER = {
    "object only": [8.9, 50.5, 47.2, 56.1, 23.7, 51.7, 24.3, 26.3, 25.6, 34.4, 28.1, 13.5, 25.0, 27.4, 55.8, 29.8],
    "joint training": [8.1, 49.4, 45.3, 53.4, 24.2, 48.5, 24.8, 26.4, 25.0, 32.5, 27.5, 12.6, 25.3, 24.0, 51.6, 28.7],
    "TTT": [7.9, 45.6, 41.8, 50.0, 21.8, 46.1, 23.0, 23.9, 23.9, 30.0, 25.1, 12.2, 23.9, 22.6, 47.2, 27.2],
    "TTT-Online": [8.2, 25.8, 22.6, 30.6, 14.6, 34.4, 18.3, 17.1, 20.0, 18.0, 16.9, 11.2, 15.6, 21.6, 18.1, 21.2],
}
#: Wang et al. 2021 (Tent), ResNet-26 BN, mean error over the 15 corruptions at level 5.
PAPER_TENT_MEAN = {"source (BN)": 40.8, "norm adapt (BN)": 17.3, "Tent (BN)": 14.3}
#: our rows: (label, run, method)
ROWS = [("object only", "objonly", "source"), ("joint training", "gn", "source"), ("TTT", "gn", "ttt"),
        ("TTT-Online", "gn", "ttt_online"), ("source (BN)", "bn", "source"), ("norm adapt (BN)", "bn", "norm_adapt"),
        ("Tent (BN)", "bn", "tent")]


def _commit() -> str:
    """Short commit of the checkout (``metalearn.bench.git_state``), marked when the tree is dirty."""
    from metalearn.bench import git_state
    state = git_state()
    if not state["commit"]:
        return "unknown"
    return state["commit"][:7] + (" (dirty)" if state["dirty"] else "")


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    from metalearn.ttt.run import eval_run
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = {"command": " ".join(["python", *sys.argv]), "commit": _commit(), "torch": torch.__version__,
           "machine": (torch.cuda.get_device_name(0) if args.device and args.device.startswith("cuda")
                       else f"CPU ({platform.machine()}), {torch.get_num_threads()} threads"),
           "runs": {}}
    path = Path(args.out)
    if path.is_file():                       # resume: keep runs already evaluated
        out["runs"] = json.loads(path.read_text()).get("runs", {})
    for key in ("objonly", "bn", "gn"):
        run_dir = getattr(args, key)
        if not run_dir or out["runs"].get(key, {}).get("complete"):
            continue
        done = out["runs"].get(key, {}).get("sets", {})      # sets of an interrupted run are kept
        overrides = list(args.set) + list(getattr(args, f"{key}_set"))
        if done:
            left = [s for s in SETS if s not in done]
            overrides.append("eval.corruptions=" + ",".join(left))
        t0 = time.perf_counter()

        def save(name: str, row: dict, k: str = key) -> None:
            part = out["runs"].setdefault(k, {"complete": False, "sets": {}})
            part["sets"][name] = row
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=1) + "\n")

        res = eval_run(run_dir, overrides, device=args.device, on_set=save,
                       progress=lambda s, k=key: print(f"[{k}] {s}", flush=True))
        res["sets"] = {**done, **res["sets"]}
        res["sets"] = {s: res["sets"][s] for s in SETS if s in res["sets"]}
        res["wall_s"] = time.perf_counter() - t0 + out["runs"].get(key, {}).get("wall_s", 0.0)
        res["complete"] = True
        out["runs"][key] = res
        path.write_text(json.dumps(out, indent=1) + "\n")   # after each run: a crash keeps what is done


def _methods(run: dict) -> list[str]:
    return run.get("methods") or (list(next(iter(run["sets"].values()))) if run.get("sets") else [])


def _source_on_ttt_images(runs: dict):
    """Error % of the GN source model on exactly the images standard TTT ran on (a prefix of the stream), per
    set, and the sorted numbers of images; None without per-image predictions."""
    gn = runs.get("gn", {})
    if not (gn.get("labels") and "ttt" in _methods(gn) and "source" in _methods(gn)):
        return None
    vals = []
    for s in SETS:
        row = gn["sets"].get(s)
        if row is None:
            vals.append(None)
            continue
        m = row["ttt"]["n"]
        pred, lab = row["source"]["pred"][:m], gn["labels"][:m]
        vals.append(100.0 * sum(p != t for p, t in zip(pred, lab)) / m)
    return vals, sorted({gn["sets"][s]["ttt"]["n"] for s in gn["sets"]})


def table(res: dict) -> str:
    runs = res["runs"]
    head = "| | " + " | ".join(SHORT) + " | mean(15) | images |"
    lines = [head, "|" + "---|" * (len(SHORT) + 3)]
    for label, run, method in ROWS:
        if run not in runs or method not in _methods(runs[run]):
            continue
        sets = runs[run]["sets"]
        vals = [sets[s][method]["error"] if s in sets else None for s in SETS]
        cor = [v for v in vals[1:] if v is not None]
        mean = sum(cor) / len(cor) if cor else None
        n = sorted({sets[s][method]["n"] for s in sets})
        cells = ["–" if v is None else f"{v:.1f}" for v in vals] + ["–" if mean is None else f"{mean:.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'/'.join(map(str, n))} |")
    same = _source_on_ttt_images(runs)
    if same is not None:
        vals, n = same
        cor = [v for v in vals[1:] if v is not None]
        cells = ["–" if v is None else f"{v:.1f}" for v in vals] + [f"{sum(cor) / len(cor):.1f}" if cor else "–"]
        at = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("| TTT |")), len(lines))
        lines.insert(at, "| joint training, on the TTT images | " + " | ".join(cells) +
                     f" | {'/'.join(map(str, n))} |")
    for label, vals in PAPER.items():
        lines.append(f"| paper: {label} | " + " | ".join(f"{v:.1f}" for v in vals) +
                     f" | {sum(vals[1:]) / 15:.1f} | 10000 |")
    for label, v in PAPER_TENT_MEAN.items():
        lines.append(f"| Tent paper: {label} | " + " | ".join("" for _ in SHORT) + f" | {v:.1f} | 10000 |")
    return "\n".join(lines)


def plot(res: dict, png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = res["runs"]
    ours = [(label, [runs[r]["sets"][s][m]["error"] for s in SETS]) for label, r, m in ROWS
            if r in runs and m in _methods(runs[r]) and all(s in runs[r]["sets"] for s in SETS)]
    same = _source_on_ttt_images(runs)
    if same is not None and None not in same[0]:
        at = next((i + 1 for i, (label, _) in enumerate(ours) if label == "TTT"), len(ours))
        ours.insert(at, ("joint training, on the TTT images", same[0]))
    fig, axes = plt.subplots(2, 1, figsize=(15, 8.5), sharex=True)
    x = np.arange(len(SETS) + 1)
    for ax, rows, title in (
            (axes[0], ours, "ours: UNDER-TRAINED CPU run, 100 training steps, image subsets (TTT: first 8-20 images; see docs/results.md)"),
            (axes[1], list(PAPER.items()), "paper: Sun et al. 2020, Table A2 (ResNet-26 GN, full recipe)")):
        w = 0.8 / max(1, len(rows))
        for i, (label, vals) in enumerate(rows):
            ax.bar(x + (i - (len(rows) - 1) / 2) * w, vals + [sum(vals[1:]) / 15], w, label=label)
        ax.set_ylabel("error % (level 5)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, ncol=4, loc="upper left")
    axes[1].set_xticks(x, SHORT + ["mean(15)"], rotation=0, fontsize=8)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def cmd_report(args: argparse.Namespace) -> None:
    res = json.loads(Path(args.json).read_text())
    print(table(res))
    if args.png:
        plot(res, args.png)
        print(f"\nwrote {args.png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--gn", help="GN joint-training run directory (rotation head)")
    r.add_argument("--objonly", help="GN object-only run directory")
    r.add_argument("--bn", help="BN run directory")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="eval overrides for every run")
    for key in ("gn", "objonly", "bn"):
        r.add_argument(f"--{key}-set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"overrides for the {key} run only (after --set)")
    r.add_argument("--device", default=None)
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--out", required=True, help="result JSON (runs already in it are skipped)")
    r.set_defaults(fn=cmd_run)
    rep = sub.add_parser("report")
    rep.add_argument("json")
    rep.add_argument("--png", default=None)
    rep.set_defaults(fn=cmd_report)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
