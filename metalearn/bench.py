"""Benchmark runner: ``metalearn bench SUITE`` trains and evaluates a set of task files and writes one result
JSON per run into a results directory; ``metalearn report`` (`metalearn.report`) turns those files into
the tables and plots of docs/results.md.

A SUITE is one of

* a suite file: a YAML list of task files, each either a path or a mapping ``{task: PATH, set: OVERRIDES}``,
  or a mapping ``{tasks: [...], set: OVERRIDES}`` whose ``set`` applies to every entry. ``OVERRIDES`` is a
  list of ``key=value`` strings (as ``--set``) or a mapping ``{dotted.key: value}``. Relative paths (and
  globs) are looked up next to the suite file first, then in the current directory;
* a glob such as ``'tasks/protonet_*.yaml'`` (quote it so the shell leaves it alone);
* a single task file.

Overrides apply in the order suite ``set``, entry ``set``, command-line ``--set`` (the last one wins).

Each run trains in ``OUT_ROOT/<name>-<config hash>-<commit>`` and its result goes to
``RESULTS/<name>-<config hash>-<commit>.json`` (written atomically, schema `SCHEMA_VERSION`). A run whose
result already exists for the same config hash *and* git commit is skipped. A run directory that holds a
``last.pt`` but no result (Ctrl-C, a crash) is continued with ``--resume`` semantics.
"""
from __future__ import annotations

import datetime as _dt
import glob
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from metalearn.config import ConfigError, TaskConfig, YAMLLoader, load_config, load_yaml

SCHEMA_VERSION = 1
RESULT_KIND = "metalearn-bench-result"
CURVE_POINTS = 400          # training-curve points kept in a result JSON (the curve is thinned beyond that)
_GLOB_CHARS = re.compile(r"[*?\[]")


# ----------------------------------------------------------------------------------------------- suites

@dataclass(frozen=True)
class SuiteEntry:
    """One task of a suite: its file, the suite's overrides for it, and where it was named (for messages)."""
    task: Path
    overrides: tuple[str, ...] = ()
    where: str = ""


def _yaml_with_nodes(path: Path) -> tuple[object, yaml.Node | None]:
    """Parse ``path``; return (data, node tree) so entries can be reported with their line numbers."""
    loader = YAMLLoader(path.read_text())   # reads 1e-3 as a float, like every config file
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()
    return data, node


