"""``metalearn report``: every result file under ``results/`` -> the summary page docs/results.md, the history
page docs/results_history.md and the PNG plots in docs/img/.

Result families and the files they are read from (anywhere under ``--results``, recognised by their content):

* few-shot classification: ``metalearn bench`` results (``kind: metalearn-bench-result``, checked by
  [`read_result`][metalearn.bench.read_result]) and ``metalearn eval --json`` outputs of a bench run's model at
  another setting (``results/matchnet/``, ``results/siamese/``);
* MAML sinusoid regression: ``benchmarks/maml_sinusoid.py`` (``kind: metalearn-maml-sinusoid``);
* learned optimizer: ``benchmarks/lstm_optimizer.py`` (its JSON files, also read from ``DOCS/img/lstm_*.json``);
* Test-Time Training and Tent: ``benchmarks/ttt_eval.py run`` (with the training logs in ``train_<run>/``
  beside it);
* speed: ``benchmarks/maml_speed.py``, ``cpu_throughput.py``, ``precision_check.py``, ``ttt_speed.py``,
  ``vmap_norm_check.py`` and the timing part of the sinusoid files.

**The summary rule.** Each summary row is the newest result of its task's current recipe: a result whose task
file, at the result's commit, differs from today's file (comments and the ``reference`` section aside) only
shows when no result of today's recipe exists; a task file tried with another recipe and then reverted keeps
the row of the recipe it reverted to. Among those, newest by the time the file records (``created`` /
``timestamp``; files without one by the time of their commit), then the one with more test episodes, images or
tasks. Every result, the replaced ones included, is listed on the history page ("other recipe" marks the
results of a recipe the task file no longer has).

Only the text between ``<!-- BEGIN GENERATED: NAME -->`` and ``<!-- END GENERATED: NAME -->`` is rewritten; the
hand-written notes around the markers are kept. A block without markers is appended at the end of its page.
Plots need matplotlib (the ``[report]`` extra) and use the Agg backend through ``matplotlib.figure.Figure``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import math
import os
import re
import shlex
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from metalearn.bench import RESULT_KIND, read_result
from metalearn.config import ConfigError

# ------------------------------------------------------------------------------------------- constants

SUMMARY, FEWSHOT, SINUSOID, LSTM, TTT, DISTILL, SPEED, HISTORY = (
    "summary", "fewshot", "sinusoid", "lstm", "ttt", "distill", "speed", "history")
#: the generated blocks of docs/results.md, in page order, with the heading a new page gives each
PAGE_BLOCKS = [(SUMMARY, None), (FEWSHOT, "Few-shot classification"), (SINUSOID, "MAML sinusoid regression"),
               (LSTM, "Learned optimizers"), (TTT, "Test-Time Training"), (DISTILL, "Dataset distillation"),
               (SPEED, "Speed")]
#: blocks an earlier version of this report wrote; a page that still has them is refused (remove them by hand)
LEGACY_BLOCKS = ("bench-table", "bench-plots")
IMG_PREFIX = "results-"
LEGACY_IMG_PREFIXES = ("bench-",)
HISTORY_PAGE = "results_history.md"

#: Sun et al. 2020, Table A2 (ResNet-26 GN, CIFAR-10-C level 5, error %): clean, then the 15 corruptions in
#: ``TTT_SETS`` order. The same numbers as ``benchmarks/ttt_eval.py`` (tests/test_report.py compares them).
TTT_SETS = ["clean", "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
            "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
            "jpeg_compression"]
TTT_PAPER = {
    "object only": [8.9, 50.5, 47.2, 56.1, 23.7, 51.7, 24.3, 26.3, 25.6, 34.4, 28.1, 13.5, 25.0, 27.4, 55.8, 29.8],
    "joint training": [8.1, 49.4, 45.3, 53.4, 24.2, 48.5, 24.8, 26.4, 25.0, 32.5, 27.5, 12.6, 25.3, 24.0, 51.6, 28.7],
    "TTT": [7.9, 45.6, 41.8, 50.0, 21.8, 46.1, 23.0, 23.9, 23.9, 30.0, 25.1, 12.2, 23.9, 22.6, 47.2, 27.2],
    "TTT-Online": [8.2, 25.8, 22.6, 30.6, 14.6, 34.4, 18.3, 17.1, 20.0, 18.0, 16.9, 11.2, 15.6, 21.6, 18.1, 21.2],
}
TTT_PAPER_SOURCE = "Sun et al. 2020, Table A2 (ResNet-26 GN, full recipe, 10,000 images)"
#: Wang et al. 2021 (Tent), ResNet-26 BN: mean error over the 15 corruptions at level 5
TENT_PAPER_MEAN = {"source (BN)": 40.8, "norm adapt (BN)": 17.3, "Tent (BN)": 14.3}
TENT_PAPER_SOURCE = "Wang et al. 2021 (Tent), ResNet-26 BN, mean over the 15 corruptions"
#: our rows: (label, run of benchmarks/ttt_eval.py, method)
TTT_METHODS = [("object only", "objonly", "source"), ("joint training", "gn", "source"), ("TTT", "gn", "ttt"),
               ("TTT-Online", "gn", "ttt_online"), ("source (BN)", "bn", "source"),
               ("norm adapt (BN)", "bn", "norm_adapt"), ("Tent (BN)", "bn", "tent")]
TTT_PROTOCOL_IMAGES = 10000          # each CIFAR-10-C set has the 10,000 CIFAR-10 test images

#: MAML sinusoid regression: Finn et al. 2017 §5.1 train for ~70,000 meta-iterations (the default of
#: benchmarks/maml_sinusoid.py); Li et al. 2017 test on 100 tasks
SINUSOID_RECIPE_ITERATIONS = 70000
SINUSOID_PROTOCOL_TASKS = 100
SINUSOID_ALGOS = {"maml": "MAML", "fomaml": "first-order MAML", "metasgd": "Meta-SGD"}
FEWSHOT_PROTOCOL_EPISODES = 1000     # when the task file cannot be read: the task files' eval.episodes
LSTM_TASKS = {"quadratic": "", "mnist": "MNIST: "}

#: overrides that do not change what a run computes (left out of the config shown on the history page)
_QUIET_KEYS = {"train.threads", "train.log_every", "train.checkpoint_every", "data.device", "data.root",
               "data.cache_dir"}

C_OURS, C_OURS_DARK, C_PUB, C_BASE, C_TRAIN = "#3b75af", "#1f3f60", "#111111", "#e07b22", "#9db9d5"


def begin_marker(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} -->"


def end_marker(name: str) -> str:
    return f"<!-- END GENERATED: {name} -->"


# ---------------------------------------------------------------------------------------------- formatting

def fmt_acc(accuracy: float, ci95: float | None, digits: int = 2) -> str:
    """``98.29 ± 0.18`` (``digits`` decimals; a missing CI shows the mean alone)."""
    return f"{accuracy:.{digits}f}" if ci95 is None else f"{accuracy:.{digits}f} ± {ci95:.{digits}f}"


def published_inside_ci(accuracy: float, ci95: float | None, published: float | None) -> bool | None:
    """Whether the published value lies in our interval [accuracy - ci95, accuracy + ci95]; None without one."""
    if published is None or ci95 is None:
        return None
    return abs(published - accuracy) <= ci95 + 1e-9


def fmt_inside(value: float, ci: float | None, published: float | None, lower_better: bool = False) -> str:
    """The "in CI?" cell: where the published value lies against ours ± CI.

    Args:
        value: Our value.
        ci: Our 95% CI half-width (None: no interval).
        published: The published value (None: none).
        lower_better: Lower values are better (a loss, an error).

    Returns:
        ``yes`` when the published value lies inside ours ± CI; ``above`` (``below`` where lower is better) when
        ours is better beyond the CI; ``no`` when ours is worse; an em dash without a CI or a published value.
    """
    inside = published_inside_ci(value, ci, published)
    if inside is None:
        return "—"
    if inside:
        return "yes"
    if lower_better:
        return "below" if value < published else "no"
    return "above" if value > published else "no"


def fmt_delta(accuracy: float, published: float | None, digits: int = 2) -> str:
    """Ours minus published, signed: ``-0.51``; an em dash without a published value."""
    return "—" if published is None else f"{accuracy - published:+.{digits}f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_pct(fraction: float) -> str:
    """``12%``, ``2.5%``, ``0.17%``: two significant digits below 10%."""
    p = 100 * fraction
    if p >= 10:
        return f"{p:.0f}%"
    return f"{p:.2g}%" if p >= 0.01 else "<0.01%"


def fmt_budget(steps: int | None, recipe: int | None) -> str:
    """``2500 / 20000 (12%)``: steps trained, the recipe's steps and the fraction; ``2500`` without a recipe."""
    if steps is None:
        return "—"
    if not recipe:
        return f"{steps}"
    return f"{steps} / {recipe} ({fmt_pct(steps / recipe)})"


def _threads(n) -> str:
    return f"{n} thread{'s' * (n != 1)}"


def machine_label(m: dict | str | None) -> str:
    """Short: ``GPU: NVIDIA H100 80GB HBM3`` or ``AMD EPYC, 1 thread`` (the CPU model and torch's threads)."""
    if m is None:
        return "not recorded"
    if isinstance(m, str):
        return re.sub(r"\b1 threads\b", "1 thread", m)
    if m.get("gpu"):
        return f"GPU: {m['gpu']}"
    cpu = m.get("cpu_model") or m.get("cpu") or "CPU"
    if re.fullmatch(r"x86_64|amd64|aarch64|arm64|i[3-6]86|ppc64le|s390x", str(cpu), re.IGNORECASE):
        cpu = f"CPU ({cpu})"       # only the architecture is recorded
    threads = m.get("torch_threads", m.get("threads"))
    return f"{cpu}, {_threads(threads)}" if threads else str(cpu)


def machine_long(m: dict | str | None) -> str:
    """The machine with cores and torch version where the file records them."""
    if not isinstance(m, dict):
        return machine_label(m)
    cores = m.get("cpu_count", m.get("cores"))
    parts = [machine_label(m)]
    if cores and not m.get("gpu"):
        parts[0] = parts[0].replace(", ", f" ({cores} cores), ", 1) if ", " in parts[0] else parts[0]
    if m.get("torch"):
        parts.append(f"torch {m['torch']}")
    return ", ".join(parts)


def commit_label(commit: str | None, dirty: bool | None = None) -> str:
    if not commit:
        return "not recorded"
    return f"`{commit[:8]}`" + (" (dirty)" if dirty else "")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _code(text: str) -> str:
    """Inline code that survives any backticks in ``text``."""
    text = str(text).replace("\n", " ")
    fence = "``" if "`" in text else "`"
    return f"{fence}{' ' if fence == '``' else ''}{text}{' ' if fence == '``' else ''}{fence}"


