"""Figure docs/img/cifar10c_grid.png: one CIFAR-10 test image under the 15 corruptions x 5 severities.

    METALEARN_DATA=/path/to/data python benchmarks/cifar10c_grid.py [--index 7] [--seed 0] [--out PNG]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metalearn.data.cifar10 import CLASSES, load_cifar10  # noqa: E402
from metalearn.data.corruptions import CORRUPTIONS, corrupt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=int, default=7, help="test image index (default 7)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="data root (default $METALEARN_DATA)")
    ap.add_argument("--out", default="docs/img/cifar10c_grid.png")
    args = ap.parse_args()
    x, y = load_cifar10(args.data_dir, split="test")
    img = x[args.index: args.index + 1].clone()
    fig, axes = plt.subplots(6, len(CORRUPTIONS), figsize=(1.1 * len(CORRUPTIONS), 1.1 * 6 + 0.4))
    for j, name in enumerate(CORRUPTIONS):
        axes[0, j].imshow(img[0].permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[0, j].set_title(name.replace("_", "\n"), fontsize=7)
        for s in range(1, 6):
            out = corrupt(img, name, s, seed=args.seed)
            axes[s, j].imshow(out[0].permute(1, 2, 0).numpy(), interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for s in range(6):
        axes[s, 0].set_ylabel("clean" if s == 0 else f"sev {s}", fontsize=8)
    fig.suptitle(f"CIFAR-10-C (metalearn.data.corruptions), test image {args.index} ({CLASSES[int(y[args.index])]}), "
                 f"seed {args.seed}", fontsize=9)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
