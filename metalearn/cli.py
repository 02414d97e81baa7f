"""Command line: ``metalearn {demo,train,eval,bench,report}``.

  metalearn demo [--dataset omniglot|digits] [--smoke]   ProtoNet on the bundled Omniglot, offline, ~3 min on CPU
  metalearn data download omniglot|cifar10|cifar10c [--root DIR] [--url URL ...] [--timeout S]
  metalearn data check [--root DIR]
  metalearn data cifar10c [--corruptions NAME ...] [--severities 1..5 ...] [--limit N] [--data-dir D] [--cache-dir C]
  metalearn train --config tasks/X.yaml [--set key=value ...] --out DIR [--resume] [--tensorboard]
  metalearn eval --checkpoint DIR [--ways N --shots K --queries Q --episodes E --split S] [--json]
  metalearn bench SUITE [--out-root runs/bench] [--results results] [--set key=value ...] [--dry-run]
  metalearn report [--results results] [--docs docs]
  metalearn ttt train --config tasks/ttt_cifar10_gn.yaml --out DIR [--set key=value ...] [--resume] [--device D]
  metalearn ttt eval --checkpoint DIR [--set key=value ...] [--device D] [--json FILE]
  metalearn distill --config tasks/distill/mnist_fixed_10.yaml --out DIR [--set key=value ...] [--resume] [--baselines]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from metalearn.config import (ConfigError, TaskConfig, config_from_dict, dump_config, is_ttt_task, load_config,
                              load_yaml)

if TYPE_CHECKING:
    from metalearn.train.trainer import TrainState


def _threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def cmd_demo(args: argparse.Namespace) -> int:
    from metalearn.demo import DEMO_STEPS, format_results, run_demo
    _threads(args.threads)
    steps = args.steps or (20 if args.smoke else DEMO_STEPS[args.dataset])
    episodes = args.episodes or (20 if args.smoke else 600)
    out = args.out or str(Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    what = ("the Omniglot background alphabets (bundled, 28x28)" if args.dataset == "omniglot"
            else "scikit-learn digits 0-4")
    print(f"metalearn demo: Prototypical Network (Conv4) meta-trained on {what} for {steps} steps "
          f"(run directory {out})" + ("  [smoke mode: a few steps, not a result]" if args.smoke else ""),
          flush=True)
    results = run_demo(out, steps=steps, episodes=episodes, seed=args.seed, progress=not args.quiet,
                       dataset=args.dataset)
    print(format_results(results, episodes))
    if args.json:
        import shlex

        from metalearn.bench import git_state, machine_info
        from metalearn.data.cache import atomic_write
        rec = {"kind": "metalearn-demo", "schema": 1, "dataset": args.dataset, "steps": steps, "episodes": episodes,
               "seed": args.seed, "smoke": args.smoke, "threads": torch.get_num_threads(),
               "results": {k: {m: {"accuracy": a, "ci95": c} for m, (a, c) in v.items()}
                           for k, v in results.items() if not k.startswith("_")},
               "time": results["_time"], "command": shlex.join(["metalearn", *args.argv]),
               "git": git_state(), "machine": machine_info("cpu"),
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(args.json), mode="w") as f:
            json.dump(rec, f, indent=1)
    return 0


def _episode_sampler(cfg: TaskConfig, split: str, ways: int, shots: int, queries: int, batch: int, seed: int,
                     keys: tuple[str, str, str] = ("ways", "shots", "queries")):
    """A sampler of ``split``, checked against the episodes asked of it; None when the dataset has no such split.

    Args:
        cfg: The task config.
        split: The split.
        ways: Classes per episode.
        shots: Support images per class.
        queries: Query images per class.
        batch: Tasks per call.
        seed: The sampler's seed.
        keys: The names of the settings ways/shots/queries came from (for messages).
    """
    from metalearn.builders import check_episode_fit, load_split
    from metalearn.episodes import EpisodeSampler
    data = load_split(cfg, split)
    if data is None:
        return None
    check_episode_fit(data, f"the {split} split of {cfg.dataset}", (keys[0], ways), (keys[1], shots),
                      (keys[2], queries))
    return EpisodeSampler(data, ways, shots, queries, batch_size=batch, seed=seed)


@dataclass
class TrainOutcome:
    """What [`train_task`][metalearn.cli.train_task] did.

    Attributes:
        state: The trainer's final state (step, best validation accuracy and step, history, interrupted).
        wall_s: Wall time of training in seconds (data loading excluded).
        validated: Whether validation ran (and so picked ``best.pt``).
        resumed: Whether the run continued from ``last.pt``.
    """
    state: "TrainState"
    wall_s: float
    validated: bool
    resumed: bool

    def message(self) -> str:
        msg = f"trained to step {self.state.step} in {self.wall_s:.0f} s"
        if self.validated and self.state.best_step:
            msg += f"; best validation accuracy {self.state.best_accuracy:.2f}% at step {self.state.best_step}"
        return msg


def train_task(cfg: TaskConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
               tensorboard: bool = False, check_eval: bool = True) -> TrainOutcome:
    """Meta-train the task ``cfg`` into the run directory ``out`` (the work of ``metalearn train``).

    Writes ``out/config.yaml`` (resolved), ``metrics.jsonl``, ``last.pt``, ``best.pt`` (and ``out/tb/`` with
    ``tensorboard=True``). Ctrl-C returns with ``state.interrupted`` set.

    Args:
        cfg: The task config ([`load_config`][metalearn.config.load_config]).
        out: The run directory.
        resume: Continue from ``out/last.pt``, refusing a config that differs in a fixed key; without it an
            existing ``last.pt`` is an error.
        progress: Show a progress bar.
        tensorboard: Also log to TensorBoard in ``out/tb/`` (the ``[tb]`` extra).
        check_eval: Also check the ``eval.split`` before training (the train split, and the val split when
            validation is on, are always checked against the episodes they will give).

    Returns:
        What happened: the trainer's final state, the wall time, whether validation ran and whether it resumed.

    Raises:
        ConfigError: Episodes a split cannot give (naming ``train.ways`` / ``eval.ways`` ...), or a changed
            config on resume.
    """
    from metalearn import distributed
    from metalearn.builders import (build_learner, check_compatible, check_splits, config_differences, load_split,
                                    run_meta)
    from metalearn.data.cache import atomic_write
    from metalearn.episodes import EpisodeSampler
    from metalearn.train.trainer import train

    out = Path(out)
    resolved = out / "config.yaml"

    def check_run_dir() -> None:   # rank 0 alone looks at the run directory in a distributed run
        if resume:
            if not resolved.is_file():
                raise ConfigError(f"--resume: {str(resolved)!r} does not exist; nothing to resume")
            diff = config_differences(load_yaml(resolved), cfg.to_dict())
            if diff:
                raise ConfigError(f"--resume: the run in {str(out)!r} was made with a different config "
                                  f"({', '.join(diff)} differ)")
        elif (out / "last.pt").exists():
            raise FileExistsError(f"{str(out)!r} already holds a run; add --resume or choose another --out")

    distributed.on_main(check_run_dir)
    if cfg.train.batch_size < distributed.world_size():
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: the meta-batch is split across the "
                          f"{distributed.world_size()} processes, so it needs at least {distributed.world_size()} "
                          f"tasks (a multiple of {distributed.world_size()} keeps them equally loaded)")
    loggers = []
    if tensorboard and distributed.is_main():
        from metalearn.train.logging import TensorBoardLogger
        loggers.append(TensorBoardLogger(out / "tb"))  # fails early (before loading data) without the [tb] extra
    try:
        _threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        t = cfg.train
        # every split the run draws episodes from, checked before any training (and before anything is written)
        check_splits(cfg, [(t.split, "train")] + ([("val", "eval")] if t.val_every else [])
                     + ([(cfg.eval.split, "eval")] if check_eval else []))
        sampler = _episode_sampler(cfg, t.split, t.ways, t.shots, t.queries, t.batch_size, t.seed,
                                   ("train.ways", "train.shots", "train.queries"))
        image_shape = tuple(sampler.data.image_shape)
        learner = build_learner(cfg, image_shape).to(sampler.device)
        val_data = load_split(cfg, "val") if t.val_every else None

        def val_sampler():
            e = cfg.eval
            return EpisodeSampler(val_data, e.ways, e.shots, e.queries, batch_size=e.batch_size, seed=e.seed + 1)

        if distributed.is_main():
            out.mkdir(parents=True, exist_ok=True)
            with atomic_write(resolved, mode="w") as f:
                f.write(dump_config(cfg))
        t0 = time.perf_counter()
        state = train(learner, sampler, t, out, val_sampler if val_data is not None else None, resume=resume,
                      meta=run_meta(cfg, image_shape), progress=progress, loggers=loggers,
                      compatible=lambda m: check_compatible(cfg, m, f"{out / 'last.pt'}"))
        wall = time.perf_counter() - t0
    finally:
        for hook in loggers:
            hook.close()
    return TrainOutcome(state, wall, val_data is not None, resume)


def cmd_train(args: argparse.Namespace) -> int:
    from metalearn.data.cache import atomic_write

    cfg = load_config(args.config, args.set)
    out = Path(args.out)
    outcome = train_task(cfg, out, resume=args.resume, progress=not args.quiet, tensorboard=args.tensorboard,
                         check_eval=not args.no_eval)
    print(outcome.message(), flush=True)
    if outcome.state.interrupted:
        print(f"interrupted: continue with  metalearn train --config {args.config} --out {out} --resume")
        return 130
    if not args.no_eval:
        from metalearn import distributed
        res = evaluate_run(out, progress=not args.quiet)
        res["train_wall_s"] = outcome.wall_s
        if distributed.is_main():
            with atomic_write(out / "eval.json", mode="w") as f:
                json.dump(res, f, indent=1)
        print(_format_eval(res))
    return 0


def evaluate_run(path: str | Path, ways: int | None = None, shots: int | None = None,
                 queries: int | None = None, episodes: int | None = None, split: str | None = None,
                 progress: bool = False) -> dict:
    """Evaluate a run directory's ``best.pt`` (or a ``.pt`` file in a run directory) on test episodes, as
    ``metalearn eval --checkpoint`` does.

    Args:
        path: A run directory or a ``.pt`` file in one.
        ways: N of the test episodes; None (like every argument left at None) takes the ``eval`` section of the
            run's ``config.yaml``.
        shots: K of the test episodes.
        queries: Q of the test episodes.
        episodes: How many test episodes.
        split: ``train``, ``val`` or ``test``.
        progress: Show a progress bar.

    Returns:
        The ``metalearn eval --json`` object: ``accuracy``, ``ci95``, ``episodes``, ``ways``, ``shots``,
        ``queries``, ``split``, ``dataset``, ``learner``, ``checkpoint``, ``step``, ``seed``, ``eval_wall_s``, and
        ``reference`` (the published accuracy when the episodes are the task's own).

    Raises:
        FileNotFoundError: No such run directory or checkpoint.
        ConfigError: A bad ``config.yaml``, a test-time-training run, or episodes the split cannot give.
        ValueError: A checkpoint made with another config or model than ``config.yaml`` describes.
    """
    from metalearn import distributed
    from metalearn.builders import build_learner, check_compatible
    from metalearn.train.checkpoint import load_checkpoint, locate_checkpoint
    from metalearn.train.evaluator import evaluate

    def read_run() -> tuple[Path, TaskConfig, dict]:   # rank 0 alone reads the run directory
        ck_path = locate_checkpoint(path, "best.pt")
        run_dir = ck_path.parent
        raw = load_yaml(run_dir / "config.yaml")
        if is_ttt_task(raw):
            raise ConfigError(f"--checkpoint: {str(run_dir)!r} is a test-time-training run (dataset "
                              f"{raw.get('dataset')!r}); evaluate it with `metalearn ttt eval --checkpoint {path}`")
        try:
            cfg = config_from_dict(raw)
        except ConfigError as err:
            raise ConfigError(f"{run_dir / 'config.yaml'}: {err}") from None
        return ck_path, cfg, load_checkpoint(ck_path)

    ck_path, cfg, ck = distributed.on_main(read_run)
    check_compatible(cfg, ck.get("meta", {}), str(ck_path))
    e = cfg.eval
    given = (ways, shots, queries)
    ways = e.ways if ways is None else ways
    shots = e.shots if shots is None else shots
    queries = e.queries if queries is None else queries
    episodes = e.episodes if episodes is None else episodes
    split = e.split if split is None else split
    keys = tuple(f"--{k}" if v is not None else f"eval.{k}"
                 for k, v in (("ways", given[0]), ("shots", given[1]), ("queries", given[2])))
    sampler = _episode_sampler(cfg, split, ways, shots, queries, e.batch_size, e.seed, keys)
    if sampler is None:
        raise ConfigError(f"split: dataset {cfg.dataset!r} has no {split!r} split (--split or eval.split)")
    image_shape = tuple(ck["meta"]["image_shape"])
    if tuple(sampler.data.image_shape) != image_shape:
        raise ValueError(f"{ck_path} was trained on images {image_shape}, the {split} split has "
                         f"{tuple(sampler.data.image_shape)}")
    learner = build_learner(cfg, image_shape).to(sampler.device)
    try:
        learner.load_state_dict(ck["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {str(ck_path)!r} does not fit the configured model: {err}") from None
    t0 = time.perf_counter()
    res = evaluate(learner, sampler, episodes, progress=progress)
    out = res.summary()
    out.update({"split": split, "dataset": cfg.dataset, "learner": cfg.learner, "checkpoint": str(ck_path),
                "step": ck.get("step"), "seed": e.seed, "eval_wall_s": time.perf_counter() - t0,
                "processes": distributed.world_size(),
                "reference": cfg.reference.accuracy if (ways, shots, queries, split) == (
                    e.ways, e.shots, e.queries, e.split) else None})
    return out


def evaluate_pretrained(name: str, ways: int | None = None, shots: int | None = None, queries: int | None = None,
                        episodes: int | None = None, split: str | None = None, progress: bool = False,
                        data_root: str | None = None) -> dict:
    """Evaluate a model-zoo model ([`metalearn.pretrained`][metalearn.zoo.pretrained]) on its dataset's test episodes.

    As ``metalearn eval --pretrained NAME`` does; arguments left at None come from the row it reproduces.

    Args:
        name: The model's name in the zoo.
        ways: Classes per episode.
        shots: Support images per class.
        queries: Query images per class.
        episodes: The number of episodes.
        split: The split the episodes come from.
        progress: Show a progress bar.
        data_root: The data root (default: the model's config's).

    Returns:
        The ``metalearn eval --json`` object.

    Raises:
        ConfigError: The dataset has no such split.
    """
    import dataclasses

    from metalearn.train.evaluator import evaluate
    from metalearn.config import config_from_dict
    from metalearn.zoo import lookup, pretrained
    learner = pretrained(name)          # refuses unknown names and altered weights
    entry, r = lookup(name)             # the row's own setting is the default
    cfg = config_from_dict(entry["config"])
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=data_root))
    ways, shots = ways or r["ways"], shots or r["shots"]
    queries, episodes, split = queries or r["queries"], episodes or r["episodes"], split or r["split"]
    sampler = _episode_sampler(cfg, split, ways, shots, queries, cfg.eval.batch_size, r["seed"])
    if sampler is None:
        raise ConfigError(f"split: dataset {cfg.dataset!r} has no {split!r} split")
    learner = learner.to(sampler.device)
    t0 = time.perf_counter()
    res = evaluate(learner, sampler, episodes, progress=progress, precision=cfg.train.precision).summary()
    same = (ways, shots, queries, split) == (r["ways"], r["shots"], r["queries"], r["split"])
    res.update({"split": split, "dataset": cfg.dataset, "learner": cfg.learner, "checkpoint": f"pretrained:{name}",
                "step": entry.get("step"), "seed": r["seed"], "eval_wall_s": time.perf_counter() - t0,
                "reference": r["published"] if same else None,
                "recorded": {"accuracy": r["accuracy"], "ci95": r["ci95"]} if same and episodes == r["episodes"]
                else None})
    return res


def _format_eval(res: dict) -> str:
    ref = f" (published {res['reference']})" if res.get("reference") is not None else ""
    return (f"{res['dataset']} {res['ways']}-way {res['shots']}-shot {res['split']}: "
            f"{res['accuracy']:.2f} ± {res['ci95']:.2f}% over {res['episodes']} episodes{ref}")


def cmd_eval(args: argparse.Namespace) -> int:
    _threads(args.threads)
    if (args.checkpoint is None) == (args.pretrained is None):
        raise ConfigError("eval: expected exactly one of --checkpoint DIR or --pretrained NAME")
    if args.pretrained is not None:
        res = evaluate_pretrained(args.pretrained, args.ways, args.shots, args.queries, args.episodes, args.split,
                                  progress=not args.json, data_root=args.data_root)
        print(json.dumps(res) if args.json else _format_eval(res))
        return 0
    res = evaluate_run(Path(args.checkpoint), args.ways, args.shots, args.queries, args.episodes, args.split,
                       progress=not args.json)
    print(json.dumps(res) if args.json else _format_eval(res))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import shlex

    from metalearn.bench import run_suite
    return run_suite(args.suite, out_root=args.out_root, results=args.results, overrides=args.set,
                     dry_run=args.dry_run, progress=not args.quiet, tensorboard=args.tensorboard,
                     model_from=args.model_from,
                     command=shlex.join(["metalearn", *args.argv]))


def cmd_data(args: argparse.Namespace) -> int:
    """metalearn data cifar10c: generate CIFAR-10-C into the cache (skips entries already built)."""
    from metalearn.data.cifar10c import build_cifar10c
    _threads(args.threads)
    t0 = time.perf_counter()
    paths = build_cifar10c(args.data_dir, args.cache_dir, severities=args.severities, corruptions=args.corruptions,
                           seed=args.seed, limit=args.limit, device=args.device, progress=not args.quiet)
    print(f"CIFAR-10-C: {len(paths)} entries ready under {paths[0].parent} ({time.perf_counter() - t0:.1f}s)")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """metalearn data download NAME: the official files, pinned by sha256, resumable, placed atomically."""
    from metalearn.data.download import DownloadError, download_dataset
    try:
        report = download_dataset(args.name, args.root, args.url, timeout=args.timeout, retries=args.retries,
                                  force=args.force, keep_archive=args.keep_archive, progress=not args.quiet)
    except DownloadError as err:
        print(f"metalearn data download: error: {err}", file=sys.stderr)
        return 1
    print(report.message())
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """metalearn data check: what is under the data root, what is missing, and do the checksums match."""
    from metalearn.data.check import check_data
    result = check_data(args.root, verify=not args.no_verify)
    print(result.format())
    return 0 if result.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from metalearn.report import write_report
    summary = write_report(args.results, args.docs, plots=not args.no_plots, skip_invalid=args.skip_invalid)
    for note in summary.skipped:
        print(f"metalearn report: warning: skipped {note}", file=sys.stderr)
    print(summary.message())
    return 0


def cmd_ttt(args: argparse.Namespace) -> int:
    from metalearn.ttt.cli import run_ttt_command
    _threads(args.threads)
    return run_ttt_command(args)


def cmd_distill(args: argparse.Namespace) -> int:
    from metalearn.distill.cli import run_distill_command
    return run_distill_command(args)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metalearn", description="Meta-learning and test-time adaptation.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="ProtoNet on the bundled Omniglot vs a 1-NN pixel baseline (offline, ~3 min)")
    d.add_argument("--dataset", choices=["omniglot", "digits"], default="omniglot",
                   help="omniglot (bundled, the default) or scikit-learn's digits")
    d.add_argument("--steps", type=_positive, default=None, help="meta-training steps (default 800; digits 600)")
    d.add_argument("--episodes", type=_positive, default=None, help="test episodes per setting (default 600)")
    d.add_argument("--smoke", action="store_true", help="a few steps and episodes: checks the install, not a result")
    d.add_argument("--json", metavar="FILE", default=None,
                   help="also write the results (with the command, commit and machine) to FILE")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default=None, help="run directory (default runs/demo-<time>)")
    d.add_argument("--threads", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("train", help="meta-train from a task YAML")
    t.add_argument("--config", required=True)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    t.add_argument("--out", required=True, help="run directory (config.yaml, metrics.jsonl, last.pt, best.pt)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    t.add_argument("--no-eval", action="store_true", help="skip the final test evaluation")
    t.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to DIR/tb (needs the [tb] extra)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on test episodes")
    e.add_argument("--checkpoint", help="run directory (uses best.pt) or a .pt file")
    e.add_argument("--pretrained", metavar="NAME", help="a model-zoo model (metalearn.pretrained() lists them)")
    e.add_argument("--data-root", default=None, help="data root for --pretrained (default $METALEARN_DATA)")
    e.add_argument("--ways", type=_positive)
    e.add_argument("--shots", type=_positive)
    e.add_argument("--queries", type=_positive)
    e.add_argument("--episodes", type=_positive)
    e.add_argument("--split", choices=["train", "val", "test"])
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(fn=cmd_eval)

    b = sub.add_parser("bench", help="train and evaluate a suite of task files, one result JSON per run")
    b.add_argument("suite", metavar="SUITE",
                   help="a suite YAML (list of task files), a quoted glob such as 'tasks/protonet_*.yaml', "
                        "or one task file")
    b.add_argument("--out-root", default="runs/bench", help="parent of the run directories (default runs/bench)")
    b.add_argument("--results", default="results", help="where the result JSON files go (default results/)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every task (after the suite's own overrides)")
    b.add_argument("--dry-run", action="store_true", help="print what would run, skip or resume; run nothing")
    b.add_argument("--model-from", metavar="RUN_DIR", default=None,
                   help="evaluate the model of this finished run directory for every task instead of training "
                        "(its config may differ only in eval: one model serving several rows)")
    b.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs (needs the [tb] extra)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(fn=cmd_bench)

    da = sub.add_parser("data", help="data sets: download, check, cifar10c (generate CIFAR-10-C into the cache)")
    da_sub = da.add_subparsers(dest="dataset", required=True)
    dc = da_sub.add_parser("cifar10c", help="the 15 corruptions x severities of the CIFAR-10 test set")
    from metalearn.data.corruptions import CORRUPTIONS
    dc.add_argument("--corruptions", nargs="+", choices=CORRUPTIONS, default=list(CORRUPTIONS), metavar="NAME",
                    help="corruption names (default all 15): " + ", ".join(CORRUPTIONS))
    dc.add_argument("--severities", nargs="+", type=int, choices=range(1, 6), default=[1, 2, 3, 4, 5],
                    metavar="S", help="severity levels 1..5 (default all)")
    dc.add_argument("--data-dir", default=None, help="data root holding cifar10/ (default $METALEARN_DATA)")
    dc.add_argument("--cache-dir", default=None, help="cache directory (default $METALEARN_CACHE)")
    dc.add_argument("--seed", type=int, default=0)
    dc.add_argument("--limit", type=_positive, default=None, help="only the first N test images (smoke runs)")
    dc.add_argument("--device", default="cpu", help="where the corruptions run (output is device-independent)")
    dc.add_argument("--threads", type=int, default=0)
    dc.add_argument("--quiet", action="store_true", help="no progress bar")
    dc.set_defaults(fn=cmd_data)
    from metalearn.data.download import DATASETS
    dd = da_sub.add_parser("download", help="download the official files of a data set (sha256-pinned, resumable)",
                           description="; ".join(f"{k}: {v.description}" for k, v in DATASETS.items()))
    dd.add_argument("name", choices=sorted(DATASETS), help="the data set")
    dd.add_argument("--root", "--data-dir", dest="root", default=None,
                    help="data root to place the files under (default $METALEARN_DATA)")
    dd.add_argument("--url", action="extend", nargs="+", default=[], metavar="URL",
                    help="mirror(s) tried before the official URL: a folder URL ending in '/' (file names appended) "
                         "or, for a one-file data set, the file's URL")
    dd.add_argument("--timeout", type=float, default=60.0, metavar="S",
                    help="seconds without an answer or data before an attempt is abandoned (default 60)")
    dd.add_argument("--retries", type=int, default=3, metavar="N",
                    help="resumed attempts per URL after a dropped connection or timeout (default 3)")
    dd.add_argument("--force", action="store_true", help="replace files already present")
    dd.add_argument("--keep-archive", action="store_true", help="cifar10c: keep CIFAR-10-C.tar after extracting it")
    dd.add_argument("--quiet", action="store_true", help="no progress bar")
    dd.set_defaults(fn=cmd_data_download)
    dk = da_sub.add_parser("check", help="list the data sets under the data root, what is missing, verify checksums")
    dk.add_argument("--root", "--data-dir", dest="root", default=None, help="data root (default $METALEARN_DATA)")
    dk.add_argument("--no-verify", action="store_true", help="report presence only (do not hash the files)")
    dk.set_defaults(fn=cmd_data_check)

    r = sub.add_parser("report", help="generate the results tables and plots from the result JSON files")
    r.add_argument("--results", default="results", help="the result JSON files (default results/)")
    r.add_argument("--docs", default="docs", help="docs folder: writes DOCS/results.md and DOCS/img/ (default docs/)")
    r.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    r.add_argument("--skip-invalid", action="store_true",
                   help="leave out result files of another schema version instead of stopping with an error")
    r.set_defaults(fn=cmd_report)

    tt = sub.add_parser("ttt", help="Test-Time Training / Tent on CIFAR-10(-C): train | eval")
    from metalearn.ttt.cli import add_ttt_arguments
    add_ttt_arguments(tt)
    tt.set_defaults(fn=cmd_ttt)

    ds = sub.add_parser("distill", help="dataset distillation: learn a few synthetic training images (MNIST, LeNet)")
    from metalearn.distill.cli import add_distill_arguments
    add_distill_arguments(ds)
    ds.set_defaults(fn=cmd_distill)
    return p


def main(argv: list[str] | None = None) -> int:
    from metalearn.extras import MissingExtraError

    from metalearn.engine import tune_allocator

    from metalearn.data.cache import progress_bars

    argv = sys.argv[1:] if argv is None else list(argv)
    tune_allocator()   # keep activations' memory on the heap (METALEARN_MALLOC=default turns it off)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        # --quiet also silences the data-decoding bars of the loaders (_distributed: under torchrun)
        with _distributed(args), progress_bars(not getattr(args, "quiet", False)), _short_warnings():
            return args.fn(args)
    except (ConfigError, ValueError, FloatingPointError, OSError, MissingExtraError) as err:
        # user errors (bad settings, files, data; a diverged run; a full disk): one message, exit 2
        print(f"metalearn {args.command}: error{_rank_note()}: {_error_text(err)}", file=sys.stderr)
        return 2


#: the commands that run under torchrun (the others refuse WORLD_SIZE > 1)
DISTRIBUTED_COMMANDS = ("train", "eval", "bench", "ttt")


def _rank_note() -> str:
    """`` (rank R of W)`` when torchrun started this process as one of several, else ``""``."""
    import os

    from metalearn.distributed import env_world_size
    try:
        w = env_world_size()
    except ValueError:
        return ""
    return f" (rank {os.environ.get('RANK', '?')} of {w})" if w > 1 else ""


@contextlib.contextmanager
def _distributed(args: argparse.Namespace):
    """Under torchrun (WORLD_SIZE > 1): join the process group, let rank 0 alone print (the others are quiet),
    name the rank of a failure, and leave the group at the end.  Nothing happens in a single process."""
    from metalearn import distributed
    if distributed.env_world_size() <= 1:
        yield
        return
    if args.command not in DISTRIBUTED_COMMANDS:
        raise ConfigError(f"WORLD_SIZE={distributed.env_world_size()}: `metalearn {args.command}` runs in one "
                          f"process; launch it without torchrun (commands that scale out: "
                          f"{', '.join(DISTRIBUTED_COMMANDS)})")
    owned = distributed.init_from_env()   # False: the caller's own process group, left to it at the end
    main_rank = distributed.is_main()
    if not main_rank and hasattr(args, "quiet"):
        args.quiet = True
    try:
        with contextlib.ExitStack() as stack:
            if not main_rank:   # one copy of every result line: rank 0's
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            yield
        if owned:   # every process finishes before any leaves the group: a process tearing gloo down while a
            import torch.distributed as dist   # peer still ran its last collective could abort the peer
            dist.barrier()
    except Exception as err:
        if _lost_peer(err):
            print(f"metalearn {args.command}: error{_rank_note()}: lost contact with another process of the job "
                  f"(it failed or was stopped; its message names its rank): {str(err).splitlines()[0][:300]}",
                  file=sys.stderr)
            if owned:
                distributed.shutdown()
            raise SystemExit(1) from None
        if not isinstance(err, (ConfigError, ValueError, FloatingPointError, OSError)):
            print(f"metalearn {args.command}: rank {distributed.rank()} of {distributed.world_size()} failed: "
                  f"{type(err).__name__}: {err}", file=sys.stderr)
        raise
    finally:
        if owned:
            distributed.shutdown()


def _lost_peer(err: BaseException) -> bool:
    """Whether a collective failed because another process of the job went away (gloo / NCCL errors)."""
    import torch.distributed as dist
    if isinstance(err, getattr(dist, "DistError", ())) or isinstance(err, getattr(dist, "DistBackendError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(k in text for k in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "[gloo]", "gloo/transport", "NCCL"))


def _error_text(err: BaseException) -> str:
    """The message of a user error; an operating-system error of any write reads as plain words."""
    import errno as _errno

    from metalearn.data.cache import DiskFullError
    if isinstance(err, OSError) and not isinstance(err, DiskFullError) and type(err).__str__ is OSError.__str__ \
            and err.strerror:
        if err.errno == _errno.ENOSPC:
            return "no space left on device" + (f" while writing {err.filename}" if err.filename else "")
        return err.strerror + (f": {err.filename}" if err.filename else "")
    return str(err)


@contextlib.contextmanager
def _short_warnings():
    """metalearn's own notices (a damaged cache entry being rebuilt) as one line each, without a source line."""
    from metalearn.data.cache import CacheRebuildWarning
    old = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if issubclass(category, CacheRebuildWarning):
            return f"metalearn: warning: {message}\n"
        return old(message, category, filename, lineno, line)

    warnings.formatwarning = fmt
    try:
        yield
    finally:
        warnings.formatwarning = old


if __name__ == "__main__":
    sys.exit(main())
