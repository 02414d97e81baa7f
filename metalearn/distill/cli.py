"""``metalearn distill``: the dataset-distillation command (arguments and handler, kept out of the shared cli.py).

    metalearn distill --config tasks/distill/mnist_fixed_10.yaml --out runs/distill/mnist_fixed [--resume]
                      [--set key=value ...] [--baselines] [--threads N] [--quiet]
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_distill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a distillation task file (tasks/distill/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--out", required=True,
                   help="run directory (config.yaml, metrics.jsonl, last.pt, distilled.pt/.png, result.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--baselines", action="store_true",
                   help="also score random real images and k-means centres on the same budget (result.json)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the config's threads)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_distill_command(args: argparse.Namespace) -> int:
    from metalearn.distill.config import load_distill_config
    from metalearn.distill.run import DATASET_NAMES, baselines, distill, load_data, save_grid, write_json

    overrides = list(args.set)
    if args.threads is not None:
        if args.threads < 0:
            raise ValueError(f"--threads: expected an integer >= 0, got {args.threads}")
        overrides.append(f"threads={args.threads}")
    cfg = load_distill_config(args.config, overrides)
    log = None if args.quiet else (lambda s: print(s, flush=True))
    data = load_data(cfg)
    res = distill(cfg, args.out, resume=args.resume, data=data, log=log)
    if res.get("interrupted"):
        print(f"interrupted after {res['outer_steps_done']} outer steps; continue with --resume")
        return 130
    out = Path(args.out)
    if args.baselines:
        b = baselines(cfg, data, log=log)
        for name, images in b.pop("sets").items():
            save_grid(images, None, cfg, out / f"baseline_{name.replace(' ', '_').replace('-', '')}.png",
                      title=f"baseline: {name} ({cfg.total_images} {DATASET_NAMES[cfg.dataset]} images)")
        res["baselines"] = b
        write_json(res, out / "result.json")
    t = res["test"]
    print(f"{res['images']} distilled images, {res['inner_steps']} GD steps: test accuracy "
          f"{t['distilled']['mean']:.2f}% (untrained {t['untrained']['mean']:.2f}%) after "
          f"{res['outer_steps_done']} outer steps, {res['distill_cpu_s']:.0f} CPU s; {out / 'result.json'}")
    return 0
