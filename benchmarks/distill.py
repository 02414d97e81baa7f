"""Benchmark: dataset distillation (Wang et al. 2018) on MNIST with LeNet or CIFAR-10 with AlexCifarNet, and the
paper's baselines on the same budget (random real images, k-means centres), one result JSON with the command,
commit, machine and CPU time.

    METALEARN_DATA=../shared/data python benchmarks/distill.py tasks/distill/mnist_fixed_10.yaml \\
        --out runs/distill/mnist_fixed_10                          # writes results/distill/mnist_fixed_10.json
    ... --set outer_steps=300                                      # a shorter budget
    ... --resume --set outer_steps=20000                           # continue the same run for longer

The distilled-image grid, the baselines' grids and the learning curve go to docs/img/distill_<name>*.png.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalearn.bench import git_state, machine_info  # noqa: E402
from metalearn.distill.config import load_distill_config  # noqa: E402
from metalearn.distill.run import DATASET_NAMES, baselines, distill, load_data, save_grid, write_json  # noqa: E402

#: the published numbers (Wang et al. 2018; MNIST with LeNet, CIFAR-10 with AlexCifarNet): test accuracy (%),
#: by (dataset, arch, init, distilled images)
PUBLISHED = {("mnist", "lenet", "fixed", 10): {"accuracy": 93.8, "untrained": 12.9},
             ("mnist", "lenet", "random", 100): {"accuracy": 79.5, "std": 8.1},
             ("cifar10", "alexcifarnet", "fixed", 100): {"accuracy": 54.0},
             ("cifar10", "alexcifarnet", "random", 100): {"accuracy": 36.8, "std": 1.2}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="a distillation task file (tasks/distill/*.yaml)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--results", default=str(ROOT / "results" / "distill"))
    p.add_argument("--img", default=str(ROOT / "docs" / "img"))
    p.add_argument("--name", default=None, help="result name (default: the config file's stem)")
    p.add_argument("--no-baselines", action="store_true")
    args = p.parse_args()
    cfg = load_distill_config(args.config, args.set)
    torch.set_num_threads(max(cfg.threads, 1))
    name = args.name or Path(args.config).stem
    git = git_state()                      # the commit of the code that runs (not of the tree at the end)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    data = load_data(cfg)
    res = distill(cfg, args.out, resume=args.resume, data=data)
    if res.get("interrupted"):
        sys.exit(130)
    out, img = Path(args.out), Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "distilled.png", img / f"distill_{name}.png")
    shutil.copyfile(out / "curve.png", img / f"distill_{name}_curve.png")
    if not args.no_baselines:
        b = baselines(cfg, data)
        for key, images in b.pop("sets").items():
            save_grid(images, None, cfg, img / f"distill_{name}_baseline_{key.replace(' ', '_').replace('-', '')}.png",
                      title=f"baseline: {key} ({cfg.total_images} {DATASET_NAMES[cfg.dataset]} images)")
        res["baselines"] = b
    res.update({"name": name, "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                **git, "machine": machine_info("cpu"),
                "published": PUBLISHED.get((cfg.dataset, cfg.arch, cfg.init, cfg.total_images)),
                "process_cpu_s": round(time.process_time() - cpu0, 1),
                "process_wall_s": round(time.perf_counter() - wall0, 1)})
    path = write_json(res, Path(args.results) / f"{name}.json")
    write_json(res, out / "result.json")
    print(f"wrote {path} ({res['process_cpu_s']:.0f} CPU s in this process)")


if __name__ == "__main__":
    main()