def _overrides(value: object, where: str) -> tuple[str, ...]:
    """A suite's ``set:`` value -> ``("key=value", ...)``."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: set: expected dotted keys such as train.steps, got {k!r}")
            out.append(f"{k}={json.dumps(v)}")  # JSON is YAML, so parse_override reads the value back exactly
        return tuple(out)
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: set: expected a list of key=value strings or a mapping of keys to values, "
                      f"got {value!r}")


def _episodic(paths: list[Path]) -> list[Path]:
    """Drop test-time-training task files from a glob's hits (they run under `metalearn ttt`, with their own
    schema); a glob such as 'tasks/*.yaml' then means every episodic task.  A malformed file is kept, so that
    loading it reports the YAML error with its line."""
    from metalearn.config import is_ttt_task
    keep = []
    for p in paths:
        try:
            data = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError):
            data = None
        if not is_ttt_task(data):
            keep.append(p)
    return keep


def _find(name: str, base: Path, where: str) -> list[Path]:
    """Resolve a path or glob from a suite file: next to the suite first, then the current directory."""
    p = Path(name).expanduser()
    # normpath: tasks/suites/../x.yaml -> tasks/x.yaml, the path users see in messages and result files
    candidates = [p] if p.is_absolute() else [Path(os.path.normpath(base / p)), p]
    if _GLOB_CHARS.search(name):
        for c in candidates:
            hits = _episodic(sorted(Path(h) for h in glob.glob(str(c)) if Path(h).is_file()))
            if hits:
                return hits
        raise ConfigError(f"{where}: the pattern {name!r} matches no task file (looked in "
                          f"{' and '.join(repr(str(c)) for c in dict.fromkeys(candidates))})")
    for c in candidates:
        if c.is_file():
            return [c]
    raise ConfigError(f"{where}: task file {name!r} does not exist (looked for "
                      f"{' and '.join(repr(str(c)) for c in dict.fromkeys(candidates))})")


def load_suite(spec: str | os.PathLike) -> list[SuiteEntry]:
    """Expand a SUITE argument (suite file, glob, or one task file) into its entries, in order."""
    spec = str(spec)
    path = Path(spec)
    if not path.is_file():
        if _GLOB_CHARS.search(spec):
            hits = sorted(Path(h) for h in glob.glob(spec) if Path(h).is_file())
            if not hits:
                raise ConfigError(f"SUITE: the pattern {spec!r} matches no file")
            hits = _episodic(hits)
            if not hits:
                raise ConfigError(f"SUITE: the pattern {spec!r} matches only test-time-training tasks; run "
                                  "those with `metalearn ttt` (docs/ttt.md)")
            return [SuiteEntry(h, (), f"{spec} -> {h}") for h in hits]
        raise ConfigError(f"SUITE: {spec!r} is neither a file nor a glob that matches task files")
    data, node = _yaml_with_nodes(path)
    if isinstance(data, dict) and "dataset" in data:       # a single task file
        return [SuiteEntry(path, (), str(path))]
    common: tuple[str, ...] = ()
    items_node = node
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"tasks", "set"})
        if unknown or "tasks" not in data:
            raise ConfigError(f"{path}: a suite is a list of task files or a mapping with 'tasks' (and optional "
                              f"'set'); got the keys {sorted(data)} (a task file needs 'dataset')")
        common = _overrides(data.get("set"), f"{path}: set")
        items_node = next(v for k, v in node.value if k.value == "tasks")
        data = data["tasks"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty list of task files, got {data!r}")
    entries = []
    for item, item_node in zip(data, items_node.value):
        where = f"{path}:{item_node.start_mark.line + 1}"
        if isinstance(item, str):
            name, own = item, ()
        elif isinstance(item, dict):
            unknown = sorted(set(item) - {"task", "set"})
            if unknown or not isinstance(item.get("task"), str):
                raise ConfigError(f"{where}: a suite entry is a path or a mapping with 'task' (a path) and "
                                  f"optional 'set'; got {item!r}")
            name, own = item["task"], _overrides(item.get("set"), where)
        else:
            raise ConfigError(f"{where}: a suite entry is a path or a mapping with 'task'; got {item!r}")
        for task in _find(name, path.parent, where):
            entries.append(SuiteEntry(task, common + own, where))
    return entries


# ------------------------------------------------------------------------------------------- provenance

_REPO = Path(__file__).resolve().parent.parent


def git_state(repo: str | os.PathLike = _REPO) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding this package. ``dirty``
    means tracked files differ from the commit (untracked files are not counted)."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info(device: str = "cpu") -> dict:
    """Where a run ran, without the host name: platform, Python, torch, CPUs, threads, GPU model (or None)."""
    import torch
    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    from metalearn import distributed
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "processes": distributed.world_size()}


def _max_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


# ------------------------------------------------------------------------------------------------- plans

#: what a result's ``name`` and ``config_hash`` may be (both are used in file names)
RESULT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
CONFIG_HASH = re.compile(r"[0-9a-f]{16}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "task"


@dataclass
class PlannedRun:
    entry: SuiteEntry
    cfg: TaskConfig
    overrides: tuple[str, ...]
    name: str
    config_hash: str
    run_dir: Path
    result_path: Path
    status: str = "new"                 # new | resume | done | duplicate
    existing: Path | None = None        # the result file that makes it "done"
    resume_step: int | None = None

    def train_command(self) -> str:
        sets = [a for o in self.overrides for a in ("--set", o)]
        return shlex.join(["metalearn", "train", "--config", str(self.entry.task), "--out", str(self.run_dir),
                           *sets])


def result_index(results_dir: Path) -> tuple[dict[tuple[str, str], Path], list[str]]:
    """``{(config_hash, commit): file}`` over the valid result files, and one note per file left out."""
    index, notes = {}, []
    if not results_dir.is_dir():
        return index, notes
    for p in sorted(results_dir.glob("*.json")):
        try:
            res = read_result(p)
        except ConfigError as e:
            notes.append(str(e))
            continue
        commit = res["git"].get("commit")
        if commit:
            index.setdefault((res["config_hash"], commit), p)
    return index, notes


def plan_suite(entries: list[SuiteEntry], overrides: list[str], out_root: Path, results_dir: Path,
               commit: str | None) -> tuple[list[PlannedRun], list[str]]:
    """Load every task config (so a bad one stops the suite before anything trains) and decide what each run does.

    A run is ``done`` (a result exists for this hash and commit), ``duplicate`` (same config earlier in the
    suite), ``resume`` (an unfinished run directory) or ``new``.

    Args:
        entries: The suite's tasks.
        overrides: ``key=value`` overrides for every task (after the suite's own).
        out_root: The folder of the run directories.
        results_dir: The folder of the result files.
        commit: The current git commit (None: no result counts as done).

    Returns:
        The planned runs, and one note per result file left out.

    Raises:
        ConfigError: A task config does not load (the message names the suite entry).
    """
    index, notes = result_index(results_dir)
    tag = commit[:8] if commit else "nocommit"
    plans, seen = [], {}
    for entry in entries:
        all_over = tuple(entry.overrides) + tuple(overrides)
        try:
            cfg = load_config(entry.task, list(all_over))
        except ConfigError as e:
            msg = str(e) if str(entry.task) in str(e) else f"{entry.task}: {e}"
            if entry.where != str(entry.task):
                msg += f" (suite entry {entry.where})"
            raise ConfigError(msg) from None
        h = cfg.hash()
        name = _safe(cfg.name or entry.task.stem)
        stem = f"{name}-{h}-{tag}"
        plan = PlannedRun(entry, cfg, all_over, name, h, out_root / stem, results_dir / f"{stem}.json")
        if h in seen:
            plan.status = "duplicate"
        elif commit and (h, commit) in index:
            plan.status, plan.existing = "done", index[(h, commit)]
        elif (plan.run_dir / "last.pt").exists() and (plan.run_dir / "config.yaml").is_file():
            plan.status = "resume"
            try:
                from metalearn.train.checkpoint import load_checkpoint
                plan.resume_step = int(load_checkpoint(plan.run_dir / "last.pt")["step"])
            except Exception:  # noqa: BLE001 - only for the message; train() reports a damaged file properly
                plan.resume_step = None
        seen.setdefault(h, plan)
        plans.append(plan)
    return plans, notes


# ------------------------------------------------------------------------------------------------ results

def read_result(path: str | os.PathLike) -> dict:
    """Load and check one result JSON; ConfigError naming the file for anything that is not a valid result of
    this schema version (older or newer schema, missing keys, not JSON)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or data.get("kind") != RESULT_KIND or "schema_version" not in data:
        raise ConfigError(f"{path}: not a metalearn bench result (no kind={RESULT_KIND!r} with a "
                          "schema_version)")
    version = data["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"{path}: schema_version: expected an integer, got {version!r}")
    if version < SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version {version} is older than the {SCHEMA_VERSION} this metalearn "
                          "reads; re-run its suite with `metalearn bench` to regenerate it, or move the file out "
                          "of the results directory")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version {version} was written by a newer metalearn (this one reads "
                          f"{SCHEMA_VERSION}); update metalearn to read it")
    required = {"name": str, "config": dict, "config_hash": str, "dataset": str, "learner": str, "ways": int,
                "shots": int, "episodes": int, "accuracy": (int, float), "ci95": (int, float), "git": dict,
                "machine": dict, "reference": dict, "train": dict, "command": str, "created": str}
    for key, tp in required.items():
        if key not in data:
            raise ConfigError(f"{path}: schema_version {version} result without the key {key!r}")
        if not isinstance(data[key], tp) or isinstance(data[key], bool):
            raise ConfigError(f"{path}: {key}: expected {getattr(tp, '__name__', 'a number')}, got {data[key]!r}")
    # both become parts of file names (plots, run directories): nothing but the characters bench writes
    if not RESULT_NAME.fullmatch(data["name"]):
        raise ConfigError(f"{path}: name: expected letters, digits, '_', '-' and '.' (at most 200, not starting "
                          f"with '.'), got {data['name']!r}")
    if not CONFIG_HASH.fullmatch(data["config_hash"]):
        raise ConfigError(f"{path}: config_hash: expected 16 lowercase hex digits, got {data['config_hash']!r}")
    return data


def _round(x: float, digits: int = 5) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def read_curve(run_dir: Path, points: int = CURVE_POINTS) -> dict:
    """The compact training curve of a run directory's metrics.jsonl.

    Columns ``step``, ``loss``, ``train_accuracy`` (thinned to at most ``points`` rows, the last row always
    kept) and ``val_step``, ``val_accuracy`` (every validation).

    Args:
        run_dir: The run directory.
        points: The most training rows kept.
    """
    train, val = [], []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or "step" not in rec:
                continue
            if "val_accuracy" in rec:
                val.append(rec)
            elif "loss" in rec:
                train.append(rec)
    if len(train) > points:
        stride = math.ceil(len(train) / points)
        train = train[::stride] + ([train[-1]] if (len(train) - 1) % stride else [])
    return {"step": [int(r["step"]) for r in train], "loss": [_round(r["loss"]) for r in train],
            "train_accuracy": [_round(r.get("train_accuracy")) for r in train],
            "val_step": [int(r["step"]) for r in val], "val_accuracy": [_round(r["val_accuracy"]) for r in val]}


def _wall_file(run_dir: Path) -> Path:
    return run_dir / "bench_wall.json"


def _read_wall(run_dir: Path) -> dict:
    """The accumulated training wall time of a run (nothing written)."""
    rec = {"train_wall_s": 0.0, "sessions": 0}
    try:
        rec.update(json.loads(_wall_file(run_dir).read_text()))
    except (json.JSONDecodeError, OSError):
        pass
    return rec


def _add_wall(run_dir: Path, seconds: float) -> dict:
    """Accumulate training wall time over the sessions of one run (Ctrl-C + resume)."""
    from metalearn.data.cache import atomic_write
    p = _wall_file(run_dir)
    rec = {"train_wall_s": 0.0, "sessions": 0}
    if p.is_file():
        try:
            rec.update(json.loads(p.read_text()))
        except (json.JSONDecodeError, OSError):
            pass
    rec["train_wall_s"] = float(rec["train_wall_s"]) + seconds
    rec["sessions"] = int(rec["sessions"]) + 1
    with atomic_write(p, mode="w") as f:
        json.dump(rec, f)
    return rec


def build_result(plan: PlannedRun, ev: dict, outcome, wall: dict, peak: dict, git: dict, machine: dict,
                 command: str, suite: str) -> dict:
    """The result JSON of one finished run (schema `SCHEMA_VERSION`; docs/bench.md lists the keys)."""
    cfg, state = plan.cfg, outcome.state
    best_val = state.best_accuracy if outcome.validated and math.isfinite(state.best_accuracy) else None
    return {
        "schema_version": SCHEMA_VERSION, "kind": RESULT_KIND,
        "name": plan.name, "task": str(plan.entry.task), "suite": suite,
        "config": cfg.to_dict(), "config_hash": plan.config_hash, "overrides": list(plan.overrides),
        "seed": cfg.train.seed, "eval_seed": cfg.eval.seed,
        "dataset": cfg.dataset, "learner": cfg.learner, "split": ev["split"],
        "ways": ev["ways"], "shots": ev["shots"], "queries": ev["queries"], "episodes": ev["episodes"],
        "accuracy": ev["accuracy"], "ci95": ev["ci95"],
        "reference": {"accuracy": cfg.reference.accuracy, "ci95": cfg.reference.ci95,
                      "source": cfg.reference.source},
        "train": {"steps": state.step, "best_step": state.best_step or None, "best_val_accuracy": best_val,
                  "wall_s": wall["train_wall_s"], "sessions": wall["sessions"]},
        "eval_wall_s": ev["eval_wall_s"],
        "peak_memory": peak,
        "git": git, "machine": machine, "device": peak["device"],
        "command": command, "train_command": plan.train_command(), "run_dir": str(plan.run_dir),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "curve": read_curve(plan.run_dir),
    }


# ------------------------------------------------------------------------------------------------ runner

@dataclass
class SuiteSummary:
    ran: list[Path] = field(default_factory=list)
    skipped: list[PlannedRun] = field(default_factory=list)
    interrupted: bool = False


def execute(plan: PlannedRun, *, progress: bool, tensorboard: bool, git: dict, command: str,
            suite: str) -> dict | None:
    """Train (or resume) and evaluate one planned run and write its result JSON; None if Ctrl-C stopped it."""
    import torch

    from metalearn import distributed
    from metalearn.builders import resolve_device
    from metalearn.cli import evaluate_run, train_task
    from metalearn.data.cache import atomic_write

    device = resolve_device(plan.cfg.data.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resume = distributed.on_main((plan.run_dir / "last.pt").exists)
    outcome = train_task(plan.cfg, plan.run_dir, resume=resume, progress=progress, tensorboard=tensorboard)
    if not distributed.is_main():   # rank 0 alone writes the run's files; the others take part in the evaluation
        if not outcome.state.interrupted:
            evaluate_run(plan.run_dir, progress=False)
        return distributed.broadcast_object(None)
    wall = _add_wall(plan.run_dir, outcome.wall_s)
    print(f"  {outcome.message()}", flush=True)
    if outcome.state.interrupted:
        return distributed.broadcast_object(None)
    ev = evaluate_run(plan.run_dir, progress=progress)
    if device.type == "cuda":
        peak = {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_max_memory_allocated"}
    else:
        peak = {"bytes": _max_rss_bytes(), "kind": "process_max_rss"}
    peak["device"] = str(device)
    result = build_result(plan, ev, outcome, wall, peak, git, machine_info(str(device)), command, suite)
    with atomic_write(plan.result_path, mode="w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    return distributed.broadcast_object(result)


def execute_from(plan: PlannedRun, model_dir: Path, *, progress: bool, git: dict, command: str,
                 suite: str) -> dict:
    """Evaluate the model another run trained (``--model-from``) as this task's row; nothing is trained.

    The run's config must equal this task's except for the keys that may change (``eval``, ``name``,
    ``reference``, ...): one trained model serving several rows, as the papers report them. The result is this
    task's own file and records ``model_from``: the run directory and the task whose validation picked the
    checkpoint.

    Args:
        plan: This task's planned run.
        model_dir: The finished run directory whose model is evaluated.
        progress: Show progress bars.
        git: The repository's commit and dirty flag, recorded in the result.
        command: The command line, recorded in the result.
        suite: The suite file, recorded in the result.

    Returns:
        The result (also written to the plan's result file).

    Raises:
        ConfigError: ``model_dir`` is not a finished run directory, or its config differs from this task's.
    """
    import torch

    from metalearn.builders import config_differences, resolve_device
    from metalearn.cli import TrainOutcome, evaluate_run
    from metalearn.data.cache import atomic_write
    from metalearn.train.checkpoint import load_checkpoint
    from metalearn.train.trainer import TrainState

    from metalearn import distributed

    model_dir = Path(model_dir)

    def read_run() -> tuple[dict, TrainState, dict]:   # rank 0 alone reads the run directory
        cfg_path = model_dir / "config.yaml"
        if not cfg_path.is_file() or not (model_dir / "best.pt").is_file():
            raise ConfigError(f"--model-from: {str(model_dir)!r} is not a finished run directory (needs "
                              f"config.yaml and best.pt)")
        run_cfg = load_yaml(cfg_path)
        diff = config_differences(run_cfg, plan.cfg.to_dict())
        if diff:
            raise ConfigError(f"--model-from: {str(model_dir)!r} was trained with a different config than "
                              f"{plan.name} ({', '.join(diff)} differ); only the eval section may differ")
        last = load_checkpoint(model_dir / "last.pt") if (model_dir / "last.pt").is_file() else {}
        best = load_checkpoint(model_dir / "best.pt")
        state = TrainState(step=int(last.get("step", best.get("step", 0))),
                           best_accuracy=float(last.get("best_accuracy", best.get("val_accuracy", float("nan")))),
                           best_step=int(last.get("best_step", best.get("step", 0))))
        return run_cfg, state, _read_wall(model_dir)

    run_cfg, state, wall = distributed.on_main(read_run)
    device = resolve_device(plan.cfg.data.device)
    e = plan.cfg.eval
    ev = evaluate_run(model_dir, e.ways, e.shots, e.queries, e.episodes, e.split, progress=progress)
    peak = {"bytes": _max_rss_bytes(), "kind": "process_max_rss", "device": str(device)}
    if device.type == "cuda":
        peak = {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_max_memory_allocated",
                "device": str(device)}
    outcome = TrainOutcome(state, wall["train_wall_s"], True, False)
    plan = PlannedRun(plan.entry, plan.cfg, plan.overrides, plan.name, plan.config_hash, model_dir,
                      plan.result_path)
    result = build_result(plan, ev, outcome, wall, peak, git, machine_info(str(device)), command, suite)
    result["model_from"] = {"run_dir": str(model_dir), "task": run_cfg.get("name"),
                            "validated_on": {k: run_cfg.get("eval", {}).get(k) for k in ("ways", "shots", "queries")}}
    if distributed.is_main():
        with atomic_write(plan.result_path, mode="w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


def _describe(i: int, n: int, plan: PlannedRun, model_from: str | os.PathLike | None = None) -> str:
    head = f"[{i}/{n}] {plan.name} (config {plan.config_hash})"
    if plan.status == "done":
        return f"{head}: skipped, {plan.existing} exists for this config hash and commit"
    if plan.status == "duplicate":
        return f"{head}: skipped, the same config appears earlier in the suite"
    if model_from is not None:
        return f"{head}: evaluate the model of {model_from} (nothing is trained)"
    if plan.status == "resume":
        at = f" from step {plan.resume_step}" if plan.resume_step is not None else ""
        return f"{head}: resume{at} in {plan.run_dir}"
    return f"{head}: train in {plan.run_dir}"


def run_suite(suite: str, *, out_root: str | os.PathLike = "runs/bench", results: str | os.PathLike = "results",
              overrides: list[str] | None = None, dry_run: bool = False, progress: bool = True,
              tensorboard: bool = False, command: str = "", model_from: str | os.PathLike | None = None) -> int:
    """``metalearn bench``: returns the exit code (0 done, 130 interrupted by Ctrl-C).

    Args:
        suite: The suite file.
        out_root: The folder of the run directories.
        results: The folder of the result files.
        overrides: ``key=value`` overrides for every task.
        dry_run: Print the plan and the training commands; run nothing.
        progress: Show progress bars.
        tensorboard: Write TensorBoard logs.
        command: The command line, recorded in each result.
        model_from: A finished run directory whose model every task of the suite evaluates instead of training
            its own (`execute_from`).
    """
    from metalearn import distributed
    out_root, results_dir = Path(out_root), Path(results)

    def plan() -> tuple[dict, list[PlannedRun], list[str]]:   # rank 0 alone reads the suite and the results
        entries = load_suite(suite)
        git = git_state()
        return (git, *plan_suite(entries, list(overrides or []), out_root, results_dir, git["commit"]))

    git, plans, notes = distributed.on_main(plan)
    for note in notes:
        print(f"metalearn bench: warning: ignoring {note}", file=sys.stderr)
    if git["commit"] is None:
        print("metalearn bench: warning: no git commit found for this metalearn; results record commit null "
              "and are never skipped", file=sys.stderr)
    elif git["dirty"]:
        print(f"metalearn bench: warning: the working tree has uncommitted changes; results record commit "
              f"{git['commit'][:8]} with dirty=true", file=sys.stderr)
    n = len(plans)
    print(f"metalearn bench: {n} run{'s' * (n != 1)} from {suite} -> {results_dir}"
          + (" (dry run)" if dry_run else ""), flush=True)
    if dry_run:
        for i, plan in enumerate(plans, 1):
            print(_describe(i, n, plan, model_from))
            if plan.status in ("new", "resume") and model_from is None:
                print(f"    {plan.train_command()}" + (" --resume" if plan.status == "resume" else ""))
        return 0
    t0 = time.perf_counter()
    done = 0
    for i, plan in enumerate(plans, 1):
        print(_describe(i, n, plan, model_from), flush=True)
        if plan.status in ("done", "duplicate"):
            continue
        try:
            if model_from is not None:
                res = execute_from(plan, Path(model_from), progress=progress, git=git, command=command,
                                   suite=suite)
            else:
                res = execute(plan, progress=progress, tensorboard=tensorboard, git=git, command=command,
                              suite=suite)
        except KeyboardInterrupt:
            res = None
        if res is None:
            print(f"metalearn bench: interrupted during {plan.name}; run the same command again to resume it "
                  f"(run directory {plan.run_dir})", file=sys.stderr)
            return 130
        done += 1
        ref = res["reference"]["accuracy"]
        print(f"  {res['dataset']} {res['ways']}-way {res['shots']}-shot: {res['accuracy']:.2f} ± "
              f"{res['ci95']:.2f}% over {res['episodes']} episodes"
              + (f" (published {ref})" if ref is not None else "") + f" -> {plan.result_path}", flush=True)
    print(f"metalearn bench: {done} run{'s' * (done != 1)} finished, {n - done} skipped, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return 0