def wrap_command(command: str, width: int = 84) -> str:
    """A shell command over several lines (``\\`` continuations between arguments).

    Args:
        command: The command.
        width: The most characters a line has where the arguments allow.

    Returns:
        The wrapped command; the command unchanged when it fits in ``width`` or does not parse as shell words.
    """
    if len(command) <= width:
        return command
    try:
        words = [shlex.quote(w) for w in shlex.split(command)]
    except ValueError:
        return command
    # an option and its value stay on one line: ``--set train.steps=100``
    units: list[str] = []
    for w in words:
        if units and units[-1].startswith("-") and " " not in units[-1] and not w.startswith("-"):
            units[-1] += " " + w
        else:
            units.append(w)
    words = units
    lines, cur = [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width - 2:
            lines.append(cur)
            cur = "    " + w
        else:
            cur = f"{cur} {w}" if cur else w
    lines.append(cur)
    return " \\\n".join(lines)


def _utc(stamp: str | None) -> str:
    """An ISO time (``+00:00``, ``+0000`` or ``Z``) as ``YYYY-MM-DDTHH:MM:SS`` in UTC; '' if it does not parse."""
    if not stamp or not isinstance(stamp, str):
        return ""
    s = stamp.strip().replace("Z", "+00:00")
    s = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", s)
    try:
        t = _dt.datetime.fromisoformat(s)
    except ValueError:
        return ""
    if t.tzinfo is not None:
        t = t.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return t.replace(microsecond=0).isoformat()


# ------------------------------------------------------------------------------------------------ entries

@dataclass
class Entry:
    """One row of one result file: what the tables, plots and the history show."""
    family: str
    key: str                      # the task within the family: one summary row per key
    label: str
    file: str                     # the result file, as shown on the page
    when: str = ""                # UTC time the file records ('' when it records none)
    commit: str | None = None
    dirty: bool | None = None
    machine: dict | str | None = None
    commands: list[str] = field(default_factory=list)
    value: float | None = None    # ours
    ci: float | None = None
    n: int | None = None          # test episodes / tasks / images / optimisees
    n_text: str = ""              # when n is a range (TTT on 8-20 images)
    n_protocol: int | None = None
    published: float | None = None
    published_ci: float | None = None
    source: str = ""
    lower_better: bool = False
    digits: int = 2
    pub_digits: int | None = None  # None: the published value as published (``98.1``, ``1.13 ± 0.18``)
    steps: int | None = None
    recipe: int | None = None
    train_s: float | None = None
    config: str = ""              # what sets this run apart (overrides, config hash)
    note: str = ""                # shown with the command (where the model came from, what the file lacks)
    group: str = ""               # speed: the sub-table
    sort: tuple = ()
    cells: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    other_recipe: bool = False    # its task file, at its commit, differs from today's (comments, reference aside)

    @property
    def order(self) -> tuple:
        """Newer first when sorted in reverse: the time, then the sample size, then the file name."""
        return (self.when, self.n or 0, self.file, self.label)


def _fail(path, message: str):
    raise ConfigError(f"{path}: {message}")


def _need(data: dict, path, spec: dict, what: str) -> None:
    """Every key of ``spec`` present with its type, else ConfigError naming the file and the key."""
    for key, tp in spec.items():
        if key not in data:
            _fail(path, f"{what} without the key {key!r}")
        v = data[key]
        if not isinstance(v, tp) or (isinstance(v, bool) and tp in ((int, float), int)):
            name = getattr(tp, "__name__", None) or "a number"
            _fail(path, f"{key}: expected {name}, got {v!r}")


class _Context:
    """Where task files and commits are looked up (cached)."""

    def __init__(self, results_dir: Path):
        self.results_dir = results_dir
        self.roots = list(dict.fromkeys([Path.cwd(), results_dir.resolve().parent]))
        self._tasks: dict[tuple, dict | None] = {}
        self._commits: dict[str, str] = {}

    def task(self, path: str | None, commit: str | None = None) -> dict | None:
        """The task file's own recipe (before any override): train.steps, eval.episodes, reference; None if the
        file is not there or does not load.

        Args:
            path: The task file, as a result records it.
            commit: The commit the result was made at: the file as it was then, when git has it (a task file
                can change its recipe later); otherwise the file as it is now.
        """
        if not path:
            return None
        if (path, commit) in self._tasks:
            return self._tasks[(path, commit)]
        info = None
        for text in (self._task_at(path, commit), self._task_now(path)):
            if text is None:
                continue
            try:
                import yaml

                from metalearn.config import config_from_dict
                cfg = config_from_dict(yaml.safe_load(text) or {})
            except Exception:  # noqa: BLE001 - a broken or other-kind task file: no recipe to show
                continue
            info = {"steps": cfg.train.steps, "episodes": cfg.eval.episodes, "ways": cfg.eval.ways,
                    "shots": cfg.eval.shots, "dataset": cfg.dataset, "learner": cfg.learner,
                    "reference": cfg.reference.accuracy, "reference_ci": cfg.reference.ci95,
                    "source": cfg.reference.source or ""}
            break
        self._tasks[(path, commit)] = info
        return info

    def other_recipe(self, path: str | None, commit: str | None) -> bool:
        """Whether the task file at ``commit`` differs from the file now, comments and ``reference`` aside;
        False when either is not there (nothing to compare).

        Args:
            path: The task file, as a result records it.
            commit: The commit the result was made at.
        """
        if not path:
            return False
        then, now = self._task_at(path, commit), self._task_now(path)
        if then is None or now is None:
            return False
        try:
            import yaml
            a, b = yaml.safe_load(then) or {}, yaml.safe_load(now) or {}
        except Exception:  # noqa: BLE001 - an unparsable file: nothing to compare
            return False
        if not isinstance(a, dict) or not isinstance(b, dict):
            return False
        a.pop("reference", None)
        b.pop("reference", None)
        return a != b

    def _task_now(self, path: str) -> str | None:
        p = Path(path)
        for c in ([p] if p.is_absolute() else [root / p for root in self.roots]):
            if c.is_file():
                try:
                    return c.read_text()
                except (OSError, UnicodeDecodeError):
                    return None
        return None

    def _task_at(self, path: str, commit: str | None) -> str | None:
        """The text of the relative task file ``path`` at ``commit``; None when git does not have it."""
        if not commit or Path(path).is_absolute() or not re.fullmatch(r"[0-9a-f]{7,40}", commit):
            return None
        try:
            r = subprocess.run(["git", "-C", str(self.results_dir), "show", f"{commit}:{Path(path).as_posix()}"],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    def commit_time(self, commit: str | None) -> str:
        """The commit's time (UTC) from git, '' when the repository does not know the commit."""
        if not commit or not re.fullmatch(r"[0-9a-f]{7,40}", commit):
            return ""
        if commit not in self._commits:
            t = ""
            try:
                r = subprocess.run(["git", "-C", str(self.results_dir), "show", "-s", "--format=%cI", commit],
                                   capture_output=True, text=True, timeout=30)
                if r.returncode == 0:
                    t = _utc(r.stdout.strip().splitlines()[0] if r.stdout.strip() else "")
            except (OSError, subprocess.SubprocessError):
                t = ""
            self._commits[commit] = t
        return self._commits[commit]


def _split_commit(text) -> tuple[str | None, bool | None]:
    """``'8687aaa (dirty)'`` -> ('8687aaa', True); a git dict {commit, dirty} -> its values."""
    if isinstance(text, dict):
        return text.get("commit"), text.get("dirty")
    if not isinstance(text, str) or not text or text == "unknown":
        return None, None
    m = re.fullmatch(r"([0-9a-f]{7,40})(\s*\(dirty\))?", text.strip())
    if not m:
        return None, None
    return m.group(1), bool(m.group(2))


def _overridden(overrides: list, key: str) -> bool:
    return any(isinstance(o, str) and o.split("=", 1)[0].strip() == key for o in overrides or [])


def _config_text(r: dict) -> str:
    over = [o for o in r.get("overrides") or [] if o.split("=", 1)[0].strip() not in _QUIET_KEYS]
    return f"config `{r['config_hash']}`" + (f": {', '.join(over)}" if over else "")


# ----------------------------------------------------------------------------------- few-shot classification

def _bench_entry(r: dict, file: str, ctx: _Context) -> Entry:
    info = ctx.task(r.get("task"), r["git"].get("commit"))
    over = r.get("overrides") or []
    cfg_train, cfg_eval = (r["config"].get("train") or {}), (r["config"].get("eval") or {})
    # the recipe is the task file's own train.steps: the resolved config's unless an override changed it
    recipe = (info or {}).get("steps") if _overridden(over, "train.steps") else cfg_train.get("steps")
    protocol = ((info or {}).get("episodes") if _overridden(over, "eval.episodes") else cfg_eval.get("episodes")
                ) or FEWSHOT_PROTOCOL_EPISODES
    ref = r.get("reference") or {}
    other = ctx.other_recipe(r.get("task"), r["git"].get("commit"))
    now = ctx.task(r.get("task"))
    if now is not None and now["reference"] is not None and (
            now["dataset"], now["learner"], now["ways"], now["shots"]) == (
            r["dataset"], r["learner"], r["ways"], r["shots"]):
        # the published number is a fact about the paper, not about the run: the task file as it is now wins,
        # so that a corrected reference applies to the results made before the correction
        ref = {"accuracy": now["reference"], "ci95": now["reference_ci"], "source": now["source"]}
    label = r["name"] + ("" if r.get("split", "test") == "test" else f" ({r['split']} split)")
    note = ""
    if r.get("model_from"):
        mf = r["model_from"]
        note = (f"The model of {_code(mf.get('task') or '?')} (run `{Path(str(mf.get('run_dir') or '?')).name}`) "
                "evaluated here.")
    return Entry(
        FEWSHOT, key=label, label=label, file=file, when=_utc(r["created"]), commit=r["git"].get("commit"),
        dirty=r["git"].get("dirty"), machine=r["machine"], commands=[r["command"]], value=float(r["accuracy"]),
        ci=float(r["ci95"]), n=r["episodes"], n_protocol=protocol, published=ref.get("accuracy"),
        published_ci=ref.get("ci95"), source=ref.get("source") or "", steps=r["train"].get("steps"),
        recipe=recipe, train_s=r["train"].get("wall_s"), config=_config_text(r), note=note, other_recipe=other,
        sort=(r["dataset"], r["learner"], r["ways"], r["shots"], r["name"]),
        extra={"curve": r.get("curve") or {}, "model_from": (r.get("model_from") or {}).get("task")})


_EVAL_SPEC = {"accuracy": (int, float), "ci95": (int, float), "episodes": int, "ways": int, "shots": int,
              "dataset": str, "learner": str, "checkpoint": str}


def _eval_entry(data: dict, path: Path, file: str, bench: list[dict], ctx: _Context) -> Entry | None:
    """A ``metalearn eval --json`` output of a bench run's model: a row of the task at the evaluated setting."""
    _need(data, path, _EVAL_SPEC, "metalearn eval result")
    ck = Path(data["checkpoint"])
    run_dir = (ck.parent if ck.suffix == ".pt" else ck).as_posix()
    parent = next((b for b in bench if Path(b.get("run_dir", "")).as_posix() == run_dir), None)
    w, s, q = data["ways"], data["shots"], data.get("queries", 15)
    split = data.get("split", "test")
    if parent is not None and (parent["ways"], parent["shots"], parent.get("queries", 15),
                               parent.get("split", "test")) == (w, s, q, split):
        return None   # the bench result of that run already is this row
    if parent is not None:
        name = re.sub(r"\d+w\d+s", f"{w}w{s}s", parent["name"], count=1)
        if name == parent["name"]:
            name = f"{parent['name']}_{w}w{s}s"
    else:
        name = f"{data['learner']}_{data['dataset']}_{w}w{s}s"
    info = ctx.task(f"tasks/{name}.yaml")
    if info and (info["dataset"], info["learner"], info["ways"], info["shots"]) != (
            data["dataset"], data["learner"], w, s):
        info = None
    published, published_ci, source = data.get("reference"), None, ""
    if info is not None:
        published = published if isinstance(published, (int, float)) else info["reference"]
        published_ci, source = info["reference_ci"], info["source"]
    elif not isinstance(published, (int, float)):
        published = None
    args = ["metalearn", "eval", "--checkpoint", run_dir, "--ways", str(w), "--shots", str(s)]
    if q != 15:
        args += ["--queries", str(q)]
    if split != "test":
        args += ["--split", split]
    args += ["--episodes", str(data["episodes"]), "--json"]
    commands = ([parent["command"]] if parent else []) + [shlex.join(args)]
    label = name + ("" if split == "test" else f" ({split} split)")
    note = (f"The model of {_code(parent['name'])} evaluated with `metalearn eval`; the evaluation file records "
            "no commit or machine (the training run's are shown)." if parent else
            "The evaluation file records no commit or machine, and no bench result of its model was found.")
    return Entry(
        FEWSHOT, key=label, label=label, file=file, when=_utc(parent["created"]) if parent else "",
        commit=parent["git"].get("commit") if parent else None, dirty=parent["git"].get("dirty") if parent else None,
        machine=parent["machine"] if parent else None, commands=commands, value=float(data["accuracy"]),
        ci=float(data["ci95"]), n=data["episodes"],
        n_protocol=(info or {}).get("episodes") or FEWSHOT_PROTOCOL_EPISODES, published=published,
        published_ci=published_ci, source=source,
        steps=parent["train"].get("steps") if parent else data.get("step"), recipe=(info or {}).get("steps"),
        train_s=parent["train"].get("wall_s") if parent else None,
        config=(_config_text(parent) + f", checkpoint step {data.get('step')}") if parent else "",
        note=note, sort=(data["dataset"], data["learner"], w, s, name),
        # the recipe is the training run's: its task file at its commit against that file today
        other_recipe=ctx.other_recipe(parent.get("task"), parent["git"].get("commit")) if parent else False,
        extra={"curve": {}, "model_from": parent["name"] if parent else None})


# ------------------------------------------------------------------------------------------ MAML sinusoid

_SINUSOID_SPEC = {"algo": str, "shots": int, "mse": (int, float), "ci95": (int, float), "iterations": int,
                  "command": str, "git": dict, "machine": dict}


def _sinusoid_entries(d: dict, path: Path, file: str) -> list[Entry]:
    _need(d, path, _SINUSOID_SPEC, "maml_sinusoid result")
    algo, k = d["algo"], d["shots"]
    pub = d.get("published") or {}
    when = _utc(d.get("timestamp"))
    base = dict(file=file, when=when, commit=d["git"].get("commit"), dirty=d["git"].get("dirty"),
                machine=d["machine"], commands=[d["command"]])
    name = SINUSOID_ALGOS.get(algo, algo)
    order = list(SINUSOID_ALGOS).index(algo) if algo in SINUSOID_ALGOS else 9
    out = [Entry(SINUSOID, key=f"{algo} K={k}", label=f"{name}, K={k}", value=float(d["mse"]),
                 ci=float(d["ci95"]), n=d.get("test_tasks"), n_protocol=SINUSOID_PROTOCOL_TASKS,
                 published=pub.get("mse"), published_ci=pub.get("ci95"), source=pub.get("source") or "",
                 lower_better=True, digits=3, steps=d["iterations"], recipe=SINUSOID_RECIPE_ITERATIONS,
                 train_s=d.get("train_wall_s"), sort=(order, k),
                 config=f"meta-batch {d.get('meta_batch')}, inner lr {d.get('inner_lr')}, seed {d.get('seed')}",
                 extra={"curve": d.get("curve") or []}, **base)]
    sp = d.get("speed")
    if isinstance(sp, dict) and isinstance(sp.get("vmap_ms"), (int, float)) and isinstance(sp.get("loop_ms"),
                                                                                           (int, float)):
        out.append(Entry(SPEED, group="sinusoid", key=f"sinusoid {algo} K={k}", label=f"{name}, K={k}",
                         sort=(order, k), n=sp.get("repeats"),
                         cells={"vmap": f"{sp['vmap_ms']:.1f}", "loop": f"{sp['loop_ms']:.1f}",
                                "ratio": f"{sp['loop_ms'] / sp['vmap_ms']:.2f}×"}, **base))
    return out


# ----------------------------------------------------------------------------------------- LSTM optimizer

def _short_setting(setting: str, width: int = 18) -> str:
    """A setting's name for a table's first column: up to its first comma when it is long.

    ``MLP 20 sigmoid, 100 steps`` -> ``MLP 20 sigmoid``; the full name is on the history page.

    Args:
        setting: The setting's full name.
        width: Names longer than this are cut at their first comma.
    """
    return setting.split(",")[0] if len(setting) > width and "," in setting else setting


def _lstm_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    _need(d, path, {"task": str, "settings": list, "meta_training": dict, "command": str}, "lstm_optimizer result")
    mt = d["meta_training"]
    commit, dirty = _split_commit(d.get("commit"))
    if d.get("dirty_paths"):
        dirty = True
    prefix = LSTM_TASKS.get(d["task"], f"{d['task']}: ")
    task_order = list(LSTM_TASKS).index(d["task"]) if d["task"] in LSTM_TASKS else 9
    out = []
    for i, s in enumerate(d["settings"]):
        if not isinstance(s, dict):
            _fail(path, f"settings[{i}]: expected a mapping, got {s!r}")
        _need(s, path, {"setting": str, "optimizers": dict, "best_baseline": str,
                        "paired_lstm_minus_best_baseline": dict}, f"lstm_optimizer setting {i}")
        opt = s["optimizers"]
        if "LSTM" not in opt or s["best_baseline"] not in opt:
            _fail(path, f"settings[{i}]: optimizers without 'LSTM' or the best baseline {s['best_baseline']!r}")
        lstm, base = opt["LSTM"]["final"], opt[s["best_baseline"]]["final"]
        paired = s["paired_lstm_minus_best_baseline"]
        out.append(Entry(
            LSTM, key=f"{d['task']}: {s['setting']}", label=prefix + _short_setting(s["setting"]), file=file,
            when=ctx.commit_time(commit), commit=commit, dirty=dirty, machine=d.get("machine"),
            commands=[d["command"]], value=float(lstm["mean"]), ci=float(lstm["ci95"]), n=lstm.get("n"),
            n_protocol=lstm.get("n"), lower_better=True, digits=3, steps=mt.get("iterations_done"),
            train_s=mt.get("train_seconds"), sort=(task_order, file, i),
            config=f"meta-training: {mt.get('iterations_done')} iterations, {mt.get('optimisee_steps')} "
                   f"optimisee steps",
            cells={"baseline": fmt_acc(base['mean'], base['ci95'], 3),
                   "lr": f"{s['best_baseline']} {opt[s['best_baseline']].get('lr'):g}",
                   "paired": f"{paired['mean']:+.3f} ± {paired['ci95']:.3f}",
                   "wins": f"{paired.get('lstm_wins', '?')} / {paired.get('n', '?')}"},
            extra={"baseline_name": s["best_baseline"], "baseline": float(base["mean"]),
                   "baseline_ci": float(base["ci95"]), "horizon": s.get("steps"),
                   "curves": {k: v.get("curve_mean") for k, v in opt.items()}}))
    return out


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _searched_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    """benchmarks/searched_optim.py: the best PowerSign / AddSign rule against the best tuned classical one."""
    _need(d, path, {"family": str, "command": str, "result": dict, "machine": dict}, "searched_optim result")
    r = d["result"]
    _need(r, path, {"setting": str, "optimizers": dict, "best_classical": str, "best_searched": str},
          "searched_optim result")
    opt = r["optimizers"]
    for name in (r["best_classical"], r["best_searched"]):
        if not isinstance(opt.get(name), dict):
            _fail(path, f"result.optimizers without {name!r}")
    commit, dirty = d.get("commit"), d.get("dirty")
    smoke = path.stem.endswith("_smoke")
    metric = "test_acc" if "test_acc" in opt[r["best_searched"]] else "final"
    ours, base = opt[r["best_searched"]][metric], opt[r["best_classical"]][metric]
    lower = metric == "final"
    digits = 3 if lower else 2
    paired = r.get("paired_best_searched_minus_best_classical")
    label = ("" if d["family"] == "quadratic" else "MNIST: " if d["family"] == "mnist" else
             "CIFAR-10: ") + _short_setting(r["setting"]) + (" (smoke run)" if smoke else "")
    n = ours.get("n")
    return [Entry(
        LSTM, group="searched", key=f"searched {d['family']}: {r['setting']}" + (" smoke" if smoke else ""),
        label=label, file=file, when=ctx.commit_time(commit), commit=commit, dirty=dirty, machine=d["machine"],
        commands=[d["command"]], value=float(ours["mean"]),
        ci=None if not isinstance(ours.get("ci95"), (int, float)) or math.isnan(ours["ci95"]) else float(ours["ci95"]),
        n=n, n_protocol=n, lower_better=lower, digits=digits, train_s=d.get("wall_s"),
        sort=(list(LSTM_TASKS).index(d["family"]) if d["family"] in LSTM_TASKS else 9, label),
        config=f"lr grid {r.get('lr_grid') or 'per optimizer'}",
        cells={"ours_name": f"{fmt_acc(ours['mean'], _finite(ours.get('ci95')), digits)} ({r['best_searched']})",
               "baseline": fmt_acc(base['mean'], _finite(base.get('ci95')), digits),
               "lr": f"{r['best_searched']} {opt[r['best_searched']].get('lr'):g}, {r['best_classical']} "
                     f"{opt[r['best_classical']].get('lr'):g}",
               "paired": "—" if not isinstance(paired, dict) else f"{paired['mean']:+.{digits}f} ± "
                                                                  f"{paired['ci95']:.{digits}f}",
               "wins": "—" if not isinstance(paired, dict) else
               f"{paired.get('searched_wins', '?')} / {paired.get('n', '?')}",
               "metric": "test accuracy %" if not lower else "loss"},
        extra={"baseline_name": r["best_classical"], "baseline": float(base["mean"]),
               "baseline_ci": base.get("ci95")})]


SEARCH_SETTINGS = {"base": "MLP 20 sigmoid", "relu": "MLP 20 ReLU", "2layers": "MLP 2×20 sigmoid",
                   "40hidden": "MLP 40 sigmoid"}


def _search_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    """benchmarks/optimizer_search.py: the best found rule against the best tuned baseline, one row per MLP."""
    _need(d, path, {"command": str, "machine": dict, "controller": dict, "random": dict, "heldout": list,
                    "proxy": dict}, "optimizer_search result")
    commit, dirty = d.get("commit"), d.get("dirty")
    smoke = bool(d.get("smoke"))
    out = []
    for i, h in enumerate(d["heldout"]):
        if not isinstance(h, dict):
            _fail(path, f"heldout[{i}]: expected a mapping, got {h!r}")
        _need(h, path, {"setting": str, "optimizers": dict, "best_baseline": str}, f"optimizer_search heldout {i}")
        found = h.get("best_found")
        opt = h["optimizers"]
        if found is None or found not in opt or h["best_baseline"] not in opt:
            continue                  # the search found no rule that lowers the proxy loss: nothing to show
        ours, base = opt[found]["final"], opt[h["best_baseline"]]["final"]
        paired = h.get("paired_best_found_minus_best_baseline")
        rnd = opt.get("random #1")
        label = "search: " + SEARCH_SETTINGS.get(h["setting"], h["setting"]) + (" (smoke run)" if smoke else "")
        ctrl, rs = d["controller"], d["random"]
        out.append(Entry(
            LSTM, group="search", key=f"optimizer search: {h['setting']}" + (" smoke" if smoke else ""),
            label=label, file=file, when=ctx.commit_time(commit), commit=commit, dirty=dirty,
            machine=d["machine"], commands=[d["command"]], value=float(ours["mean"]), ci=_finite(ours.get("ci95")),
            n=ours.get("n"), n_protocol=ours.get("n"), lower_better=True, digits=3, train_s=d.get("wall_s"),
            sort=(2, i, label), config=f"{ctrl.get('samples')} rules sampled by the controller",
            cells={"rule": f"{opt[found].get('formula')} ({found}, lr {opt[found].get('lr'):g})",
                   "ours": fmt_acc(ours["mean"], _finite(ours.get("ci95")), 3),
                   "baseline": f"{fmt_acc(base['mean'], _finite(base.get('ci95')), 3)} ({h['best_baseline']})",
                   "paired": "—" if not isinstance(paired, dict) else
                   f"{paired['mean']:+.3f} ± {paired['ci95']:.3f}",
                   "wins": "—" if not isinstance(paired, dict) else
                   f"{paired.get('found_wins', '?')} / {paired.get('n', '?')}",
                   "random": "—" if not isinstance(rnd, dict) else
                   f"{fmt_acc(rnd['final']['mean'], _finite(rnd['final'].get('ci95')), 3)} ({rnd.get('formula')})",
                   "samples": f"{ctrl.get('samples')} ({ctrl.get('evaluations')} distinct) / "
                              f"{rs.get('samples')} ({rs.get('evaluations')} distinct)"},
            extra={"baseline_name": h["best_baseline"], "baseline": float(base["mean"]),
                   "baseline_ci": base.get("ci95")}))
    return out


def _ssl_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    """benchmarks/ttt_tasks.py: self-supervised tasks for TTT side by side (mean error over the corruptions)."""
    _need(d, path, {"command": str, "git": dict, "machine": dict, "tasks": dict}, "ttt_tasks result")
    commit, dirty = d["git"].get("commit"), d["git"].get("dirty")
    out = []
    for i, (task, t) in enumerate(d["tasks"].items()):
        ev = t.get("eval") if isinstance(t, dict) else None
        mc = (ev or {}).get("mean_corrupted") or {}
        if not all(isinstance(mc.get(m), dict) for m in ("source", "ttt", "ttt_online")):
            continue         # not evaluated yet (the script saves after each task)
        tr = t.get("train") or {}
        sets = ev.get("sets") or {}
        ns = {int(v["source"].get("n") or 0) for k, v in sets.items() if k != "clean" and isinstance(v, dict)}
        n = min(ns) if ns else None

        def diff(m):
            v = mc[m].get("vs_source")
            return "—" if not v else f"{v[0]:+.1f} ± {v[1]:.1f}"
        out.append(Entry(
            TTT, group="ssl", key=f"ssl {task}", label=task, file=file, when=ctx.commit_time(commit),
            commit=commit, dirty=dirty, machine=d["machine"], commands=[d["command"]],
            value=float(mc["ttt"]["error"]), n=n, lower_better=True, digits=1, steps=tr.get("steps"),
            train_s=tr.get("wall_s"),
            sort=(i,), config=(d.get("budget") or {}).get("joint_training", ""),
            cells={"joint": f"{mc['source']['error']:.1f}", "ttt": f"{mc['ttt']['error']:.1f}",
                   "online": f"{mc['ttt_online']['error']:.1f}", "d_ttt": diff("ttt"), "d_online": diff("ttt_online"),
                   "budget": f"{tr.get('steps')} × batch {tr.get('batch_size')}"}))
    return out


LAYER_TASKS = {"mqar": "multi-query associative recall, accuracy % on the queries",
               "regression": "in-context linear regression, MSE at the queries (1 = predicting 0)"}


def _layers_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    """benchmarks/ttt_layers.py: TTT layers against attention on synthetic in-context tasks, by sequence length."""
    _need(d, path, {"command": str, "git": dict, "machine": dict, "tasks": dict}, "ttt_layers result")
    commit, dirty = d["git"].get("commit"), d["git"].get("dirty")
    st = d.get("settings") if isinstance(d.get("settings"), dict) else {}
    out = []
    for ti, (task, models) in enumerate(d["tasks"].items()):
        if not isinstance(models, dict):
            _fail(path, f"tasks.{task}: expected a mapping of models, got {models!r}")
        # what tells two runs of a task apart (a table per task and setting)
        named = {"mqar": [("keys", "{} keys"), ("values", "{} values")],
                 "regression": [("x_dim", "x of dimension {}"), ("queries", "{} queries")]}.get(task, [])
        sig = ", ".join(fmt.format(st[k]) for k, fmt in named + [("dim", "width {}"), ("steps", "{} steps")]
                        if st.get(k) is not None)
        refs: dict[str, str] = {}
        for mi, (model, r) in enumerate(models.items()):
            ev = (r or {}).get("eval") if isinstance(r, dict) else None
            if not isinstance(ev, dict) or not ev:
                continue     # not evaluated yet
            by_len, n = {}, None
            for point in ev.values():
                t = point.get("length")
                if "accuracy" in point:
                    by_len[t] = f"{100 * point['accuracy']:.1f}"
                    n = point.get("queries")
                elif "mse" in point:
                    by_len[t] = f"{point['mse']:.3f}"
                    n = point.get("sequences")
                    if isinstance(point.get("least_squares_mse"), (int, float)):
                        refs[t] = f"{point['least_squares_mse']:.3f}"
            tr = r.get("train") or {}
            out.append(Entry(
                TTT, group="layers", key=f"layers {task} {sig} {model}", label=model, file=file,
                when=ctx.commit_time(commit), commit=commit, dirty=dirty, machine=d["machine"],
                commands=[d["command"]], n=n, steps=tr.get("steps"), train_s=tr.get("cpu_s"), sort=(ti, mi),
                config=f"{task}, batch {tr.get('batch_size')}",
                cells={"task": task, "sig": sig, "by_len": by_len, "params": str(tr.get("params", "—")),
                       "budget": f"{tr.get('steps')} × batch {tr.get('batch_size')}"},
                extra={"refs": refs}))
    return out


def _demo_entries(d: dict, path: Path, file: str) -> list[Entry]:
    """``metalearn demo --json``: ProtoNet and 1-NN on pixels on the bundled data, per setting."""
    _need(d, path, {"results": dict, "command": str, "git": dict, "machine": dict}, "metalearn demo result")
    out = []
    for i, (setting, r) in enumerate(d["results"].items()):
        if not isinstance(r, dict) or not isinstance(r.get("protonet"), dict):
            _fail(path, f"results.{setting}: expected 'protonet' (and 'pixel_1nn') accuracies, got {r!r}")
        p, nn = r["protonet"], r.get("pixel_1nn") or {}
        smoke = bool(d.get("smoke"))
        out.append(Entry(
            FEWSHOT, group="demo", key=f"demo {d.get('dataset')} {setting}" + (" smoke" if smoke else ""),
            label=f"{d.get('dataset')} {setting}" + (" (smoke)" if smoke else ""), file=file,
            when=_utc(d.get("timestamp")), commit=d["git"].get("commit"), dirty=d["git"].get("dirty"),
            machine=d["machine"], commands=[d["command"]], value=float(p["accuracy"]), ci=p.get("ci95"),
            n=d.get("episodes"), steps=d.get("steps"), train_s=(d.get("time") or {}).get("train_s"), sort=(i,),
            cells={"nn": "—" if "accuracy" not in nn else fmt_acc(nn["accuracy"], nn.get("ci95"))}))
    return out


def _distill_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    """The rows of a benchmarks/distill.py result (dataset distillation, Wang et al. 2018).

    Test accuracy after training on the distilled images, beside the untrained model and the published number.

    Args:
        d: The result file's JSON object.
        path: The file (named in errors).
        file: The file's name as the page shows it.
        ctx: Where task files and commits are looked up.

    Raises:
        ConfigError: A key is missing or of the wrong type.
    """
    _need(d, path, {"config": dict, "test": dict, "command": str, "machine": dict}, "distill result")
    test = d["test"]
    if not isinstance(test.get("distilled"), dict):
        _fail(path, "test: expected 'distilled' (and 'untrained') accuracies")
    ours, untrained = test["distilled"], test.get("untrained") or {}
    cfg = d["config"]
    pub = d.get("published") or {}
    name = str(d.get("name") or path.stem)
    info = None
    # the task file the command ran (a result written with --name NAME has no task file of that name)
    ran = [w for w in d["command"].split() if w.startswith("tasks/distill/") and w.endswith(".yaml")]
    rel = ran[0] if ran else f"tasks/distill/{name}.yaml"
    task = ctx.roots[0] / rel
    for root in ctx.roots:
        t = root / rel
        if t.is_file():
            task = t
            break
    try:
        import yaml
        info = yaml.safe_load(task.read_text()) if task.is_file() else None
    except Exception:  # noqa: BLE001 - an unreadable task file: no recipe to show
        info = None
    recipe = (info or {}).get("outer_steps") if isinstance(info, dict) else None
    commit, dirty = d.get("commit"), d.get("dirty")
    sd = ours.get("std")
    label = f"{cfg.get('dataset', '?')}, {d.get('setting', cfg.get('init'))} init, {d.get('images')} images"
    if cfg.get("batch_size"):
        label += f", real batch {cfg['batch_size']}"
    if cfg.get("seed"):   # another fixed initialisation (the seed draws it) or stream of real batches
        label += f", seed {cfg['seed']}"
    if isinstance(recipe, int) and isinstance(cfg.get("outer_steps"), int) and cfg["outer_steps"] != recipe:
        label += f", {cfg['outer_steps']} outer steps"   # a shorter (or longer) budget than the task file's
    base = d.get("baselines") if isinstance(d.get("baselines"), dict) else {}

    def acc(x):
        return "—" if not isinstance(x, dict) or "mean" not in x else (
            f"{x['mean']:.1f}" + (f" ± {x['std']:.1f}" if x.get("std") else ""))
    return [Entry(
        DISTILL, key=f"distill {name}", label=label, file=file, when=ctx.commit_time(commit), commit=commit,
        dirty=dirty, machine=d["machine"], commands=[d["command"]], value=float(ours["mean"]), ci=None,
        n=ours.get("n"), published=pub.get("accuracy"), published_ci=None, digits=1,
        source="Wang et al. 2018" if pub else "", steps=d.get("outer_steps_done"), recipe=recipe,
        train_s=d.get("distill_wall_s"), sort=(name,), config=f"{d.get('inner_steps')} inner steps",
        cells={"ours": acc(ours), "pub": "—" if not pub else f"{pub['accuracy']:g}" + (
                   f" ± {pub['std']:g}" if pub.get("std") else ""),
               "untrained": acc(untrained) + " / " + (f"{pub['untrained']:g}" if pub.get("untrained") else "—"),
               "baselines": "; ".join(f"{k} {acc(v.get('test') if isinstance(v, dict) and 'test' in v else v)}"
                                      for k, v in base.items() if isinstance(v, dict)) or "—"},
        extra={"std": sd})]


# ---------------------------------------------------------------------------------------- TTT and Tent

def _mean_ci(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def _ttt_train(folder: Path, run: str, step) -> tuple[int | None, float | None, str]:
    """(recipe steps, training seconds, config path) from ``train_<run>/`` beside the TTT result."""
    d = folder / f"train_{run}"
    recipe, wall = None, None
    if (d / "metrics.jsonl").is_file():
        rec = None
        for line in (d / "metrics.jsonl").read_text().splitlines():
            try:
                x = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(x, dict) and x.get("step") == step:
                rec = x
        if rec and rec.get("epoch"):
            per_epoch = round(rec["step"] / rec["epoch"])
            try:
                import yaml
                epochs = (yaml.safe_load((d / "config.yaml").read_text()) or {}).get("train", {}).get("epochs")
            except Exception:  # noqa: BLE001 - no config: no recipe
                epochs = None
            if isinstance(epochs, (int, float)):
                recipe = int(round(epochs * per_epoch))
        if rec:
            wall = rec.get("wall_s")
    return recipe, wall, (d / "config.yaml").as_posix() if (d / "config.yaml").is_file() else ""


TTT_SAME_IMAGES = "joint training, TTT's images"


def _first_images(cell: dict, n: int, labels: list) -> dict | None:
    """A method's result on a set restricted to the first ``n`` test images (from its predictions)."""
    pred = cell.get("pred") or []
    if len(pred) < n or len(labels) < n:
        return None
    wrong = sum(p != t for p, t in zip(pred[:n], labels[:n]))
    return {"error": 100.0 * wrong / n, "n": n, "pred": pred[:n]}


def _ttt_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    _need(d, path, {"runs": dict, "command": str}, "ttt_eval result")
    commit, dirty = _split_commit(d.get("commit"))
    out = []
    methods = list(TTT_METHODS)
    gn = d["runs"].get("gn") or {}
    ttt_ns = [int(((gn.get("sets") or {}).get(s, {}).get("ttt") or {}).get("n") or 0) for s in TTT_SETS]
    src_ns = [int(((gn.get("sets") or {}).get(s, {}).get("source") or {}).get("n") or 0) for s in TTT_SETS]
    if all(ttt_ns) and any(a < b for a, b in zip(ttt_ns, src_ns)):
        # standard TTT ran on fewer images than the others: the joint-training model on exactly those images
        methods.insert(3, (TTT_SAME_IMAGES, "gn", "source"))
    for order, (label, run, method) in enumerate(methods):
        r = d["runs"].get(run)
        if not isinstance(r, dict) or not isinstance(r.get("sets"), dict):
            continue
        sets = r["sets"]
        if not all(isinstance(sets.get(s), dict) and isinstance(sets[s].get(method), dict) for s in TTT_SETS):
            continue    # this method did not run on every set (or the evaluation is not finished)
        cells = [sets[s][method] for s in TTT_SETS]
        if label == TTT_SAME_IMAGES:
            cells = [_first_images(c, n, r.get("labels") or []) for c, n in zip(cells, ttt_ns)]
            if any(c is None for c in cells):
                continue
        errs = [float(c["error"]) for c in cells]
        ns = [int(c.get("n") or 0) for c in cells]
        labels = r.get("labels") or []
        mean15 = statistics.fmean(errs[1:])
        ci = None
        # CI over images of the per-image error averaged over the 15 corruptions (the same images in every set)
        if len(set(ns[1:])) == 1 and ns[1] > 1 and len(labels) >= ns[1] and all(
                len(c.get("pred") or []) == ns[1] for c in cells[1:]):
            n = ns[1]
            per_image = [statistics.fmean(100.0 * (c["pred"][i] != labels[i]) for c in cells[1:]) for i in range(n)]
            mean15, ci = _mean_ci(per_image)
        clean_n = ns[0]
        clean_ci = (1.96 * math.sqrt(errs[0] * (100 - errs[0]) / clean_n)) if clean_n > 1 else None
        n_lo, n_hi = min(ns[1:]), max(ns[1:])
        if label in TTT_PAPER or label == TTT_SAME_IMAGES:
            paper = TTT_PAPER.get(label) or TTT_PAPER["joint training"]
            published, paper_clean, source = statistics.fmean(paper[1:]), paper[0], TTT_PAPER_SOURCE
        else:
            published, paper_clean, source = TENT_PAPER_MEAN.get(label), None, TENT_PAPER_SOURCE
        recipe, wall, cfg_path = _ttt_train(path.parent, run, r.get("step"))
        note = (f"Model {_code(r.get('checkpoint', '?'))} at step {r.get('step')}"
                + (f" (training config {_code(cfg_path)})" if cfg_path else "") + ".")
        out.append(Entry(
            TTT, key=label, label=label, file=file, when=ctx.commit_time(commit), commit=commit, dirty=dirty,
            machine=d.get("machine"), commands=[d["command"]], value=mean15, ci=ci, n=n_lo,
            n_text=f"{n_lo}" if n_lo == n_hi else f"{n_lo}–{n_hi}", n_protocol=TTT_PROTOCOL_IMAGES,
            published=published, source=source, lower_better=True, digits=1, pub_digits=1, steps=r.get("step"),
            recipe=recipe,
            train_s=wall, sort=(order,), note=note,
            config=f"run {run}, {r.get('images')} images (TTT on {r.get('ttt_images')})",
            cells={"clean": fmt_acc(errs[0], clean_ci, 1),
                   "paper_clean": "—" if paper_clean is None else f"{paper_clean:.1f}"},
            extra={"clean": errs[0], "clean_ci": clean_ci, "clean_n": clean_n, "paper_clean": paper_clean,
                   "errors": errs}))
    return out


# ------------------------------------------------------------------------------------------------ speed

def _args_command(script: str, args: dict) -> str:
    words = ["python", script]
    for k, v in args.items():
        if v is None or v is False:
            continue
        words.append("--" + k.replace("_", "-"))
        if v is not True:
            words.append(str(v))
    return shlex.join(words)


def _commit_from_name(path: Path) -> str | None:
    m = re.search(r"-([0-9a-f]{7,40})$", path.stem)
    return m.group(1) if m else None


def _maml_speed_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    _need(d, path, {"machine": dict, "args": dict, "results": list}, "maml_speed result")
    commit = _commit_from_name(path)
    m = d["machine"]
    base = dict(file=file, when=ctx.commit_time(commit), commit=commit, machine=m,
                commands=[_args_command("benchmarks/maml_speed.py", {k: v for k, v in d["args"].items()})],
                note="The command is rebuilt from the arguments the file records"
                     + ("; the commit is the one in the file name." if commit else "; it records no commit."))
    out = []
    modes = [r.get("mode") for r in d["results"] if isinstance(r, dict)]
    loop = {r.get("setting"): r for r in d["results"] if isinstance(r, dict) and r.get("mode") == "loop"}
    for r in d["results"]:
        if not isinstance(r, dict) or r.get("mode") in (None, "loop"):
            continue
        setting, mode = str(r.get("setting")), str(r["mode"])
        tasks = r.get("tasks", d["args"].get("tasks"))
        ref = loop.get(r.get("setting"), {})
        if "ms_median" in r:
            ms, ratio = f"{r['ms_median']:.0f}", (f"{r['speedup_vs_loop']:.2f}×" if r.get("speedup_vs_loop") else "—")
        else:
            ms, ratio = r.get("error") or r.get("skipped") or "—", "—"
        diff = r.get("max_grad_diff_rel")
        out.append(Entry(
            SPEED, group="maml", key=f"maml {m.get('device')} {setting} {tasks} {mode}",
            label=f"{setting}, {tasks} tasks", sort=(setting, modes.index(mode)), n=d["args"].get("repeats"),
            cells={"mode": mode, "ms": ms, "loop": f"{ref['ms_median']:.0f}" if "ms_median" in ref else "—",
                   "ratio": ratio, "diff": "—" if diff is None else f"{diff:.1e}"}, **base))
    return out


def _throughput_entries(d: dict, path: Path, file: str) -> list[Entry]:
    _need(d, path, {"rows": list, "command": str, "git": dict, "machine": dict}, "cpu_throughput result")
    dev = d.get("device", "cpu")
    base = dict(file=file, when=_utc(d.get("timestamp")), commit=d["git"].get("commit"),
                dirty=d["git"].get("dirty"), machine=d["machine"], commands=[d["command"]],
                note="A smoke run (--quick): smaller data, fewer calls." if d.get("quick") else "")

    def f(x, digits=1):
        if not isinstance(x, (int, float)):
            return "—"
        return f"{x:.0f}" if digits == 1 and abs(x) >= 100 else f"{x:.{digits}f}"

    out = []
    for i, r in enumerate(d["rows"]):
        if not isinstance(r, dict) or "workload" not in r:
            _fail(path, f"rows[{i}]: expected a mapping with 'workload', got {r!r}")
        w, t = r["workload"], r.get("threads")
        err = r.get("default_error") or r.get("off_error")
        shares = (r.get("default_profile") or {}).get("share") or {}
        top = [(k, v) for k, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v >= 0.05]
        prof_note = (f"{w} at {t} thread{'s' if t != 1 else ''} with the default policy, self CPU time by operator "
                     "class: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in top) + ".") if top else ""
        eshares = (r.get("eager_tail_profile") or {}).get("share") or {}
        etop = [(k, v) for k, v in sorted(eshares.items(), key=lambda kv: -kv[1]) if v >= 0.05]
        if etop:
            prof_note += (f" The same step with PyTorch's own BatchNorm, max-pool and ReLU (eager_tail): "
                          + ", ".join(f"{k} {100 * v:.0f}%" for k, v in etop) + ".")
        if isinstance(r.get("kernel_speedup"), (int, float)) and isinstance(r.get("eager_tail_ms"), (int, float)):
            prof_note += (f" {w} at {t} thread{'s' if t != 1 else ''}: the fused BatchNorm/max-pool/ReLU kernel "
                          f"makes the default step {r['kernel_speedup']:.2f}× the same step with PyTorch's own ops "
                          f"({f(r['eager_tail_ms'])} ms).")
            prof_note = prof_note.strip()
        out.append(Entry(
            SPEED, group="throughput", key=f"throughput {dev} {w} {t}" + (" quick" if d.get("quick") else ""),
            label=w + (" (quick)" if d.get("quick") else ""), sort=(i,),
            cells={"threads": str(t), "off": f(r.get("off_ms")), "default": f(r.get("default_ms")),
                   "ratio": f"{r['speedup']:.2f}×" if isinstance(r.get("speedup"), (int, float)) else (
                       "error" if err else "—"),
                   "gflops": f(r.get("default_gflops"), 0), "pct": f(r.get("pct_of_bf16_conv_ceiling"), 0)},
            **{**base, "note": " ".join(x for x in (base["note"], prof_note) if x)}))
    return out


def _maml_variants_entries(d: dict, path: Path, file: str) -> list[Entry]:
    """benchmarks/maml_variants.py: second-order MAML step variants against the loop, with their meta-gradient
    error against float64, and (as the note) the reference's time by operator class.

    Args:
        d: The file's data.
        path: The file.
        file: Its name as the page shows it.
    """
    _need(d, path, {"rows": list, "command": str, "git": dict, "machine": dict, "threads": int},
          "maml_variants result")
    shares = (d.get("profiles") or {}).get("loop_nchw", {}).get("share") or {}
    note = ("Self CPU time of the reference by operator class: "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
            + ".") if shares else ""
    if d.get("quick"):
        note = ("A smoke run (--quick). " + note).strip()
    base = dict(file=file, when=_utc(d.get("timestamp")), commit=d["git"].get("commit"), dirty=d["git"].get("dirty"),
                machine=d["machine"], commands=[d["command"]], note=note)
    out = []
    for i, r in enumerate(d["rows"]):
        if not isinstance(r, dict) or "variant" not in r:
            _fail(path, f"rows[{i}]: expected a mapping with 'variant', got {r!r}")
        err = r.get("meta_grad_rel_err_vs_fp64")
        out.append(Entry(
            SPEED, group="maml_variants", key=f"maml_variants {d['threads']} {r['variant']}"
            + (" quick" if d.get("quick") else ""), label=f"{r['variant']}, {d.get('tasks')} tasks", sort=(i,),
            cells={"threads": str(d["threads"]), "ms": f"{r['ms']:.0f}" if isinstance(r.get("ms"), (int, float)) else "—",
                   "ratio": f"{r['speedup_vs_loop_nchw']:.2f}×" if isinstance(r.get("speedup_vs_loop_nchw"),
                                                                           (int, float)) else "—",
                   "err": "—" if not isinstance(err, (int, float)) else f"{err:.1e}"},
            **base))
    return out


def _distributed_entries(d: dict, path: Path, file: str) -> list[Entry]:
    """benchmarks/distributed_throughput.py: episodes per second with 1, 2, ... processes (DDP, gloo on the CPU)."""
    _need(d, path, {"rows": list, "command": str, "git": dict, "machine": dict}, "distributed_throughput result")
    dev = d.get("device", "cpu")
    note = str(d.get("note") or "")
    base = dict(file=file, when=_utc(d.get("timestamp")), commit=d["git"].get("commit"), dirty=d["git"].get("dirty"),
                machine=d["machine"], commands=[d["command"]],
                note=(f"Recorded with it: {note[0].upper() + note[1:]}." if note else ""))
    out = []
    for i, r in enumerate(d["rows"]):
        if not isinstance(r, dict) or "workload" not in r or "processes" not in r:
            _fail(path, f"rows[{i}]: expected a mapping with 'workload' and 'processes', got {r!r}")

        def f(x, fmt):
            return "—" if not isinstance(x, (int, float)) else format(x, fmt)
        eff = r.get("scaling_efficiency")
        out.append(Entry(
            SPEED, group="distributed", key=f"distributed {dev} {r['workload']} {r['processes']}",
            label=str(r["workload"]), sort=(str(r["workload"]), int(r["processes"])),
            cells={"procs": str(r["processes"]), "batch": str(r.get("meta_batch", "—")),
                   "eps": f(r.get("episodes_per_s"), ".2f"), "ratio": f(r.get("speedup"), ".2f") + "×",
                   "eff": f(100 * eff if isinstance(eff, (int, float)) else None, ".0f") + "%"}, **base))
    return out


def _threads_policy_entries(d: dict, path: Path, file: str) -> list[Entry]:
    """The rows of a benchmarks/threads_policy.py result.

    One training step at 1 and 2 threads, OMP_WAIT_POLICY ACTIVE and PASSIVE (and GOMP_SPINCOUNT=N as SPIN=N), on a
    quiet machine and beside a busy neighbour; ms against 1 thread ACTIVE on the same machine state.

    Args:
        d: The result file's JSON object.
        path: The file (named in errors).
        file: The file's name as the page shows it.

    Raises:
        ConfigError: A key is missing or of the wrong type.
    """
    _need(d, path, {"rows": list, "command": str, "git": dict, "machine": dict}, "threads_policy result")
    base = dict(file=file, when=_utc(d.get("timestamp")), commit=d["git"].get("commit"), dirty=d["git"].get("dirty"),
                machine=d["machine"], commands=[d["command"]],
                note=f"Workload: {d['workload']}." if d.get("workload") else "")
    rows = [r for r in d["rows"] if isinstance(r, dict)]
    if len(rows) != len(d["rows"]) or not all({"neighbour", "threads", "wait_policy"} <= r.keys() for r in rows):
        _fail(path, "rows: expected mappings with 'neighbour', 'threads', 'wait_policy' and 'ms'")
    ref = {r["neighbour"]: r.get("ms") for r in rows if r["threads"] == 1 and r["wait_policy"] == "ACTIVE"}
    out = []
    for i, r in enumerate(rows):
        ms, r0 = r.get("ms"), ref.get(r["neighbour"])
        out.append(Entry(
            SPEED, group="threads",
            key=f"threads {d.get('workload')} {r['neighbour']} {r['threads']} {r['wait_policy']}",
            label=f"{r['neighbour']} machine" if r["neighbour"] == "quiet" else f"{r['neighbour']} neighbour",
            sort=(i,), cells={"threads": str(r["threads"]), "policy": str(r["wait_policy"]),
                              "ms": "—" if not isinstance(ms, (int, float)) else f"{ms:.0f}",
                              "ratio": f"{r0 / ms:.2f}×" if isinstance(ms, (int, float)) and isinstance(
                                  r0, (int, float)) and ms > 0 else "—"}, **base))
    return out


def _layers_time_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    """benchmarks/ttt_layers.py's time per token: parallel form over T tokens, one recurrent step after T."""
    commit, dirty = d["git"].get("commit"), d["git"].get("dirty")
    st = d.get("settings") if isinstance(d.get("settings"), dict) else {}
    out = []
    for i, (mixer, by_t) in enumerate(d["time"].items()):
        if not isinstance(by_t, dict):
            _fail(path, f"time.{mixer}: expected a mapping of lengths, got {by_t!r}")
        cells = {}
        for t, v in by_t.items():
            if isinstance(v, dict) and isinstance(v.get("parallel_s_per_token"), (int, float)):
                cells[f"T{t}"] = (f"{1e6 * v['parallel_s_per_token']:.0f} / "
                                  + (f"{1e6 * v['step_s_per_token']:.0f}" if isinstance(
                                      v.get("step_s_per_token"), (int, float)) else "—"))
        out.append(Entry(
            SPEED, group="layers_time", key=f"layers_time {mixer} {st.get('dim')} {st.get('time_batch')}",
            label=mixer, file=file, when=ctx.commit_time(commit), commit=commit, dirty=dirty, machine=d["machine"],
            commands=[d["command"]], sort=(i,), cells=cells,
            note=f"Width {st.get('dim')}, batch {st.get('time_batch')}." if st else ""))
    return out


def _precision_entries(d: dict, path: Path, file: str) -> list[Entry]:
    _need(d, path, {"rows": list, "command": str, "git": dict, "machine": dict}, "precision_check result")
    base = dict(file=file, when=_utc(d.get("timestamp")), commit=d["git"].get("commit"),
                dirty=d["git"].get("dirty"), machine=d["machine"], commands=[d["command"]])
    out = []
    for i, r in enumerate(d["rows"]):
        if not (isinstance(r, dict) and isinstance(r.get("fp32"), dict) and isinstance(r.get("bf16"), dict)):
            _fail(path, f"rows[{i}]: expected 'task', 'fp32' and 'bf16', got {r!r}")
        a, b = r["fp32"], r["bf16"]
        task = Path(str(r.get("task", "?"))).stem
        yes = {True: "yes", False: "no", None: "—"}
        out.append(Entry(
            SPEED, group="precision", key=f"precision {task} {d.get('steps')}", label=task, sort=(task,),
            n=a.get("episodes"),
            cells={"steps": str(d.get("steps")), "fp32": fmt_acc(a["accuracy"], a["ci95"]),
                   "bf16": fmt_acc(b["accuracy"], b["ci95"]),
                   "inside": f"{yes[r.get('bf16_inside_fp32_ci')]} / {yes[r.get('fp32_inside_bf16_ci')]}",
                   "ratio": f"{r['train_speedup']:.2f}×" if isinstance(r.get("train_speedup"), (int, float))
                   else "—"}, **base))
    return out


def _ttt_speed_entries(d: dict, path: Path, file: str, ctx: _Context) -> list[Entry]:
    _need(d, path, {"loop_s": (int, float), "batched_s": (int, float), "speedup": (int, float)}, "ttt_speed result")
    commit, dirty = _split_commit(d.get("commit"))
    dev = d.get("device", "?")
    cuda = str(dev).startswith("cuda")
    machine = {"gpu": d.get("device_name") if cuda else None, "cpu": None if cuda else d.get("device_name"),
               "threads": d.get("threads"), "torch": d.get("torch")}
    return [Entry(
        SPEED, group="ttt_speed", key=f"ttt_speed {dev} {d.get('batched_images')}",
        label=f"{d.get('model', 'ResNet-26')}, {d.get('steps')} steps × {d.get('copies')}",
        file=file, when=ctx.commit_time(commit), commit=commit, dirty=dirty, machine=machine,
        commands=[d["command"]] if d.get("command") else [], n=d.get("batched_images"),
        cells={"images": f"{d.get('loop_images')} / {d.get('batched_images')}",
               "loop": f"{d.get('loop_images_per_s', float('nan')):.3f}",
               "batched": f"{d.get('batched_images_per_s', float('nan')):.3f}",
               "ratio": f"{d['speedup']:.2f}×", "agree": str(d.get("predictions_agree", "—"))})]


def _vmap_norm_entries(d: dict, path: Path, file: str) -> list[Entry]:
    out = []
    for i, r in enumerate(d["rows"]):
        if not isinstance(r, dict) or not isinstance(r.get("rel_diff"), (int, float)):
            _fail(path, f"rows[{i}]: expected a mapping with a numeric 'rel_diff', got {r!r}")
        out.append(Entry(
            SPEED, group="vmap_norm", key=f"vmap_norm {r.get('model')} {r.get('dtype')} {r.get('inner_steps')}",
            label=str(r.get("model")), file=file, sort=(i,),
            note="This file records no command, commit or machine" + (
                f" (torch {d['torch']})." if d.get("torch") else "."),
            cells={"dtype": str(r.get("dtype")), "steps": str(r.get("inner_steps")), "diff": f"{r['rel_diff']:.1e}"}))
    return out


# ------------------------------------------------------------------------------------------------- input

def _kind(data) -> str | None:
    """Which reader a JSON file is for (None: not a result file this report knows)."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    known = {RESULT_KIND: "bench", "metalearn-maml-sinusoid": "sinusoid", "metalearn-cpu-throughput": "throughput",
             "metalearn-precision-check": "precision", "metalearn-distributed-throughput": "distributed",
             "metalearn-threads-policy": "threads", "metalearn-demo": "demo", "distill": "distill",
             "metalearn-maml-variants": "maml_variants", "metalearn-optimizer-search": "search",
             # read but not tabulated: the validation evidence behind a task-file choice, cited in the notes
             "metalearn-siamese-support-score": "evidence", "metalearn-matchnet-support-score": "evidence"}
    if kind is not None:
        return known.get(kind)
    keys = data.keys()
    if "schema_version" in keys:
        return None
    if {"accuracy", "ci95", "episodes", "ways", "shots", "checkpoint"} <= keys:
        return "eval"
    if {"task", "settings", "meta_training"} <= keys:
        return "lstm"
    if {"family", "command", "result"} <= keys and isinstance(data["result"], dict):
        return "searched"
    if {"command", "tasks", "settings", "budget"} <= keys and isinstance(data["tasks"], dict):
        return "ssl"
    if {"command", "tasks", "settings", "git"} <= keys and isinstance(data["tasks"], dict) and (
            set(data["tasks"]) & set(LAYER_TASKS) or data["tasks"] == {} and isinstance(data.get("time"), dict)):
        return "layers"
    if {"runs", "command"} <= keys and isinstance(data["runs"], dict):
        return "ttt"
    if {"loop_s", "batched_s", "speedup"} <= keys:
        return "ttt_speed"
    if {"machine", "args", "results"} <= keys:
        return "maml_speed"
    rows = data.get("rows")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) and "rel_diff" in r for r in rows):
        return "vmap_norm"
    return None


KNOWN_FILES = ("metalearn bench results, metalearn eval --json outputs, and the JSON files of "
               "metalearn demo --json, benchmarks/maml_sinusoid.py, lstm_optimizer.py, searched_optim.py, "
               "optimizer_search.py, distill.py, "
               "ttt_eval.py, ttt_tasks.py, "
               "ttt_layers.py, ttt_speed.py, maml_speed.py, maml_variants.py, cpu_throughput.py, threads_policy.py, distributed_throughput.py, "
               "precision_check.py, vmap_norm_check.py and support_score.py")


def _display(p: Path, base: Path) -> str:
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


@dataclass
class Loaded:
    entries: list[Entry]
    files: int
    problems: list[str]


def load_entries(results_dir: str | os.PathLike, docs_dir: str | os.PathLike | None = None,
                 skip_invalid: bool = False) -> Loaded:
    """Every result file under ``results_dir`` (and ``DOCS/img/lstm_*.json``), read by its family's reader.

    A file directly in ``results_dir`` that is not a bench result, or a result with missing or ill-typed keys,
    is an error naming it (all of them are listed), unless ``skip_invalid``, which leaves such files out and
    returns one note per file. A JSON file in a subfolder that no reader recognises is left out with a note.

    Args:
        results_dir: The folder of result files.
        docs_dir: The docs folder whose ``img/lstm_*.json`` are read too (None: none).
        skip_invalid: Leave unreadable result files out (with a note each) instead of raising.

    Returns:
        The entries, the number of files read and the notes.

    Raises:
        ConfigError: ``results_dir`` is not a directory, or (without ``skip_invalid``) a result file cannot be used.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ConfigError(f"--results: {str(results_dir)!r} is not a directory (run `metalearn bench SUITE` "
                          "first, or name the folder holding the result JSON files)")
    base = results_dir.resolve().parent
    paths = sorted(p for p in results_dir.rglob("*.json") if p.is_file())
    if docs_dir is not None and (Path(docs_dir) / "img").is_dir():
        paths += sorted(p for p in (Path(docs_dir) / "img").glob("lstm_*.json") if p.is_file())
    ctx = _Context(results_dir)
    problems: list[str] = []
    ignored: list[str] = []   # JSON files of another kind beside the results (a new benchmark's output, say)
    parsed: list[tuple[Path, str, dict]] = []
    bench: list[dict] = []
    for p in paths:
        try:
            try:
                data = json.loads(p.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                data = None           # read_result below names the problem
            kind = _kind(data)
            if kind == "bench" or (kind is None and p.parent == results_dir):
                # strict: schema version, keys, and names and hashes fit for file names
                data = read_result(p)
                bench.append(data)
                kind = "bench"
            elif kind is None:
                if data is None:
                    read_result(p)    # raises with the reason (not JSON, cannot read)
                ignored.append(f"{p}: not a result file metalearn report reads, left out (it reads {KNOWN_FILES})")
                continue
            parsed.append((p, kind, data))
        except ConfigError as e:
            problems.append(str(e))
    entries: list[Entry] = []
    docs_base = Path(docs_dir).resolve().parent if docs_dir is not None else base
    for p, kind, data in parsed:
        file = _display(p, base if p.resolve().is_relative_to(results_dir.resolve()) else docs_base)
        try:
            if kind == "bench":
                entries.append(_bench_entry(data, file, ctx))
            elif kind == "eval":
                e = _eval_entry(data, p, file, bench, ctx)
                if e is not None:
                    entries.append(e)
            elif kind == "sinusoid":
                entries += _sinusoid_entries(data, p, file)
            elif kind == "lstm":
                entries += _lstm_entries(data, p, file, ctx)
            elif kind == "searched":
                entries += _searched_entries(data, p, file, ctx)
            elif kind == "search":
                entries += _search_entries(data, p, file, ctx)
            elif kind == "ssl":
                entries += _ssl_entries(data, p, file, ctx)
            elif kind == "layers":
                entries += _layers_entries(data, p, file, ctx)
                if isinstance(data.get("time"), dict) and data["time"]:
                    entries += _layers_time_entries(data, p, file, ctx)
            elif kind == "threads":
                entries += _threads_policy_entries(data, p, file)
            elif kind == "demo":
                entries += _demo_entries(data, p, file)
            elif kind == "distill":
                entries += _distill_entries(data, p, file, ctx)
            elif kind == "ttt":
                entries += _ttt_entries(data, p, file, ctx)
            elif kind == "ttt_speed":
                entries += _ttt_speed_entries(data, p, file, ctx)
            elif kind == "maml_speed":
                entries += _maml_speed_entries(data, p, file, ctx)
            elif kind == "throughput":
                entries += _throughput_entries(data, p, file)
            elif kind == "maml_variants":
                entries += _maml_variants_entries(data, p, file)
            elif kind == "precision":
                entries += _precision_entries(data, p, file)
            elif kind == "distributed":
                entries += _distributed_entries(data, p, file)
            elif kind == "vmap_norm":
                entries += _vmap_norm_entries(data, p, file)
        except ConfigError as e:
            problems.append(str(e))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            problems.append(f"{p}: a {kind} result this report cannot read ({type(e).__name__}: {e})")
    # paths inside the checkout the results belong to read relative to it (commands run from the repository root)
    prefix = base.as_posix().rstrip("/") + "/"
    for e in entries:
        e.commands = [c.replace(prefix, "") for c in e.commands]
        e.note = e.note.replace(prefix, "")
    if problems and not skip_invalid:
        head = "a result file cannot be used" if len(problems) == 1 else f"{len(problems)} result files cannot be used"
        raise ConfigError(f"{head} (pass --skip-invalid to leave them out):\n  " + "\n  ".join(problems))
    return Loaded(entries, len(paths) - len(problems) - len(ignored), problems + ignored)


#: the order of a family's sub-tables (row numbers follow it)
GROUP_ORDER = {"": 0, "searched": 1, "search": 2, "ssl": 2, "layers": 3, "demo": 4}


def select(entries: list[Entry]) -> tuple[dict[str, list[Entry]], set[int]]:
    """The summary rows per family (the newest entry of each key, see the module docstring) and the ids of
    the entries chosen."""
    best: dict[tuple[str, str], Entry] = {}
    for e in entries:
        k = (e.family, e.key)
        if k not in best or (not e.other_recipe, e.order) > (not best[k].other_recipe, best[k].order):
            best[k] = e
    rows: dict[str, list[Entry]] = {}
    for e in best.values():
        rows.setdefault(e.family, []).append(e)
    for fam in rows:
        rows[fam].sort(key=lambda e: (GROUP_ORDER.get(e.group, 9), e.group, e.sort, e.key))
    return rows, {id(e) for e in best.values()}


# --------------------------------------------------------------------------------------------- markdown

def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(_cell(c) for c in r) + " |" for r in rows)]


def _n(e: Entry) -> str:
    return e.n_text or ("—" if e.n is None else str(e.n))


def _ours(e: Entry) -> str:
    return "—" if e.value is None else fmt_acc(e.value, e.ci, e.digits)


def _published(e: Entry) -> str:
    """The published value at the precision it was published with (computed means: ``pub_digits``)."""
    if e.published is None:
        return "—"
    if e.pub_digits is not None:
        return fmt_acc(e.published, e.published_ci, e.pub_digits)
    def g(v: float) -> str:
        t = f"{v:g}"
        return t if any(c in t for c in ".e") else t + ".0"     # 97.0 as published, not 97
    return g(e.published) + ("" if e.published_ci is None else f" ± {g(e.published_ci)}")


def _provenance(e: Entry) -> str:
    """``file · commit · date · machine``, leaving out what the file does not record when it records none."""
    parts = [_code(e.file)]
    if e.commit or e.when or e.machine:
        parts += [f"commit {commit_label(e.commit, e.dirty)}", e.when[:10] if e.when else "time not recorded",
                  machine_long(e.machine)]
    return " · ".join(parts)


def _unique(items) -> list:
    return list(dict.fromkeys(i for i in items if i))


def _commands(entries: list[Entry], prefix: str, with_source: bool = True, label: bool = True) -> list[str]:
    """One paragraph per result file and command.

    Each paragraph holds the row numbers (anchors), the rows' names, the file, commit, date and machine, notes and
    published sources, and the command(s) in a shell block.

    Args:
        entries: The rows, numbered from 1 in this order.
        prefix: The prefix of the anchors (``<prefix>-<row number>``).
        with_source: Add the published sources.
        label: Name the rows.

    Returns:
        The markdown lines.
    """
    groups: dict[tuple, list[tuple[int, Entry]]] = {}
    for i, e in enumerate(entries, 1):
        groups.setdefault((e.file, tuple(e.commands)), []).append((i, e))
    lines = []
    for (_, commands), members in groups.items():
        e = members[0][1]
        anchors = "".join(f'<a id="{prefix}-{i}"></a>' for i, _ in members)
        nums = ", ".join(str(i) for i, _ in members)
        names = "; ".join(_unique(_cell(m.label) for _, m in members))
        extra = _unique(m.note for _, m in members)
        sources = _unique(m.source for _, m in members)
        if with_source and sources:
            extra.append(f"Published: {'; '.join(sources)}.")
        lines += [f"{anchors}**{nums}.** " + (f"{names}: " if label else "") + _provenance(e)
                  + (". " + " ".join(extra) if extra else ""), ""]
        if commands:
            lines += ["```sh", *[wrap_command(c) for c in commands], "```", ""]
        elif not any("no command" in x for x in extra):
            lines += ["The file records no command.", ""]
    return lines


def _image(name: str, alt: str, images: dict[str, str] | None) -> list[str]:
    if images is None or name not in images:
        return []
    return [f"![{alt}]({images[name]})", ""]


def _linked(e: Entry, prefix: str, i: int) -> str:
    """The row's label as a link to its command below the table (markdown-escaped for a table cell)."""
    label = _cell(e.label).replace("[", "\\[").replace("]", "\\]")
    return f"[{label}](#{prefix}-{i})"


def _lead_in(what: str, lower_better: bool) -> str:
    side = "below" if lower_better else "above"
    return (f"{what} Δ is ours minus published; \"in CI?\" says whether the published value lies inside ours ± "
            f"95% CI (\"{side}\": ours is better beyond the CI, \"no\": worse). Each name links to the row's "
            "command.")


def _budget_cell(e: Entry) -> str:
    return fmt_budget(e.steps, e.recipe) + (" †" if e.extra.get("model_from") else "")


def render_fewshot(rows: list[Entry], images: dict | None) -> str:
    if not rows:
        return ("_No few-shot results yet: run `metalearn bench SUITE` (for example `metalearn bench "
                "tasks/suites/protonet_omniglot.yaml`) and then `metalearn report`._")
    demo = [(i, e) for i, e in enumerate(rows, 1) if e.group == "demo"]
    main = [(i, e) for i, e in enumerate(rows, 1) if e.group != "demo"]
    t1 = [[_linked(e, FEWSHOT, i), _ours(e), _n(e), _published(e), fmt_delta(e.value, e.published),
           fmt_inside(e.value, e.ci, e.published)] for i, e in main]
    t2 = [[_linked(e, FEWSHOT, i), _budget_cell(e), fmt_duration(e.train_s), machine_label(e.machine)]
          for i, e in main]
    lines = [_lead_in("Test accuracy % (mean ± 95% CI over n test episodes of 15 queries per class).", False), "",
             *_table(["task", "ours", "n", "published", "Δ", "in CI?"], t1), "",
             "How each row was trained: steps against the recipe (the task file's `train.steps`), time and machine"
             + (" († the model of another row, evaluated at this row's setting)." if any(
                 e.extra.get("model_from") for e in rows) else "."), "",
             *_table(["task", "train steps / recipe", "train time", "machine"], t2), "",
             *_image("fewshot", "Few-shot test accuracy, ours with 95% CI and the published value", images),
             *_image("fewshot_curves", "Training curves of the few-shot rows", images)] if main else []
    if demo:
        t3 = [[_linked(e, FEWSHOT, i), _ours(e), e.cells["nn"], _n(e), f"{e.steps}", fmt_duration(e.train_s),
               machine_label(e.machine)] for i, e in demo]
        lines += ["**`metalearn demo`** on the bundled data (test accuracy % ± 95% CI; no published number: its "
                  "own setting, beside 1-NN on raw pixels as a floor):", "",
                  *_table(["setting", "ProtoNet", "1-NN on pixels", "n", "steps", "time", "machine"], t3), ""]
    return "\n".join(lines)


def render_sinusoid(rows: list[Entry], images: dict | None) -> str:
    if not rows:
        return ("_No sinusoid results yet: run `python benchmarks/maml_sinusoid.py --out results/maml_sinusoid` "
                "and then `metalearn report`._")
    t1 = [[_linked(e, SINUSOID, i), _ours(e), _n(e), _published(e), fmt_delta(e.value, e.published, 3),
           fmt_inside(e.value, e.ci, e.published, lower_better=True)] for i, e in enumerate(rows, 1)]
    t2 = [[_linked(e, SINUSOID, i), fmt_budget(e.steps, e.recipe), fmt_duration(e.train_s),
           machine_label(e.machine)] for i, e in enumerate(rows, 1)]
    lines = [_lead_in("Test MSE after one inner step on K points (mean ± 95% CI over n held-out tasks).", True), "",
             *_table(["algorithm", "ours (MSE)", "n", "published", "Δ", "in CI?"], t1), "",
             f"Meta-iterations against the recipe's {SINUSOID_RECIPE_ITERATIONS} (Finn et al. 2017, §5.1), time "
             "and machine:", "",
             *_table(["algorithm", "meta-iterations / recipe", "train time", "machine"], t2), "",
             *_image("sinusoid", "Sinusoid regression MSE, ours with 95% CI and the published value", images)]
    return "\n".join(lines)


def render_lstm(rows: list[Entry], images: dict | None) -> str:
    if not rows:
        return ("_No learned-optimizer results yet: run `python benchmarks/lstm_optimizer.py quadratic` and then "
                "`metalearn report`._")
    idx = {id(e): i for i, e in enumerate(rows, 1)}
    lstm = [e for e in rows if e.group == ""]
    searched = [e for e in rows if e.group == "searched"]
    search = [e for e in rows if e.group == "search"]
    lines = []
    if lstm:
        t1 = [[_linked(e, LSTM, idx[id(e)]), _ours(e), e.cells["baseline"], e.cells["paired"], e.cells["wins"]]
              for e in lstm]
        t2 = [[_linked(e, LSTM, idx[id(e)]), e.cells["lr"], f"{e.steps} iterations", fmt_duration(e.train_s),
               machine_label(e.machine)] for e in lstm]
        lines += ["**The LSTM optimizer** (Andrychowicz et al. 2016): optimisee loss at the end of the horizon (mean ± "
                  "95% CI over the held-out test optimisees; lower is better) of the LSTM and of the best of SGD, NAG, "
                  "RMSprop and Adam, each with its learning rate tuned on other optimisees; \"LSTM − best\" is the "
                  "paired difference on the same optimisees, \"lower on\" on how many of them the LSTM ends lower. "
                  "Each name links to the row's command.", "",
                  *_table(["setting", "LSTM", "best baseline", "LSTM − best", "lower on"], t1), "",
                  "The best baseline with its tuned learning rate, and the LSTM's meta-training (one optimizer serves "
                  "every setting of a task):", "",
                  *_table(["setting", "best baseline, lr", "meta-training", "time", "machine"], t2), "",
                  *_image("lstm", "Learned optimizer: LSTM loss with 95% CI and the best tuned baseline", images)]
    if searched:
        t1 = [[_linked(e, LSTM, idx[id(e)]), e.cells["ours_name"], e.cells["baseline"], e.cells["paired"],
               e.cells["wins"]] for e in searched]
        t2 = [[_linked(e, LSTM, idx[id(e)]), e.cells["metric"], e.cells["lr"], fmt_duration(e.train_s),
               machine_label(e.machine)] for e in searched]
        lines += ["**Searched update rules** (PowerSign and AddSign, Bello et al. 2017): the best of their variants "
                  "against the best tuned classical optimizer, under the same protocol (loss at the end of the "
                  "horizon, lower is better; on CIFAR-10 test accuracy % over seeds, higher is better).", "",
                  *_table(["setting", "best searched", "best baseline", "searched − best", "lower on"], t1), "",
                  *_table(["setting", "measure", "tuned lr (searched, baseline)", "time", "machine"], t2), ""]
    if search:
        t1 = [[_linked(e, LSTM, idx[id(e)]), e.cells["rule"], e.cells["ours"], e.cells["baseline"],
               e.cells["paired"], e.cells["wins"]] for e in search]
        t2 = [[_linked(e, LSTM, idx[id(e)]), e.cells["random"], e.cells["samples"], fmt_duration(e.train_s),
               machine_label(e.machine)] for e in search]
        lines += ["**The search itself** (Neural Optimizer Search at small scale, `benchmarks/optimizer_search.py`): "
                  "the best rule a REINFORCE controller found on the proxy (4 MNIST MLPs, 100 steps), re-tuned and "
                  "run on held-out test optimisees (loss after 100 steps, mean ± 95% CI, lower is better) against the "
                  "best tuned baseline (SGD, NAG, RMSprop, Adam, PowerSign, AddSign); the rows after the first are "
                  "MLPs the rules were not searched on.", "",
                  *_table(["setting", "best found rule", "its loss", "best baseline", "found − best", "lower on"],
                          t1), "",
                  "Random search with the same number of sampled rules, its best rule on the same test optimisees:",
                  "",
                  *_table(["setting", "random search's best", "rules sampled, controller / random", "time",
                           "machine"], t2), ""]
    return "\n".join(lines)


def render_ttt(rows: list[Entry], images: dict | None) -> str:
    if not rows:
        return ("_No Test-Time Training results yet: run `python benchmarks/ttt_eval.py run ...` (docs/ttt.md) and "
                "then `metalearn report`._")
    ssl = [(i, e) for i, e in enumerate(rows, 1) if e.group == "ssl"]
    main = [(i, e) for i, e in enumerate(rows, 1) if e.group == ""]
    t1 = [[_linked(e, TTT, i), _ours(e), _n(e), _published(e), fmt_delta(e.value, e.published, 1),
           fmt_inside(e.value, e.ci, e.published, lower_better=True)] for i, e in main]
    t_clean = [[_linked(e, TTT, i), e.cells["clean"], str(e.extra["clean_n"]), e.cells["paper_clean"]]
               for i, e in main]
    t2 = [[_linked(e, TTT, i), fmt_budget(e.steps, e.recipe), fmt_duration(e.train_s), machine_label(e.machine)]
          for i, e in main]
    lines = [] if not main else [_lead_in(
                      "CIFAR-10-C level 5, error % averaged over the 15 corruptions (± 95% CI over the n test "
                      "images of each image's mean error, where every set used the same images; the papers use all "
                      f"{TTT_PROTOCOL_IMAGES}).", True), "",
             *_table(["method", "ours, mean(15)", "n", "published", "Δ", "in CI?"], t1), "",
             "The clean test images (error %, ± binomial 95% CI):", "",
             *_table(["method", "ours, clean", "n", "published"], t_clean), "",
             "Training steps of each model against the recipe (150 epochs), time and machine:", "",
             *_table(["method", "train steps / recipe", "train time", "machine"], t2), "",
             *_image("ttt", "CIFAR-10-C level 5 error, ours with 95% CI and the published value", images)]
    if ssl:
        t3 = [[_linked(e, TTT, i), e.cells["joint"], e.cells["ttt"], e.cells["online"], e.cells["d_ttt"],
               e.cells["d_online"]] for i, e in ssl]
        t4 = [[_linked(e, TTT, i), _n(e), e.cells["budget"], fmt_duration(e.train_s), machine_label(e.machine)]
              for i, e in ssl]
        lines += ["**Self-supervised tasks side by side** (benchmarks/ttt_tasks.py; one training budget for every "
                  "task): error % averaged over the corruptions, and the paired difference to joint training on "
                  "the same images (± 95% CI). There is no published number for this comparison.", "",
                  *_table(["SSL task", "joint", "TTT", "TTT-Online", "TTT − joint", "Online − joint"], t3), "",
                  *_table(["SSL task", "n", "joint training", "time", "machine"], t4), ""]
    layers = [(i, e) for i, e in enumerate(rows, 1) if e.group == "layers"]
    if layers:
        lines += ["**TTT layers for sequences** (Sun et al. 2024; benchmarks/ttt_layers.py): one residual block with "
                  "each sequence mixer, trained for the same steps on synthetic in-context tasks, then scored by "
                  "sequence length T. There is no published number for these tasks.", ""]
        for task, sig in _unique((e.cells["task"], e.cells["sig"]) for _, e in layers):
            g = [(i, e) for i, e in layers if (e.cells["task"], e.cells["sig"]) == (task, sig)]
            lengths = sorted({t for _, e in g for t in e.cells["by_len"]}, key=lambda t: (t is None, t))
            body = [[_linked(e, TTT, i), *(e.cells["by_len"].get(t, "—") for t in lengths), e.cells["params"],
                     e.cells["budget"]] for i, e in g]
            refs = {t: r for _, e in g for t, r in e.extra["refs"].items()}
            if refs:
                body.append(["least squares", *(refs.get(t, "—") for t in lengths), "—", "—"])
            lines += [f"{task} ({sig}): {LAYER_TASKS.get(task, task)}." if sig else
                      f"{task}: {LAYER_TASKS.get(task, task)}.", "",
                      *_table(["mixer", *(f"T = {t}" for t in lengths), "params", "training"], body), ""]
    return "\n".join(lines)


def render_distill(rows: list[Entry], images: dict | None) -> str:
    if not rows:
        return ("_No dataset-distillation results yet: run `python benchmarks/distill.py tasks/distill/NAME.yaml "
                "--out runs/distill/NAME` and then `metalearn report`._")
    t1 = [[_linked(e, DISTILL, i), e.cells["ours"], _n(e), e.cells["pub"], fmt_delta(e.value, e.published, 1),
           e.cells["untrained"]] for i, e in enumerate(rows, 1)]
    t2 = [[_linked(e, DISTILL, i), fmt_budget(e.steps, e.recipe), fmt_duration(e.train_s), machine_label(e.machine)]
          for i, e in enumerate(rows, 1)]
    t3 = [[_linked(e, DISTILL, i), e.cells["baselines"]] for i, e in enumerate(rows, 1) if e.cells["baselines"] != "—"]
    lines = ["Test accuracy % of the model trained on the distilled images alone (mean ± std over n initialisations, "
             "as the paper reports it), beside the published number (Wang et al. 2018) and the untrained model "
             "(ours / published). Each name links to the row's command.", "",
             *_table(["setting", "ours", "n", "published", "Δ", "untrained"], t1), "",
             "Outer steps against the task file's `outer_steps`, time and machine:", "",
             *_table(["setting", "outer steps / recipe", "time", "machine"], t2), ""]
    if t3:
        lines += ["The same budget on real images (test accuracy %, the lr tuned on validation images):", "",
                  *_table(["setting", "baselines"], t3), ""]
    return "\n".join(lines)


#: speed sub-tables: (group, title, columns as (header, cell key))
SPEED_TABLES = [
    ("maml", "One second-order MAML meta-iteration (benchmarks/maml_speed.py): median ms, against the loop over "
             "tasks in the same process, and the meta-gradient's largest difference from the loop's",
     [("mode", "mode"), ("ms", "ms"), ("loop ms", "loop"), ("vs loop", "ratio"), ("grad. diff.", "diff")]),
    ("sinusoid", "One sinusoid meta-iteration (benchmarks/maml_sinusoid.py, meta-batch 25): vmap over tasks "
                 "against the loop, median ms",
     [("vmap ms", "vmap"), ("loop ms", "loop"), ("vmap speed-up", "ratio")]),
    ("throughput", "Training and evaluation steps with the performance levers off and with the default policy "
                   "(benchmarks/cpu_throughput.py): median ms of each, the speed-up, and the default's GFLOP/s and their % of "
                   "the machine's bf16 conv ceiling",
     [("threads", "threads"), ("levers off", "off"), ("default", "default"), ("speed-up", "ratio"),
      ("GFLOP/s", "gflops"), ("% ceiling", "pct")]),
    ("maml_variants", "Variants of one second-order MAML meta-iteration (benchmarks/maml_variants.py; 5-way 1-shot, "
                      "28x28): median ms, the speed-up against the per-task loop with NCHW weights and batch norm "
                      "from primitive ops, and the meta-gradient's error against a float64 loop",
     [("threads", "threads"), ("ms", "ms"), ("vs loop", "ratio"), ("error vs float64", "err")]),
    ("threads", "Threads and the OpenMP wait policy (benchmarks/threads_policy.py): one training step (the workload is "
                "in each file's note), median ms, on a quiet machine and next to a busy neighbour, against 1 thread "
                "with ACTIVE waiting; SPIN=N is GOMP_SPINCOUNT=N (spin N times, then sleep)",
     [("threads", "threads"), ("wait policy", "policy"), ("ms", "ms"), ("vs 1 thread ACTIVE", "ratio")]),
    ("distributed", "Data-parallel training (benchmarks/distributed_throughput.py; the meta-batch split over processes, "
                    "one thread each): episodes per second against one process",
     [("processes", "procs"), ("meta-batch", "batch"), ("episodes/s", "eps"), ("speed-up", "ratio"),
      ("efficiency", "eff")]),
    ("precision", "The same training budget in fp32 and bf16 (benchmarks/precision_check.py): test accuracy % "
                  "± 95% CI and the training speed-up",
     [("steps", "steps"), ("fp32", "fp32"), ("bf16", "bf16"), ("in each other's CI", "inside"),
      ("bf16 speed-up", "ratio")]),
    ("ttt_speed", "Standard TTT per test image, batched with vmap against the per-image loop "
                  "(benchmarks/ttt_speed.py), steps × copies per image: images per second (images: loop / batched; "
                  "agree: the same predictions)",
     [("images", "images"), ("loop img/s", "loop"), ("batched img/s", "batched"),
      ("vs loop", "ratio"), ("agree", "agree")]),
    ("layers_time", "Time per token of the sequence mixers (benchmarks/ttt_layers.py), microseconds: the parallel form "
                    "over T tokens / one recurrent step after T tokens",
     None),                                               # one column per sequence length T the file measured
    ("vmap_norm", "vmap against the loop over tasks, second order, per normalisation layer "
                  "(benchmarks/vmap_norm_check.py): largest meta-gradient difference relative to its largest entry",
     [("dtype", "dtype"), ("inner steps", "steps"), ("vmap vs loop", "diff")]),
]


def _speed_cols(cols, g: list[Entry]) -> list[tuple[str, str]]:
    """A sub-table's columns; ``None``: one per ``T<length>`` cell of its rows (time per token by length)."""
    if cols is not None:
        return cols
    keys = sorted({k for e in g for k in e.cells if k.startswith("T") and k[1:].isdigit()}, key=lambda k: int(k[1:]))
    return [(f"T = {k[1:]}", k) for k in keys]


def render_speed(rows: list[Entry], images: dict | None) -> str:
    if not rows:
        return "_No speed results yet: run the scripts in `benchmarks/` (docs/speed.md) and then `metalearn report`._"
    lines = ["Speed is a ratio against a reference measured in the same run. Each measurement links to its run: "
             "the command, the commit and the machine.", ""]
    numbered = _speed_runs(rows)
    files = [x.file for x in numbered]
    for group, title, cols in SPEED_TABLES:
        g = [e for e in rows if e.group == group]
        if not g:
            continue
        cols = _speed_cols(cols, g)
        body = [[_linked(e, SPEED, files.index(e.file) + 1), *(e.cells.get(k, "—") for _, k in cols)] for e in g]
        lines += [f"**{title}.**", "", *_table(["measurement", *(h for h, _ in cols)], body), ""]
    return "\n".join(lines)


def _speed_runs(rows: list[Entry]) -> list[Entry]:
    """One entry per result file of the speed rows, in table order (the numbered list of commands)."""
    out: list[Entry] = []
    for group, _, _ in SPEED_TABLES:
        for e in rows:
            if e.group == group and e.file not in [x.file for x in out]:
                notes = _unique(x.note for x in rows if x.file == e.file)      # every row's, not the first's
                out.append(dataclasses.replace(e, note=" ".join(notes)))
    return out


def render_runs(fam: str, rows: list[Entry]) -> str:
    """The ``NAME-runs`` block: every row's result file, commit, date, machine and command, by row number."""
    if not rows:
        return "_No runs yet._"
    if fam == SPEED:
        return "\n".join(["Commands, by run:", "", *_commands(_speed_runs(rows), "speed", label=False)])
    return "\n".join(["Commands, by row:", "", *_commands(rows, fam)])


RENDER = {FEWSHOT: render_fewshot, SINUSOID: render_sinusoid, LSTM: render_lstm, TTT: render_ttt,
          DISTILL: render_distill, SPEED: render_speed}
TITLES = dict((k, v) for k, v in PAGE_BLOCKS if v)


def render_summary(n_files: int, results_label: str) -> str:
    files = f"{n_files} result file{'s' * (n_files != 1)}"
    return (f"_Generated by `metalearn report` from {files} in `{results_label}` and `docs/img/lstm_*.json`; do "
            "not edit the generated parts by hand; commands run from the repository root. **Each row is the newest "
            "result of its task's current recipe**: newest by the "
            "time its file records (files that record none: the time of their commit), then the one with more "
            "test episodes, images or tasks; a result whose task file has changed since (comments and the "
            "published number aside) shows only when its task has no result of today's file. Every result, "
            f"including the ones a newer run replaced, is on the [history page]({HISTORY_PAGE})._")


def _status(e: Entry, chosen: set[int]) -> str:
    return "summary" if id(e) in chosen else "other recipe" if e.other_recipe else "superseded"


def render_history(entries: list[Entry], chosen: set[int]) -> str:
    """Every entry, by family and task (speed: by sub-table), newest first; the summary's row is marked."""
    if not entries:
        return "_No results yet._"
    lines = ["_Generated by `metalearn report`: every result file, grouped by task, newest first. \"summary\" marks "
             f"the row the [results page](results.md) shows (the newest of its task's current recipe); \"superseded\" "
             "rows were replaced by a newer run of the same task; \"other recipe\" rows ran a task file that has "
             "changed since (the file at their commit differs from today's). Each date links to its run: the "
             "file, commit, machine, config and command._", ""]
    for fam, title in PAGE_BLOCKS:
        if title is None:
            continue
        fam_entries = [e for e in entries if e.family == fam]
        if not fam_entries:
            continue
        lines += [f"## {title}", ""]
        numbered: list[Entry] = []
        if fam == SPEED:
            for group, gtitle, cols in SPEED_TABLES:
                g = _newest_first_within(sorted((e for e in fam_entries if e.group == group),
                                                key=lambda e: (e.sort, e.key)))
                if not g:
                    continue
                cols = _speed_cols(cols, g)
                body = []
                for e in g:
                    if e.file not in [x.file for x in numbered]:
                        numbered.append(e)
                    i = [x.file for x in numbered].index(e.file) + 1
                    body.append([_linked(e, f"h-{fam}", i), *(e.cells.get(k, "—") for _, k in cols),
                                 _status(e, chosen)])
                lines += [f"**{gtitle}.**", "", *_table(["measurement", *(h for h, _ in cols), "status"], body), ""]
            lines += ["Runs:", "", *_commands(numbered, f"h-{fam}", with_source=False, label=False)]
            continue
        keys = sorted({e.key for e in fam_entries}, key=lambda k: min(
            (GROUP_ORDER.get(e.group, 9), e.group, e.sort, e.key) for e in fam_entries if e.key == k))
        for key in keys:
            group = sorted((e for e in fam_entries if e.key == key), key=lambda e: e.order, reverse=True)
            head = group[0]
            pub = "" if head.published is None else f" Published: {_published(head)}" + (
                f" ({head.source})." if head.source else ".")
            lines += [f"### {head.label}", ""]
            if pub:
                lines += [pub.strip(), ""]
            body = []
            for e in group:
                numbered.append(e)
                budget = (("—" if e.steps is None else f"{e.steps} iterations") if fam == LSTM else _budget_cell(e))
                written = e.when[:16].replace("T", " ") or "not recorded"
                body.append([f"[{written}](#h-{fam}-{len(numbered)})", _ours(e), _n(e), budget,
                             fmt_duration(e.train_s), _status(e, chosen)])
            lines += [*_table(["written", "ours", "n", "budget", "train time", "status"], body), ""]
        lines += ["Runs:", ""]
        for i, e in enumerate(numbered, 1):
            cfg = f" · {e.config}" if e.config else ""
            lines += [f'<a id="h-{fam}-{i}"></a>**{i}.** {_cell(e.label)}: {_provenance(e)}{cfg}'
                      + (f". {e.note}" if e.note else "."), ""]
            lines += ["```sh", *[wrap_command(c) for c in e.commands], "```", ""] if e.commands else [
                "The file records no command.", ""]
    return "\n".join(lines)


def _newest_first_within(g: list[Entry]) -> list[Entry]:
    """Keep the sub-table's order of measurements; within one measurement, newest first."""
    out, seen = [], []
    for e in g:
        if e.key not in seen:
            seen.append(e.key)
    for k in seen:
        out += sorted((e for e in g if e.key == k), key=lambda e: e.order, reverse=True)
    return out


def replace_blocks(text: str, blocks: dict[str, str], where: str = "results.md",
                   headings: dict[str, str] | None = None) -> str:
    """Put each ``blocks[name]`` between its markers in ``text``; a block without markers is appended.

    Args:
        text: The page.
        blocks: The new content of each block, by name.
        where: The page's name in errors.
        headings: A heading for each block appended (none where not given).

    Returns:
        The new page.

    Raises:
        ConfigError: The page holds a block an earlier report wrote and this one no longer does, or a block's
            markers are not one begin marker followed by one end marker.
    """
    for name in LEGACY_BLOCKS:
        if begin_marker(name) in text or end_marker(name) in text:
            raise ConfigError(f"{where}: holds the block {name!r} of an earlier metalearn report, which this one "
                              f"no longer writes; remove it (both markers and what lies between) by hand")
    for name, content in blocks.items():
        begin, end = begin_marker(name), end_marker(name)
        n_begin, n_end = text.count(begin), text.count(end)
        body = f"{begin}\n{content.strip()}\n{end}"
        if n_begin == 0 and n_end == 0:
            head = (headings or {}).get(name)
            text = text.rstrip("\n") + (f"\n\n## {head}" if head else "") + f"\n\n{body}\n"
            continue
        if n_begin != 1 or n_end != 1 or text.index(begin) > text.index(end):
            raise ConfigError(f"{where}: expected one {begin!r} followed by one {end!r}; found {n_begin} and "
                              f"{n_end} (fix the markers by hand)")
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        text = pattern.sub(lambda _: body, text, count=1)
    return text


# ------------------------------------------------------------------------------------------------- plots

def _figure(width: float, height: float):
    from metalearn.extras import require
    require("matplotlib", "report", "metalearn report (the PNG plots; --no-plots writes the tables only)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    from metalearn.data.cache import atomic_write
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})  # no version stamp: stable bytes
    with atomic_write(path, mode="wb") as f:
        f.write(buf.getvalue())


def _hbars(ax, rows: list[Entry], *, xmax: float | None, xlabel: str, marker_label: str, inside: bool,
           values=None, cis=None, marks=None, mark_cis=None, mark_color=C_PUB, n_unit: str = "",
           ns=None) -> None:
    """Horizontal bars (ours ± CI, one per row, top to bottom) from 0, the reference as a marker with its CI.

    The value (with the sample size when it is below the protocol's) is written beside each bar.

    Args:
        ax: The matplotlib axes to draw on.
        rows: The rows, one bar each.
        xmax: Fixes the scale's end (100 for percentages; the axis is drawn that far and the labels may use the
            room to its right); None scales to the data.
        xlabel: The label of the x axis.
        marker_label: The legend's label of the reference markers.
        inside: Write the labels of long bars inside them.
        values: The bars' values (default: each row's value).
        cis: Their CI half-widths (default: each row's).
        marks: The reference values (default: each row's published value).
        mark_cis: The references' CI half-widths (default: each row's published CI).
        mark_color: The colour of the reference markers.
        n_unit: The unit written after a sample size (``" episodes"``).
        ns: ``(n, n_text)`` of each row, its sample size (default: each row's).
    """
    values = [e.value for e in rows] if values is None else values
    cis = [e.ci for e in rows] if cis is None else cis
    marks = [e.published for e in rows] if marks is None else marks
    mark_cis = [e.published_ci for e in rows] if mark_cis is None else mark_cis
    ns = [(e.n, e.n_text) for e in rows] if ns is None else ns
    y = list(range(len(rows)))
    ax.barh(y, values, height=0.62, color=C_OURS, label="ours (95% CI)", zorder=2)
    ax.errorbar(values, y, xerr=[c or 0 for c in cis], fmt="none", ecolor=C_OURS_DARK, capsize=3, lw=1.2, zorder=3)
    pts = [(m, yi, c or 0) for m, yi, c in zip(marks, y, mark_cis) if m is not None]
    if pts:
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], xerr=[p[2] for p in pts], fmt="D", color=mark_color,
                    ms=5, capsize=3, lw=1.2, label=marker_label, zorder=4)
    ends = [v + (c or 0) for v, c in zip(values, cis)] + [p[0] + p[2] for p in pts]
    scale = xmax if xmax is not None else max(ends) * 1.15
    texts = []
    for e, v, c, yi, (n, n_text) in zip(rows, values, cis, y, ns):
        text = fmt_acc(v, c, e.digits)
        if e.n_protocol and n is not None and n < e.n_protocol:
            text += f"  (n = {n_text or n}{n_unit})"
        texts.append(text)
    width = max(len(t) for t in texts) * 0.0105 * scale      # about one character per 1% of the axis
    room = max(ends) + width * 1.05 if not inside else scale
    top = max(scale, room)
    ax.set_xlim(0, top)
    for e, v, c, yi, text in zip(rows, values, cis, y, texts):
        mine = [p for p in pts if p[1] == yi]
        if inside and v > 0.45 * scale and all(p[0] - p[2] > v or p[0] + p[2] < len(text) * 0.0105 * scale
                                               for p in mine):
            ax.text(scale * 0.012, yi, text, va="center", ha="left", color="white", fontsize=8, zorder=5)
            continue
        x0 = v + (c or 0) + scale * 0.015
        w = len(text) * 0.0105 * scale
        if any(p[0] + p[2] >= x0 and p[0] - p[2] <= x0 + w for p in mine):
            x0 = max(p[0] + p[2] for p in mine) + scale * 0.015   # after the marker
        ax.text(x0, yi, text, va="center", ha="left", color="#222222", fontsize=8, zorder=5)
    if xmax is not None:
        ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= xmax])
        ax.spines["bottom"].set_bounds(0, xmax)
    ax.set_yticks(y, [e.label for e in rows], fontsize=8.5)
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", color="#dddddd", lw=0.6, zorder=0)
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(fig, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)


