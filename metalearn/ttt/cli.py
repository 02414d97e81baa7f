"""``metalearn ttt train|eval``: the TTT subcommands (arguments and handlers, kept out of the shared cli.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_ttt_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ttt_command", required=True)
    t = sub.add_parser("train", help="joint training (or object-only) of the ResNet on CIFAR-10 train")
    t.add_argument("--config", required=True, help="a tasks/ttt_*.yaml file")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    t.add_argument("--out", required=True, help="run directory (config.yaml, metrics.jsonl, last.pt)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    t.add_argument("--ssl-task", default=None, metavar="TASK",
                   help="self-supervised task: rotation | contrastive | reconstruction (sets ssl.task)")
    t.add_argument("--device", default=None, help="cpu | cuda[:N] (default: data.device of the config)")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    t.add_argument("--quiet", action="store_true")
    e = sub.add_parser("eval", help="source / TTT / TTT-Online / norm-adapt / Tent on CIFAR-10(-C)")
    e.add_argument("--checkpoint", required=True, help="run directory (uses last.pt) or a .pt file in one")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. eval.images=200 eval.methods=source,ttt")
    e.add_argument("--device", default=None, help="cpu | cuda[:N] (default: data.device of the config)")
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    e.add_argument("--json", default=None, metavar="FILE", help="also write the result object to FILE")
    e.add_argument("--ssl-task", default=None, metavar="TASK",
                   help="the run's self-supervised task (sets ssl.task; must be the one it was trained with)")
    e.add_argument("--quiet", action="store_true")


def _table(res: dict) -> str:
    methods = res["methods"]
    lines = ["set                " + " ".join(f"{m:>11s}" for m in methods)]
    for name, row in res["sets"].items():
        lines.append(f"{name:18s} " + " ".join(f"{row[m]['error']:10.1f}%" for m in methods))
    return "\n".join(lines)


def _ssl_task_override(args: argparse.Namespace) -> list[str]:
    """``--ssl-task NAME`` as a ``--set ssl.task=NAME`` (after the other overrides); a clear error otherwise."""
    if getattr(args, "ssl_task", None) is None:
        return list(args.set)
    from metalearn.config import ConfigError
    from metalearn.ttt.ssl import SSL_TASKS
    if args.ssl_task not in SSL_TASKS:
        raise ConfigError(f"--ssl-task: expected one of {sorted(SSL_TASKS)}, got {args.ssl_task!r}")
    return [*args.set, f"ssl.task={args.ssl_task}"]


def run_ttt_command(args: argparse.Namespace) -> int:
    from metalearn.ttt.config import load_ttt_config
    from metalearn.ttt.run import eval_run, train_run

    if args.ttt_command == "train":
        cfg = load_ttt_config(args.config, _ssl_task_override(args))

        def show(m: dict) -> None:
            print(f"step {m['step']} epoch {m['epoch']:.2f} lr {m['lr']:.4g} loss {m['loss']:.3f} "
                  f"(main {m['main']:.3f}, {cfg.ssl.task} {m.get('ssl', m.get('rotation', 0.0)):.3f}) "
                  f"acc {100 * m['acc']:.1f}% {m['wall_s']:.0f} s", flush=True)
        state = train_run(cfg, args.out, resume=args.resume, device=args.device,
                          progress=None if args.quiet else show)
        print(f"trained to step {state.step} of {state.total_steps} in {state.wall_s:.0f} s; "
              f"checkpoint {Path(args.out) / 'last.pt'}")
        return 0
    res = eval_run(args.checkpoint, _ssl_task_override(args), device=args.device,
                   progress=None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True)))
    print(_table(res))
    from metalearn import distributed
    if args.json and distributed.is_main():   # rank 0 alone writes files
        from metalearn.data.cache import atomic_write
        with atomic_write(Path(args.json), mode="w") as f:
            json.dump(res, f, indent=1)
    return 0
