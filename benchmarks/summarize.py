"""Markdown rows for docs/results.md from the eval JSON files of benchmark runs (no number typed by hand).

    python benchmarks/summarize.py runs/cpu
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

PUBLISHED = {("omniglot", 5, 1): "98.8", ("omniglot", 5, 5): "99.7", ("omniglot", 20, 1): "96.0",
             ("omniglot", 20, 5): "98.9", ("miniimagenet", 5, 1): "49.42 ± 0.78",
             ("miniimagenet", 5, 5): "68.20 ± 0.66"}


def rows(root: Path) -> list[str]:
    out = ["| dataset | setting | ours (acc ± 95% CI) | episodes | published | train steps | train time (excl. val) | "
           "best val step | run |", "|---|---|---|---|---|---|---|---|---|"]
    for ev in sorted(root.glob("*/eval_*.json")):
        r = json.loads(ev.read_text())
        run = ev.parent
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        metrics = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s.strip()]
        train_recs = [m for m in metrics if "loss" in m]
        wall, prev = 0.0, 0  # training time from the logged throughput, validation excluded
        for m in train_recs:
            wall += (m["step"] - prev) * cfg["train"]["batch_size"] / m["episodes_per_s"]
            prev = m["step"]
        pub = PUBLISHED.get((r["dataset"], r["ways"], r["shots"]), "–")
        out.append(f"| {r['dataset']} | {r['ways']}-way {r['shots']}-shot | {r['accuracy']:.2f} ± {r['ci95']:.2f} | "
                   f"{r['episodes']} | {pub} | {cfg['train']['steps']} ({cfg['train']['ways']}-way) | "
                   f"{wall / 60:.0f} min | {r['step']} | `{run.name}` |")
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cpu")
    print("\n".join(rows(root)))
    for f in ("commit.txt", "machine.txt"):
        if (root / f).exists():
            print(f"\n{f}: {(root / f).read_text().strip()}")