def plot_fewshot(rows: list[Entry], path: Path) -> None:
    fig = _figure(8.0, 0.34 * len(rows) + 1.3)
    ax = fig.subplots()
    _hbars(ax, rows, xmax=100.0, xlabel="test accuracy % (mean ± 95% CI)", inside=True, n_unit=" episodes",
           marker_label="published (± CI where published)")
    ax.set_title("Few-shot classification: ours against the published accuracy", fontsize=10)
    _legend(fig, ax)
    _save(fig, path)


def plot_fewshot_curves(rows: list[Entry], path: Path) -> None:
    with_curve = [e for e in rows if (e.extra.get("curve") or {}).get("step")]
    cols = 3
    nrows = math.ceil(len(with_curve) / cols)
    fig = _figure(8.0, 2.0 * nrows + 0.5)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, e in zip(axes.flat, with_curve):
        c = e.extra["curve"]
        ax.plot(c["step"], c["train_accuracy"], color=C_TRAIN, lw=1.0, label="training episodes")
        if c.get("val_step"):
            ax.plot(c["val_step"], c["val_accuracy"], "o-", color=C_OURS, lw=1.3, ms=3, label="validation")
        if e.published is not None:
            ax.axhline(e.published, color=C_PUB, ls="--", lw=1.0, label="published (test)")
        ax.set_ylim(0, 102)     # a curve at 100% stays visible above the frame
        ax.set_xlim(0, max(c["step"] + (c.get("val_step") or [])) or 1)
        ax.set_title(f"{e.label}\n{fmt_budget(e.steps, e.recipe)} steps", fontsize=7.5)
        ax.tick_params(labelsize=7)
        ax.grid(color="#eeeeee", lw=0.5)
    for ax in axes.flat[len(with_curve):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy %", fontsize=8)
    for col in range(cols):      # the lowest panel of each column names the x axis
        used = [r for r in range(nrows) if r * cols + col < len(with_curve)]
        if used:
            axes[used[-1], col].set_xlabel("training step", fontsize=8)
    handles, labels = {}, {}
    for ax in axes.flat[:len(with_curve)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle("Few-shot training curves: accuracy on training episodes and on meta-validation", fontsize=10)
    _save(fig, path)


def plot_sinusoid(rows: list[Entry], path: Path) -> None:
    fig = _figure(8.0, 0.36 * len(rows) + 1.3)
    ax = fig.subplots()
    _hbars(ax, rows, xmax=None, xlabel="test MSE after one inner step (mean ± 95% CI; lower is better)",
           inside=False, n_unit=" tasks", marker_label="published (Li et al. 2017, ± 95% CI)")
    ax.set_title("MAML sinusoid regression: ours against the published MSE", fontsize=10)
    _legend(fig, ax)
    _save(fig, path)


def plot_lstm(rows: list[Entry], path: Path) -> None:
    fig = _figure(8.0, 0.38 * len(rows) + 1.3)
    ax = fig.subplots()
    _hbars(ax, rows, xmax=None, xlabel="optimisee loss at the end of the horizon (mean ± 95% CI; lower is better)",
           inside=False, marks=[e.extra["baseline"] for e in rows], mark_cis=[e.extra["baseline_ci"] for e in rows],
           mark_color=C_BASE, marker_label="best tuned baseline, same optimisees (± 95% CI)")
    ax.set_yticks(range(len(rows)), [f"{e.label}\n(best: {e.extra['baseline_name']})" for e in rows], fontsize=8)
    ax.set_title("Learned optimizer: LSTM against the best tuned baseline", fontsize=10)
    _legend(fig, ax)
    _save(fig, path)


def plot_ttt(rows: list[Entry], path: Path) -> None:
    fig = _figure(8.0, 2 * (0.3 * len(rows) + 0.8) + 0.6)
    ax_m, ax_c = fig.subplots(2, 1, sharex=True)
    _hbars(ax_m, rows, xmax=100.0, xlabel="mean error % over the 15 corruptions", inside=False, n_unit=" images",
           marker_label="published")
    _hbars(ax_c, rows, xmax=100.0, xlabel="error % on the clean test images", inside=False, n_unit=" images",
           values=[e.extra["clean"] for e in rows], cis=[e.extra["clean_ci"] for e in rows],
           marks=[e.extra["paper_clean"] for e in rows], mark_cis=[None] * len(rows),
           marker_label="published", ns=[(e.extra["clean_n"], "") for e in rows])
    ax_m.tick_params(axis="x", labelbottom=True)
    ax_m.set_title("15 corruptions (mean)", fontsize=9, loc="left")
    ax_c.set_title("clean test images", fontsize=9, loc="left")
    fig.suptitle("CIFAR-10-C level 5 (lower is better): ours (95% CI) against the published error", fontsize=10)
    _legend(fig, ax_m)
    _save(fig, path)


PLOTS = {"fewshot": (FEWSHOT, plot_fewshot), "sinusoid": (SINUSOID, plot_sinusoid), "lstm": (LSTM, plot_lstm),
         "ttt": (TTT, plot_ttt)}


# ------------------------------------------------------------------------------------------------ driver

@dataclass
class ReportSummary:
    results_md: Path
    rows: int
    files: int
    images: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    history_md: Path | None = None

    def message(self) -> str:
        return (f"metalearn report: {self.rows} row{'s' * (self.rows != 1)} from {self.files} result "
                f"file{'s' * (self.files != 1)} -> {self.results_md}"
                + (f" and {self.history_md.name}" if self.history_md else "")
                + (f", {len(self.images)} plot{'s' * (len(self.images) != 1)} in {self.results_md.parent / 'img'}"
                   if self.images else ""))


def _default_page() -> str:
    parts = ["# Results", "", begin_marker(SUMMARY), end_marker(SUMMARY)]
    for name, title in PAGE_BLOCKS[1:]:
        parts += ["", f"## {title}", "", begin_marker(name), end_marker(name), "",
                  begin_marker(f"{name}-runs"), end_marker(f"{name}-runs")]
    return "\n".join(parts) + "\n"


def write_report(results: str | os.PathLike = "results", docs: str | os.PathLike = "docs", *, plots: bool = True,
                 skip_invalid: bool = False) -> ReportSummary:
    """Regenerate docs/results.md (its generated blocks), docs/results_history.md and the ``results-*.png`` plots.

    The plots go to docs/img/; stale ones from earlier reports, ``bench-*.png`` included, are removed.

    Args:
        results: The folder of result files.
        docs: The docs folder.
        plots: Draw the plots (needs matplotlib, the ``report`` extra).
        skip_invalid: Leave unreadable result files out instead of raising.

    Returns:
        What was written: the pages, the number of rows and files, the plots and the files left out.

    Raises:
        ConfigError: ``docs`` is not a directory, a result file cannot be used (without ``skip_invalid``), or a
            page's markers are broken.
        MissingExtraError: ``plots`` without matplotlib.
    """
    from metalearn.data.cache import atomic_write

    docs = Path(docs)
    if not docs.is_dir():
        raise ConfigError(f"--docs: {str(docs)!r} is not a directory")
    if plots:  # fail before writing anything when matplotlib is missing
        from metalearn.extras import require
        require("matplotlib", "report", "metalearn report (the PNG plots; --no-plots writes the tables only)")
    loaded = load_entries(results, docs, skip_invalid)
    rows, chosen = select(loaded.entries)
    md, hist = docs / "results.md", docs / HISTORY_PAGE
    text = md.read_text() if md.is_file() else _default_page()
    hist_text = hist.read_text() if hist.is_file() else "# Results history\n"
    img_dir = docs / "img"
    # which plots there will be (every page is rendered, and its markers checked, before any file is written)
    todo: list[tuple[str, object, list[Entry]]] = []
    if plots:
        todo = [(name, fn, [e for e in rows[fam] if e.group == ""]) for name, (fam, fn) in PLOTS.items()
                if any(e.group == "" for e in rows.get(fam, []))]
        if any((e.extra.get("curve") or {}).get("step") for e in rows.get(FEWSHOT, [])):
            todo.append(("fewshot-curves", plot_fewshot_curves, rows[FEWSHOT]))
    images = {name.replace("-", "_"): f"img/{IMG_PREFIX}{name}.png" for name, _, _ in todo} if plots else None
    blocks = {SUMMARY: render_summary(loaded.files, Path(results).as_posix().rstrip("/") + "/")}
    for fam, fn in RENDER.items():
        blocks[fam] = fn(rows.get(fam, []), images)
        blocks[f"{fam}-runs"] = render_runs(fam, rows.get(fam, []))
    new = replace_blocks(text, blocks, str(md), TITLES)
    new_hist = replace_blocks(hist_text, {HISTORY: render_history(loaded.entries, chosen)}, str(hist))
    written: list[Path] = []
    if plots:
        img_dir.mkdir(parents=True, exist_ok=True)
        for name, fn, fam_rows in todo:
            p = img_dir / f"{IMG_PREFIX}{name}.png"
            fn(fam_rows, p)
            written.append(p)
        for prefix in (IMG_PREFIX, *LEGACY_IMG_PREFIXES):
            for old in img_dir.glob(f"{prefix}*.png"):
                if old not in written:
                    old.unlink()
    for path, old, content in ((md, text if md.is_file() else None, new),
                               (hist, hist_text if hist.is_file() else None, new_hist)):
        if content != old:
            with atomic_write(path, mode="w") as f:
                f.write(content)
    n_rows = sum(len(v) for v in rows.values())
    return ReportSummary(md, n_rows, loaded.files, written, loaded.problems, hist)
