"""``metalearn report``: the result JSON files of ``metalearn bench`` -> generated tables in docs/results.md and
PNG plots in docs/img/.

Only the text between ``<!-- BEGIN GENERATED: NAME -->`` and ``<!-- END GENERATED: NAME -->`` is rewritten
(blocks ``bench-table`` and ``bench-plots``); the hand-written prose around the markers is kept. A block
that is missing is appended at the end of the file. Plots need matplotlib (the ``[report]`` extra) and use the
Agg backend through ``matplotlib.figure.Figure`` (no pyplot, no display).
"""
from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from metalearn.bench import read_result
from metalearn.config import ConfigError

TABLE, PLOTS = "bench-table", "bench-plots"
IMG_PREFIX = "bench-"


def begin_marker(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} -->"


def end_marker(name: str) -> str:
    return f"<!-- END GENERATED: {name} -->"


# ------------------------------------------------------------------------------------------------- input

def load_results(results_dir: str | os.PathLike, skip_invalid: bool = False) -> tuple[list[dict], list[str]]:
    """Every ``*.json`` in ``results_dir`` checked by :func:`metalearn.bench.read_result`.

    A file that is not a valid result of this schema version is an error naming it (all of them are listed),
    unless ``skip_invalid``, which leaves such files out and returns one note per file.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ConfigError(f"--results: {str(results_dir)!r} is not a directory (run `metalearn bench SUITE` "
                          "first, or name the folder holding the result JSON files)")
    results, problems = [], []
    for p in sorted(results_dir.glob("*.json")):
        try:
            results.append(read_result(p))
        except ConfigError as e:
            problems.append(str(e))
    if problems and not skip_invalid:
        head = "a result file cannot be used" if len(problems) == 1 else f"{len(problems)} result files cannot be used"
        raise ConfigError(f"{head} (pass --skip-invalid to leave them out):\n  " + "\n  ".join(problems))
    return results, problems


def latest_per_config(results: list[dict]) -> list[dict]:
    """The newest result (by ``created``) for each config hash, sorted by dataset, learner, ways, shots, name."""
    best: dict[str, dict] = {}
    for r in results:
        cur = best.get(r["config_hash"])
        if cur is None or r["created"] > cur["created"]:
            best[r["config_hash"]] = r
    return sorted(best.values(), key=lambda r: (r["dataset"], r["learner"], r["ways"], r["shots"], r["name"],
                                                r["config_hash"]))


# ---------------------------------------------------------------------------------------------- formatting

def fmt_acc(accuracy: float, ci95: float | None) -> str:
    """``98.29 ± 0.18`` (two decimals; a missing CI shows the mean alone)."""
    return f"{accuracy:.2f}" if ci95 is None else f"{accuracy:.2f} ± {ci95:.2f}"


def published_inside_ci(accuracy: float, ci95: float, published: float | None) -> bool | None:
    """Whether the published value lies in our interval [accuracy - ci95, accuracy + ci95]; None without one."""
    if published is None:
        return None
    return abs(published - accuracy) <= ci95 + 1e-9


def fmt_delta(accuracy: float, published: float | None) -> str:
    """Ours minus published, signed: ``-0.51``; an em dash without a published value."""
    return "—" if published is None else f"{accuracy - published:+.2f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def machine_label(m: dict, device: str | None = None) -> str:
    """``GPU: NVIDIA H100 80GB HBM3`` or ``CPU: AMD EPYC 7B13, 2 cores, 2 threads``, plus the torch version."""
    if m.get("gpu"):
        head = f"GPU: {m['gpu']}"
    else:
        head = f"CPU: {m.get('cpu_model') or 'unknown'}, {m.get('cpu_count')} cores"
        if m.get("torch_threads"):
            head += f", {m['torch_threads']} thread{'s' * (m['torch_threads'] != 1)}"
    return f"{head}; torch {m.get('torch', '?')}"


def commit_label(git: dict) -> str:
    commit = git.get("commit")
    if not commit:
        return "unknown"
    return f"`{commit[:8]}`" + (" (dirty)" if git.get("dirty") else "")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_table(rows: list[dict], results_label: str, n_files: int) -> str:
    """The ``bench-table`` block: one row per config (the newest result), then the commands and sources."""
    files = f"{n_files} result file{'s' * (n_files != 1)}"
    if not rows:
        return (f"_Generated by `metalearn report` from {files} in `{results_label}`: no results yet; run "
                "`metalearn bench SUITE` and then `metalearn report`._")
    head = ("| # | task | dataset | setting | ours (acc ± 95% CI) | episodes | published | Δ | published in our CI "
            "| train steps | train time | peak memory | commit | machine |")
    lines = [f"_Generated by `metalearn report` from {files} in `{results_label}` (the newest result per "
             "config). Do not edit by hand: re-run `metalearn report`._", "", head,
             "|" + "---|" * head.count(" |")]
    notes = []
    for i, r in enumerate(rows, 1):
        ref = r["reference"]
        inside = published_inside_ci(r["accuracy"], r["ci95"], ref.get("accuracy"))
        published = "—" if ref.get("accuracy") is None else fmt_acc(ref["accuracy"], ref.get("ci95"))
        setting = f"{r['ways']}-way {r['shots']}-shot" + ("" if r.get("split", "test") == "test"
                                                           else f" ({r['split']} split)")
        peak = r.get("peak_memory") or {}
        peak_text = fmt_bytes(peak.get("bytes"))
        if peak.get("kind") == "process_max_rss" and peak.get("bytes") is not None:
            peak_text += " RSS"
        cells = [str(i), r["name"], r["dataset"], setting, fmt_acc(r["accuracy"], r["ci95"]), str(r["episodes"]),
                 published, fmt_delta(r["accuracy"], ref.get("accuracy")),
                 {None: "—", True: "yes", False: "no"}[inside], str(r["train"].get("steps", "—")),
                 fmt_duration(r["train"].get("wall_s")), peak_text, commit_label(r["git"]),
                 machine_label(r["machine"])]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        source = f" Published: {ref['source']}." if ref.get("source") else ""
        notes.append(f"{i}. `{r['command']}` (seed {r.get('seed')}, config `{r['config_hash']}`, "
                     f"{r['created'][:10]}).{source}")
    lines += ["", "Commands, by row:", "", *notes, "",
              "Δ is ours minus published. \"Published in our CI\" says whether the published mean lies inside "
              "ours ± 95% CI. Peak memory is `torch.cuda.max_memory_allocated` on a GPU and the process's maximum "
              "resident set size (RSS) on the CPU."]
    return "\n".join(lines)


def render_plots(images: list[tuple[str, str]]) -> str:
    """The ``bench-plots`` block: ``[(alt text, relative path), ...]`` as markdown images."""
    if not images:
        return "_No plots yet: they appear after `metalearn bench` and `metalearn report`._"
    return "\n\n".join(f"![{alt}]({path})" for alt, path in images)


def replace_blocks(text: str, blocks: dict[str, str], where: str = "results.md") -> str:
    """Put each ``blocks[name]`` between its markers in ``text``; a block without markers is appended."""
    for name, content in blocks.items():
        begin, end = begin_marker(name), end_marker(name)
        n_begin, n_end = text.count(begin), text.count(end)
        body = f"{begin}\n{content.strip()}\n{end}"
        if n_begin == 0 and n_end == 0:
            text = text.rstrip("\n") + f"\n\n{body}\n"
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
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def plot_accuracy(rows: list[dict], path: Path) -> None:
    """Bars: ours with 95% CI whiskers beside the published value (with its CI when one is given)."""
    fig = _figure(max(4.0, 1.3 * len(rows) + 2.0), 3.6)
    ax = fig.subplots()
    x = list(range(len(rows)))
    w = 0.38
    has_pub = [r["reference"].get("accuracy") is not None for r in rows]
    xo = [i - w / 2 if p else i for i, p in zip(x, has_pub)]  # ours sits centred when there is nothing beside it
    ax.bar(xo, [r["accuracy"] for r in rows], w, yerr=[r["ci95"] for r in rows], capsize=4, label="ours (95% CI)",
           color="#3b75af")
    pub = [(i + w / 2, r["reference"]["accuracy"], r["reference"].get("ci95") or 0.0) for i, r, p
           in zip(x, rows, has_pub) if p]
    if pub:
        ax.bar([i for i, _, _ in pub], [a for _, a, _ in pub], w, yerr=[c for _, _, c in pub], capsize=4,
               label="published", color="#ef8636")
    lows = [r["accuracy"] - r["ci95"] for r in rows] + [a - c for _, a, c in pub]
    ax.set_ylim(max(0.0, math.floor(min(lows) / 5) * 5 - 5), 100.0)
    ax.set_xlim(-0.75, len(rows) - 0.25)
    for xi, r in zip(xo, rows):
        ax.annotate(f"{r['accuracy']:.2f}", (xi, r["accuracy"] + r["ci95"]), ha="center", va="bottom",
                    fontsize=7, xytext=(0, 2), textcoords="offset points")
    for xi, a, c in pub:
        ax.annotate(f"{a:.2f}", (xi, a + c), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(x, [f"{r['name']}\n{r['ways']}-way {r['shots']}-shot" for r in rows], fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy, ours (mean ± 95% CI) vs published", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    _save(fig, path)


def plot_curve(r: dict, path: Path) -> bool:
    """Training loss and accuracy (train, and validation when it ran) against the step; False if no curve."""
    c = r.get("curve") or {}
    if not c.get("step"):
        return False
    fig = _figure(8.0, 3.0)
    ax_loss, ax_acc = fig.subplots(1, 2)
    mark = "." if len(c["step"]) <= 60 else None  # a short curve (or a single record) stays visible
    ax_loss.plot(c["step"], c["loss"], color="#3b75af", lw=1.2, marker=mark)
    losses = [v for v in c["loss"] if v is not None]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 100:
        ax_loss.set_yscale("log")  # a loss that falls by orders of magnitude stays readable
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_acc.plot(c["step"], c["train_accuracy"], color="#3b75af", lw=1.2, marker=mark, label="train episodes")
    if c.get("val_step"):
        ax_acc.plot(c["val_step"], c["val_accuracy"], "o-", color="#ef8636", lw=1.2, ms=3, label="validation")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{r['name']} (config {r['config_hash']}, commit {(r['git'].get('commit') or '?')[:8]})",
                 fontsize=9)
    _save(fig, path)
    return True


# ------------------------------------------------------------------------------------------------ driver

@dataclass
class ReportSummary:
    results_md: Path
    rows: int
    files: int
    images: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def message(self) -> str:
        return (f"metalearn report: {self.rows} row{'s' * (self.rows != 1)} from {self.files} result "
                f"file{'s' * (self.files != 1)} -> {self.results_md}"
                + (f", {len(self.images)} plot{'s' * (len(self.images) != 1)} in {self.results_md.parent / 'img'}"
                   if self.images else ""))


def write_report(results: str | os.PathLike = "results", docs: str | os.PathLike = "docs", *, plots: bool = True,
                 skip_invalid: bool = False) -> ReportSummary:
    """Regenerate the ``bench-table`` and ``bench-plots`` blocks of ``docs/results.md`` and the PNGs in
    ``docs/img/`` (``bench-*.png``; stale ones from earlier reports are removed)."""
    from metalearn.data.cache import atomic_write

    docs = Path(docs)
    if not docs.is_dir():
        raise ConfigError(f"--docs: {str(docs)!r} is not a directory")
    if plots:  # fail before writing anything when matplotlib is missing
        from metalearn.extras import require
        require("matplotlib", "report", "metalearn report (the PNG plots; --no-plots writes the tables only)")
    found, skipped = load_results(results, skip_invalid)
    rows = latest_per_config(found)
    md = docs / "results.md"
    img_dir = docs / "img"
    images: list[tuple[str, str]] = []
    written: list[Path] = []
    if plots and rows:
        img_dir.mkdir(parents=True, exist_ok=True)
        acc = img_dir / f"{IMG_PREFIX}accuracy.png"
        plot_accuracy(rows, acc)
        written.append(acc)
        images.append(("Accuracy, ours with 95% CI vs published", acc.relative_to(docs).as_posix()))
        for r in rows:
            p = img_dir / f"{IMG_PREFIX}curve-{r['name']}-{r['config_hash']}.png"
            if plot_curve(r, p):
                written.append(p)
                images.append((f"Training curve: {r['name']} (config {r['config_hash']})",
                               p.relative_to(docs).as_posix()))
    if plots and img_dir.is_dir():
        for old in img_dir.glob(f"{IMG_PREFIX}*.png"):
            if old not in written:
                old.unlink()
    text = md.read_text() if md.is_file() else "# Results\n"
    blocks = {TABLE: render_table(rows, Path(results).as_posix().rstrip("/") + "/", len(found))}
    if plots:
        blocks[PLOTS] = render_plots(images)
    new = replace_blocks(text, blocks, str(md))
    if new != text or not md.is_file():
        with atomic_write(md, mode="w") as f:
            f.write(new)
    return ReportSummary(md, len(rows), len(found), written, skipped)
