"""metalearn report: the summary page and the history page from small result files of every family the test
writes, the newest-row rule, budgets, plots, markers, and bad input refused with a clear message."""
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from metalearn import report
from metalearn.bench import RESULT_KIND, SCHEMA_VERSION
from metalearn.cli import main
from metalearn.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MACHINE = {"platform": "Linux-x86_64", "python": "3.11.7", "torch": "2.13.0+cpu", "cpu_count": 2,
           "cpu_model": "AMD EPYC", "torch_threads": 2, "gpu": None}
TASK_YAML = """name: {name}
dataset: omniglot
learner: protonet
train:
  ways: 20
  shots: 1
  steps: 20000
eval:
  ways: {ways}
  shots: {shots}
  episodes: 1000
reference:
  accuracy: {ref}
  source: Snell et al. 2017
"""


def fake_hash(name):
    """A 16-hex-digit config hash that spells the name (result files hold only hex hashes)."""
    return (name.encode().hex() + "0" * 16)[:16]


def make_result(name, accuracy, ci95, ref=None, ref_ci=None, *, config_hash=None, commit="c" * 40, dirty=False,
                created="2026-01-02T03:04:05+00:00", ways=5, shots=1, gpu=None, curve=True, dataset="omniglot",
                steps=30, overrides=(), episodes=1000, config_steps=None):
    pts = [10, 20, 30]
    return {
        "schema_version": SCHEMA_VERSION, "kind": RESULT_KIND, "name": name, "task": f"tasks/{name}.yaml",
        "suite": "tasks/suites/x.yaml",
        "config": {"dataset": dataset, "name": name, "train": {"steps": config_steps or steps},
                   "eval": {"episodes": episodes}},
        "config_hash": config_hash or fake_hash(name), "overrides": list(overrides), "seed": 0, "eval_seed": 1234,
        "dataset": dataset, "learner": "protonet", "split": "test", "ways": ways, "shots": shots, "queries": 15,
        "episodes": episodes, "accuracy": accuracy, "ci95": ci95,
        "reference": {"accuracy": ref, "ci95": ref_ci, "source": "Snell et al. 2017" if ref is not None else ""},
        "train": {"steps": steps, "best_step": steps, "best_val_accuracy": 97.0, "wall_s": 125.0, "sessions": 1},
        "eval_wall_s": 3.5, "peak_memory": {"bytes": 3 * 2 ** 29, "kind": "process_max_rss", "device": "cpu"},
        "git": {"commit": commit, "dirty": dirty}, "machine": dict(MACHINE, gpu=gpu), "device": "cpu",
        "command": f"metalearn bench tasks/{name}.yaml", "train_command": "metalearn train ...",
        "run_dir": f"runs/bench/{name}-{config_hash or fake_hash(name)}-{commit[:8]}", "created": created,
        "curve": {"step": pts if curve else [], "loss": [1.5, 0.9, 0.5] if curve else [],
                  "train_accuracy": [60.0, 80.0, 90.0] if curve else [], "val_step": [30] if curve else [],
                  "val_accuracy": [91.0] if curve else []},
    }


def make_sinusoid(algo="maml", shots=5, mse=0.57, ci=0.13, published=(1.13, 0.18), iterations=70000,
                  timestamp="2026-12-01T08:17:17+0000", commit="a" * 40):
    return {"kind": "metalearn-maml-sinusoid", "schema": 1, "algo": algo, "shots": shots, "mse": mse, "ci95": ci,
            "test_tasks": 100, "test_points": 100,
            "published": None if published is None else {"mse": published[0], "ci95": published[1],
                                                         "source": "Li et al. 2017 (Meta-SGD), Table 1"},
            "inside_or_below": True, "iterations": iterations, "meta_batch": 25, "inner_lr": 0.01, "meta_lr": 0.001,
            "seed": 0, "train_wall_s": 1358.3, "curve": [],
            "command": f"python benchmarks/maml_sinusoid.py --algos {algo} --shots {shots}",
            "git": {"commit": commit, "dirty": False}, "machine": MACHINE, "timestamp": timestamp,
            "speed": {"vmap_ms": 30.0, "loop_ms": 300.0, "vmap_speedup": 10.0, "repeats": 7}}


def make_lstm():
    def opt(mean, ci, lr=None):
        d = {"final": {"mean": mean, "ci95": ci, "n": 100}, "curve_mean": [2.0, 1.0, mean]}
        if lr is not None:
            d["lr"] = lr
        return d
    return {"task": "quadratic", "command": "benchmarks/lstm_optimizer.py quadratic --out runs/lstm",
            "commit": "58fa38e", "dirty_paths": [],
            "machine": {"cpu": "AMD EPYC", "cores": 2, "threads": 1, "torch": "2.13.0+cpu"},
            "meta_training": {"iterations_done": 300, "optimisee_steps": 960000, "train_seconds": 215.3},
            "settings": [{"setting": "10-d quadratics", "steps": 100, "best_baseline": "Adam",
                          "optimizers": {"SGD": opt(1.0474, 0.3027, 0.01), "Adam": opt(0.4507, 0.2606, 1.0),
                                         "LSTM": opt(0.2680, 0.2180)},
                          "paired_lstm_minus_best_baseline": {"mean": -0.1827, "ci95": 0.0819, "n": 100,
                                                              "lstm_wins": 60}}]}


def ttt_run(methods, n, labels, wrong, ttt_n=None):
    """A ttt_eval run on ``n`` images: method -> every set with the first ``wrong[method]`` images wrong."""
    sets = {}
    for s in report.TTT_SETS:
        sets[s] = {}
        for m in methods:
            k = ttt_n if (m == "ttt" and ttt_n) else n
            w = min(wrong[m], k)
            pred = [(labels[i] + 1) % 10 if i < w else labels[i] for i in range(k)]
            sets[s][m] = {"error": 100.0 * w / k, "n": k, "wall_s": 1.0, "pred": pred}
    return {"checkpoint": "runs/ttt/cpu_x/last.pt", "step": 100, "labels": labels[:n], "images": n,
            "ttt_images": ttt_n or n, "sets": sets, "complete": True}


def make_ttt(n=10, ttt_n=None, commit="b51374a", command="python benchmarks/ttt_eval.py run --out x.json"):
    labels = [i % 10 for i in range(max(n, 10))]
    return {"command": command, "commit": commit, "torch": "2.13.0+cpu", "machine": "CPU (x86_64), 1 threads",
            "runs": {"gn": ttt_run(["source", "ttt", "ttt_online"], n, labels, {"source": 5, "ttt": 2, "ttt_online": 4},
                                   ttt_n),
                     "bn": ttt_run(["source", "norm_adapt", "tent"], n, labels,
                                   {"source": 6, "norm_adapt": 3, "tent": 3})}}


def write(results_dir, *items, sub=""):
    d = results_dir / sub if sub else results_dir
    d.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(items):
        (d / f"{i:02d}-{r.get('name', r.get('algo', 'x'))}.json").write_text(json.dumps(r))


def write_task(root, name, ways=5, shots=1, ref=98.8):
    (root / "tasks").mkdir(exist_ok=True)
    (root / "tasks" / f"{name}.yaml").write_text(TASK_YAML.format(name=name, ways=ways, shots=shots, ref=ref))


@pytest.fixture
def docs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)          # task files are looked up from here (and beside results/)
    d = tmp_path / "docs"
    d.mkdir()
    return d


def run_report(tmp_path, docs, *extra):
    return main(["report", "--results", str(tmp_path / "results"), "--docs", str(docs), *extra])


def block(text, name):
    return text.split(report.begin_marker(name))[1].split(report.end_marker(name))[0]


def table(text, header_start, links=False):
    """The body rows of the markdown table whose header starts with ``header_start`` (links shown as their text
    unless ``links``)."""
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    out = []
    for ln in lines[i + 2:]:
        if not ln.startswith("| "):
            break
        out.append(ln if links else re.sub(r"\[([^\]]*)\]\(#[^)]*\)", r"\1", ln))
    return out


# ------------------------------------------------------------------------------------------------ helpers

def test_formatting_helpers_exact():
    assert report.fmt_acc(98.2912, 0.1789) == "98.29 ± 0.18"
    assert report.fmt_acc(49.42, None) == "49.42" and report.fmt_acc(0.5727, 0.1304, 3) == "0.573 ± 0.130"
    assert report.fmt_delta(98.29, 98.8) == "-0.51" and report.fmt_delta(99.404, 99.0) == "+0.40"
    assert report.fmt_delta(50.0, None) == "—"
    assert report.published_inside_ci(98.29, 0.18, 98.47) is True        # on the upper edge
    assert report.published_inside_ci(98.29, 0.18, 98.11) is True        # on the lower edge
    assert report.published_inside_ci(98.29, 0.18, 98.48) is False
    assert report.published_inside_ci(98.29, 0.18, None) is None
    assert report.fmt_inside(98.29, 0.18, 98.8) == "no"                     # ours worse beyond the CI
    assert report.fmt_inside(51.72, 0.69, 51.09) == "yes"
    assert report.fmt_inside(99.5, 0.1, 98.8) == "above"                    # ours better beyond the CI
    assert report.fmt_inside(0.57, 0.13, 1.13, lower_better=True) == "below"
    assert report.fmt_inside(1.57, 0.13, 1.13, lower_better=True) == "no"
    assert report.fmt_inside(44.7, None, 31.0, lower_better=True) == "—"
    assert report.fmt_duration(45.2) == "45 s" and report.fmt_duration(1860) == "31 min"
    assert report.fmt_duration(3 * 3600) == "3.0 h" and report.fmt_duration(None) == "—"
    assert report.fmt_budget(2500, 20000) == "2500 / 20000 (12%)"
    assert report.fmt_budget(100, 60000) == "100 / 60000 (0.17%)"
    assert report.fmt_budget(1000, 30000) == "1000 / 30000 (3.3%)"
    assert report.fmt_budget(600, None) == "600" and report.fmt_budget(None, 100) == "—"
    assert report.machine_label(MACHINE) == "AMD EPYC, 2 threads"
    assert report.machine_label(dict(MACHINE, gpu="NVIDIA H200")) == "GPU: NVIDIA H200"
    assert report.machine_label({"cpu": "x86_64", "threads": 1}) == "CPU (x86_64), 1 thread"
    assert report.machine_label("CPU (x86_64), 1 threads") == "CPU (x86_64), 1 thread"
    assert report._utc("2026-12-01T08:17:17+0000") == "2026-12-01T08:17:17"
    assert report._utc("2026-12-01T09:17:17+01:00") == "2026-12-01T08:17:17" and report._utc("soon") == ""


def test_long_commands_wrap_to_the_same_shell_words():
    cmd = ("metalearn bench tasks/matchnet_miniimagenet_5w1s.yaml --set train.threads=1 --set train.steps=1500 "
           "--set train.val_every=500 --set 'train.val_episodes=100' --set eval.episodes=600 --quiet")
    wrapped = report.wrap_command(cmd, width=60)
    lines = wrapped.split(" \\\n")
    assert len(lines) > 2 and all(len(ln) <= 60 for ln in lines)
    assert not any(ln.rstrip().endswith("--set") for ln in lines)          # an option keeps its value
    assert shlex.split(wrapped.replace("\\\n", "")) == shlex.split(cmd)
    assert report.wrap_command("short one") == "short one"
    assert report.wrap_command("x" * 120 + " 'unbalanced") == "x" * 120 + " 'unbalanced"


def test_ttt_paper_numbers_match_the_benchmark_script():
    spec = importlib.util.spec_from_file_location("ttt_eval", ROOT / "benchmarks" / "ttt_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.PAPER == report.TTT_PAPER and mod.PAPER_TENT_MEAN == report.TENT_PAPER_MEAN
    assert mod.SETS == report.TTT_SETS and mod.ROWS == report.TTT_METHODS


# ------------------------------------------------------------------------------------------- families

def test_fewshot_tables_budget_eval_rows_plots_and_idempotence(tmp_path, docs, capsys):
    write_task(tmp_path, "omni_5w1s")
    write_task(tmp_path, "omni_20w1s", ways=20, ref=96.0)
    res = tmp_path / "results"
    run = make_result("omni_5w1s", 98.70, 0.18, 98.8, steps=2500, overrides=["train.steps=2500"])
    run["command"] = f"metalearn bench {tmp_path}/tasks/omni_5w1s.yaml"           # run from elsewhere: shown relative
    write(res,
          run,                                                                   # recipe from the task file
          make_result("mini_5w5s", 66.004, 0.655, 68.20, 0.66, commit="d" * 40, dirty=True, steps=1000,
                      gpu="NVIDIA H100 80GB HBM3", shots=5, dataset="miniimagenet", episodes=600),
          make_result("digits_5w5s", 84.391, 0.312, None, shots=5, curve=False, dataset="digits", steps=600))
    # the 5-way model evaluated at 20-way with metalearn eval: a row of the 20-way task
    (res / "extra").mkdir()
    (res / "extra" / "eval_20w1s.json").write_text(json.dumps(
        {"accuracy": 94.35, "ci95": 0.17, "episodes": 600, "ways": 20, "shots": 1, "queries": 15, "split": "test",
         "dataset": "omniglot", "learner": "protonet", "checkpoint": f"{run['run_dir']}/best.pt", "step": 2500,
         "seed": 1234, "eval_wall_s": 300.0, "reference": None}))
    assert run_report(tmp_path, docs) == 0
    assert "4 rows from 4 result files" in capsys.readouterr().out
    text = (docs / "results.md").read_text()
    fs = block(text, report.FEWSHOT)
    assert table(fs, "| task | ours") == [   # sorted by dataset, learner, ways, shots
        "| digits_5w5s | 84.39 ± 0.31 | 1000 | — | — | — |",
        "| mini_5w5s | 66.00 ± 0.66 | 600 | 68.2 ± 0.66 | -2.20 | no |",
        "| omni_5w1s | 98.70 ± 0.18 | 1000 | 98.8 | -0.10 | yes |",
        "| omni_20w1s | 94.35 ± 0.17 | 600 | 96.0 | -1.65 | no |",
    ]
    assert table(fs, "| task | ours", links=True)[2].startswith("| [omni_5w1s](#fewshot-3) |")
    assert table(fs, "| task | train steps") == [
        "| digits_5w5s | 600 / 600 (100%) | 2 min | AMD EPYC, 2 threads |",
        "| mini_5w5s | 1000 / 1000 (100%) | 2 min | GPU: NVIDIA H100 80GB HBM3 |",
        "| omni_5w1s | 2500 / 20000 (12%) | 2 min | AMD EPYC, 2 threads |",
        "| omni_20w1s | 2500 / 20000 (12%) † | 2 min | AMD EPYC, 2 threads |",     # the model of omni_5w1s
    ]
    runs = block(text, "fewshot-runs")
    assert ('<a id="fewshot-3"></a>**3.** omni_5w1s: `results/00-omni_5w1s.json` · commit `cccccccc` · 2026-01-02 · '
            "AMD EPYC (2 cores), 2 threads, torch 2.13.0+cpu. Published: Snell et al. 2017.") in runs
    assert "**2.** mini_5w5s: `results/01-mini_5w5s.json` · commit `dddddddd` (dirty)" in runs
    assert "```sh\nmetalearn bench tasks/omni_5w1s.yaml\n```" in runs
    # the eval row: both commands, the training run's provenance said to be the training run's
    eval_cmd = f"metalearn eval --checkpoint {run['run_dir']} --ways 20 --shots 1 --episodes 600 --json"
    assert f"metalearn bench tasks/omni_5w1s.yaml\n{report.wrap_command(eval_cmd)}\n```" in runs
    assert "`results/extra/eval_20w1s.json`" in runs and "The model of `omni_5w1s` evaluated" in runs
    assert "records no commit or machine" in runs
    # the rule is on the page; a new page gets every family's heading
    assert "Each row is the newest result of its task" in block(text, report.SUMMARY)
    for _, title in report.PAGE_BLOCKS[1:]:
        assert f"\n## {title}\n" in text
    assert "No sinusoid results yet" in block(text, report.SINUSOID)
    # plots: the few-shot bars and curves, linked from the page
    pngs = sorted(p.name for p in (docs / "img").glob("*.png"))
    assert pngs == ["results-fewshot-curves.png", "results-fewshot.png"]
    for p in (docs / "img").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"](img/{p.name})" in text
    # idempotent: a second report changes nothing (pages and images byte for byte)
    hist = (docs / "results_history.md").read_text()
    before = {p.name: p.read_bytes() for p in (docs / "img").glob("*.png")}
    assert run_report(tmp_path, docs) == 0
    assert (docs / "results.md").read_text() == text and (docs / "results_history.md").read_text() == hist
    assert {p.name: p.read_bytes() for p in (docs / "img").glob("*.png")} == before


def test_budget_is_against_the_task_files_own_steps(tmp_path, docs):
    write_task(tmp_path, "with_file")                                     # train.steps: 20000
    r_over = make_result("with_file", 90.0, 0.5, 98.8, steps=500, overrides=["train.threads=1", "train.steps=500"])
    r_plain = make_result("no_override", 90.0, 0.5, steps=800, config_steps=1000)   # stopped before its 1000
    r_lost = make_result("no_file", 90.0, 0.5, steps=700, overrides=["train.steps=700"])  # recipe unknown
    write(tmp_path / "results", r_over, r_plain, r_lost)
    assert run_report(tmp_path, docs, "--no-plots") == 0
    rows = table(block((docs / "results.md").read_text(), report.FEWSHOT), "| task | train steps")
    budget = {r.split(" | ")[0][2:]: r.split(" | ")[1] for r in rows}
    assert budget == {"with_file": "500 / 20000 (2.5%)", "no_override": "800 / 1000 (80%)", "no_file": "700"}


def test_budget_uses_the_task_file_as_it_was_at_the_results_commit(tmp_path, docs):
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()
    git("init", "-q")
    write_task(tmp_path, "changed")                                       # train.steps: 20000 at the first commit
    git("add", "tasks")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "task")
    first = git("rev-parse", "HEAD")
    path = tmp_path / "tasks" / "changed.yaml"
    path.write_text(path.read_text().replace("steps: 20000", "steps: 7000"))   # the recipe changes later
    assert "steps: 7000" in path.read_text()
    old = make_result("changed", 90.0, 0.5, steps=10000, commit=first, overrides=["train.steps=10000"])
    unknown = make_result("changed", 91.0, 0.5, steps=5000, commit="e" * 40, overrides=["train.steps=5000"],
                          created="2026-01-03T00:00:00+00:00")
    write(tmp_path / "results", old, unknown)
    assert run_report(tmp_path, docs, "--no-plots") == 0
    hist = (docs / "results_history.md").read_text()
    assert "10000 / 20000 (50%)" in hist          # against the file of its own commit, not today's 7000
    assert "5000 / 7000 (71%)" in hist            # a commit git does not know: the file as it is now


def test_published_number_comes_from_the_task_file_as_it_is_now(tmp_path, docs):
    write_task(tmp_path, "corrected", ref=96.7)               # the reference was corrected after the run
    write_task(tmp_path, "reshaped", ways=20, ref=95.0)       # today's file is another row: the recorded one stays
    old = make_result("corrected", 96.97, 0.25, 97.3)          # recorded with the old reference
    other = make_result("reshaped", 97.0, 0.2, 98.8)
    lost = make_result("no_file", 90.0, 0.5, 91.0)
    write(tmp_path / "results", old, other, lost)
    assert run_report(tmp_path, docs, "--no-plots") == 0
    assert table(block((docs / "results.md").read_text(), report.FEWSHOT), "| task | ours") == [
        "| corrected | 96.97 ± 0.25 | 1000 | 96.7 | +0.27 | above |",
        "| no_file | 90.00 ± 0.50 | 1000 | 91.0 | -1.00 | no |",
        "| reshaped | 97.00 ± 0.20 | 1000 | 98.8 | -1.80 | no |",
    ]


def test_the_row_is_the_newest_result_of_the_task_files_current_recipe(tmp_path, docs):
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    def commit(msg):
        git("add", "tasks")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg)
        return git("rev-parse", "HEAD")
    git("init", "-q")
    write_task(tmp_path, "tried")                                         # train.ways: 20
    path = tmp_path / "tasks" / "tried.yaml"
    first = commit("20-way")
    path.write_text(path.read_text().replace("ways: 20", "ways: 60"))     # another recipe, tried later
    second = commit("60-way")
    old = make_result("tried", 99.06, 0.10, 98.9, commit=first, config_hash="1" * 16)
    new = make_result("tried", 98.77, 0.12, 98.9, commit=second, config_hash="2" * 16,
                      created="2026-01-03T00:00:00+00:00")
    write(tmp_path / "results", old, new)
    (tmp_path / "results" / "extra").mkdir()
    for r, acc in ((old, 91.5), (new, 90.0)):      # metalearn eval of each model at 20-way: its run's recipe
        (tmp_path / "results" / "extra" / f"eval_{acc}.json").write_text(json.dumps(
            {"accuracy": acc, "ci95": 0.2, "episodes": 1000, "ways": 20, "shots": 1, "queries": 15,
             "split": "test", "dataset": "omniglot", "learner": "protonet", "checkpoint": f"{r['run_dir']}/best.pt",
             "step": 20000, "seed": 1234, "eval_wall_s": 30.0, "reference": None}))

    def row():
        assert run_report(tmp_path, docs, "--no-plots") == 0
        return table(block((docs / "results.md").read_text(), report.FEWSHOT), "| task | ours")
    assert row() == ["| tried | 98.77 ± 0.12 | 1000 | 98.8 | -0.03 | yes |",     # today's file: the newest
                     "| tried_20w1s | 90.00 ± 0.20 | 1000 | — | — | — |"]
    # reverted to 20-way, with a new comment and a corrected published number: the 20-way results are the rows
    path.write_text("# a comment\n" + path.read_text().replace("ways: 60", "ways: 20").replace("98.8", "98.7"))
    assert row() == ["| tried | 99.06 ± 0.10 | 1000 | 98.7 | +0.36 | above |",
                     "| tried_20w1s | 91.50 ± 0.20 | 1000 | — | — | — |"]
    hist = (docs / "results_history.md").read_text()
    assert hist.count("| other recipe |") == 2 and hist.count("| summary |") == 2
    # no result of today's recipe at all: the newest one shows
    path.write_text(path.read_text().replace("steps: 20000", "steps: 5000"))
    assert row() == ["| tried | 98.77 ± 0.12 | 1000 | 98.7 | +0.07 | yes |",
                     "| tried_20w1s | 90.00 ± 0.20 | 1000 | — | — | — |"]


def test_newest_result_per_task_and_superseded_runs_on_the_history_page(tmp_path, docs):
    write_task(tmp_path, "omni_5w1s")
    older_better = make_result("omni_5w1s", 98.90, 0.15, 98.8, config_hash="1" * 16, commit="1" * 40,
                               created="2026-01-01T00:00:00+00:00", overrides=["matchnet.scale=10", "train.threads=1"])
    newer = make_result("omni_5w1s", 97.00, 0.20, 98.8, config_hash="2" * 16, commit="2" * 40,
                        created="2026-02-01T00:00:00+00:00")
    newest_other_task = make_result("omni_5w5s", 99.0, 0.1, shots=5, created="2025-01-01T00:00:00+00:00")
    write(tmp_path / "results", older_better, newer, newest_other_task)
    (docs / "img").mkdir()
    (docs / "img" / "bench-curve-gone-0000000000000000.png").write_bytes(b"x")     # an earlier report's plot
    (docs / "img" / "hand-made.png").write_bytes(b"x")
    assert run_report(tmp_path, docs) == 0
    text = (docs / "results.md").read_text()
    rows = table(block(text, report.FEWSHOT), "| task | ours")
    assert [r.split(" | ")[:2] for r in rows] == [["| omni_5w1s", "97.00 ± 0.20"], ["| omni_5w5s", "99.00 ± 0.10"]]
    assert "Each row is the newest result of its task" in text
    assert "98.90" not in block(text, report.FEWSHOT)
    hist = (docs / "results_history.md").read_text()
    section = hist.split("### omni_5w1s")[1].split("###")[0]
    assert "Published: 98.8 (Snell et al. 2017)." in section
    assert table(section, "| written", links=True) == [
        "| [2026-02-01 00:00](#h-fewshot-1) | 97.00 ± 0.20 | 1000 | 30 / 30 (100%) | 2 min | summary |",
        "| [2026-01-01 00:00](#h-fewshot-2) | 98.90 ± 0.15 | 1000 | 30 / 30 (100%) | 2 min | superseded |",
    ]
    # the superseded run's config (its overrides, not the thread count) and command are on the history page
    assert (f'<a id="h-fewshot-2"></a>**2.** omni_5w1s: `results/00-omni_5w1s.json` · commit `11111111` · 2026-01-01 · '
            "AMD EPYC (2 cores), 2 threads, torch 2.13.0+cpu") in hist
    assert "config `1111111111111111`: matchnet.scale=10." in hist
    names = {p.name for p in (docs / "img").iterdir()}
    assert "bench-curve-gone-0000000000000000.png" not in names and "hand-made.png" in names


def test_same_time_the_larger_sample_wins(tmp_path, docs):
    res = tmp_path / "results"
    small = make_ttt(n=10, ttt_n=4, command="python benchmarks/ttt_eval.py run --set eval.images=10 --out a.json")
    large = make_ttt(n=20, command="python benchmarks/ttt_eval.py run --set eval.images=20 --out b.json")
    del large["runs"]["gn"]["sets"]["clean"]["ttt"]                    # standard TTT only in the small file
    write(res, small, large, sub="ttt")
    assert run_report(tmp_path, docs, "--no-plots") == 0
    rows = table(block((docs / "results.md").read_text(), report.TTT), "| method | ours")
    n = {r.split(" | ")[0][2:]: r.split(" | ")[2] for r in rows}
    assert n == {"joint training": "20", "TTT": "4", "joint training, TTT's images": "4", "TTT-Online": "20",
                 "source (BN)": "20", "norm adapt (BN)": "20", "Tent (BN)": "20"}


def test_sinusoid_table_and_its_speed_row(tmp_path, docs):
    res = tmp_path / "results"
    write(res, make_sinusoid(), make_sinusoid("metasgd", 10, 0.6, 0.1, (0.53, 0.09), iterations=30000),
          make_sinusoid("fomaml", 5, 0.9, 0.2, None, iterations=30000),
          make_sinusoid(mse=0.8, ci=0.2, timestamp="2026-11-01T00:00:00+0000"), sub="maml_sinusoid")  # older
    assert run_report(tmp_path, docs) == 0
    text = (docs / "results.md").read_text()
    s = block(text, report.SINUSOID)
    assert table(s, "| algorithm | ours") == [
        "| MAML, K=5 | 0.570 ± 0.130 | 100 | 1.13 ± 0.18 | -0.560 | below |",
        "| first-order MAML, K=5 | 0.900 ± 0.200 | 100 | — | — | — |",
        "| Meta-SGD, K=10 | 0.600 ± 0.100 | 100 | 0.53 ± 0.09 | +0.070 | yes |",
    ]
    assert table(s, "| algorithm | meta-iterations")[1].startswith(
        "| first-order MAML, K=5 | 30000 / 70000 (43%) | 23 min | AMD EPYC, 2 threads |")
    assert "| MAML, K=5 | 30.0 | 300.0 | 10.00× |" in table(block(text, report.SPEED), "| measurement | vmap ms")
    assert "0.800 ± 0.200" in (docs / "results_history.md").read_text()
    assert (docs / "img" / "results-sinusoid.png").stat().st_size > 5000


def test_lstm_table_from_docs_img(tmp_path, docs):
    (tmp_path / "results").mkdir()
    (docs / "img").mkdir()
    (docs / "img" / "lstm_quadratic.json").write_text(json.dumps(make_lstm()))
    assert run_report(tmp_path, docs, "--no-plots") == 0
    s = block((docs / "results.md").read_text(), report.LSTM)
    assert table(s, "| setting | LSTM") == [
        "| 10-d quadratics | 0.268 ± 0.218 | 0.451 ± 0.261 | -0.183 ± 0.082 | 60 / 100 |"]
    assert table(s, "| setting | best baseline, lr") == [
        "| 10-d quadratics | Adam 1 | 300 iterations | 4 min | AMD EPYC, 1 thread |"]
    assert "`docs/img/lstm_quadratic.json`" in block((docs / "results.md").read_text(), "lstm-runs")


def test_searched_update_rules_beside_the_lstm(tmp_path, docs):
    def opt(mean, ci, lr):
        return {"lr": lr, "final": {"mean": mean, "ci95": ci, "n": 100}}
    res = tmp_path / "results" / "searched_optim"
    res.mkdir(parents=True)
    (res / "quadratic.json").write_text(json.dumps({
        "family": "quadratic", "command": "python benchmarks/searched_optim.py quadratic", "commit": "e" * 40,
        "dirty": False, "machine": dict(MACHINE, torch_threads=1), "wall_s": 43.0,
        "result": {"setting": "10-d quadratics", "steps": 100, "optimizers": {
            "Adam": opt(0.4507, 0.2606, 1.0), "SGD": opt(1.0474, 0.3027, 0.01), "AddSign": opt(0.8044, 0.2891, 0.01)},
            "best_classical": "Adam", "best_searched": "AddSign",
            "paired_best_searched_minus_best_classical": {"mean": 0.3534, "ci95": 0.0952, "n": 100, "searched_wins": 3}}}))
    (res / "quadratic_smoke.json").write_text((res / "quadratic.json").read_text())     # a smoke run: its own row
    assert run_report(tmp_path, docs, "--no-plots") == 0
    s = block((docs / "results.md").read_text(), report.LSTM)
    assert "The LSTM optimizer" not in s                                  # no LSTM file: only the searched table
    assert table(s, "| setting | best searched") == [
        "| 10-d quadratics | 0.804 ± 0.289 (AddSign) | 0.451 ± 0.261 | +0.353 ± 0.095 | 3 / 100 |",
        "| 10-d quadratics (smoke run) | 0.804 ± 0.289 (AddSign) | 0.451 ± 0.261 | +0.353 ± 0.095 | 3 / 100 |"]
    assert table(s, "| setting | measure")[0] == "| 10-d quadratics | loss | AddSign 0.01, Adam 1 | 43 s | AMD EPYC, 1 thread |"


def test_optimizer_search_rows(tmp_path, docs):
    def opt(mean, ci, lr, formula=None):
        return {"lr": lr, "final": {"mean": mean, "ci95": ci, "n": 100}, "formula": formula}
    res = tmp_path / "results" / "optimizer_search"
    res.mkdir(parents=True)
    held = {"setting": "base", "optimizers": {
        "Adam": opt(0.2012, 0.0121, 0.03), "NAG": opt(0.1661, 0.0118, 1.0),
        "controller #1": opt(0.1502, 0.0110, 0.1, "sign(m̂) · √|g|"),
        "random #1": opt(0.3001, 0.0200, 1.0, "g")},
        "best_baseline": "NAG", "best_found": "controller #1",
        "paired_best_found_minus_best_baseline": {"mean": -0.0159, "ci95": 0.0042, "n": 100, "found_wins": 81}}
    none_found = {"setting": "relu", "optimizers": {"NAG": opt(0.1, 0.01, 1.0)}, "best_baseline": "NAG",
                  "best_found": None}
    (res / "mnist.json").write_text(json.dumps({
        "kind": "metalearn-optimizer-search", "command": "python benchmarks/optimizer_search.py", "commit": "e" * 40,
        "dirty": False, "machine": dict(MACHINE, torch_threads=1), "wall_s": 600.0, "smoke": False,
        "proxy": {"steps": 100}, "controller": {"samples": 300, "evaluations": 211},
        "random": {"samples": 300, "evaluations": 298}, "heldout": [held, none_found]}))
    assert run_report(tmp_path, docs, "--no-plots") == 0
    s = block((docs / "results.md").read_text(), report.LSTM)
    assert table(s, "| setting | best found rule") == [
        "| search: MLP 20 sigmoid | sign(m̂) · √\\|g\\| (controller #1, lr 0.1) | 0.150 ± 0.011 | 0.166 ± 0.012 (NAG) "
        "| -0.016 ± 0.004 | 81 / 100 |"]
    assert table(s, "| setting | random search") == [
        "| search: MLP 20 sigmoid | 0.300 ± 0.020 (g) | 300 (211 distinct) / 300 (298 distinct) | 10 min "
        "| AMD EPYC, 1 thread |"]
    (res / "mnist.json").write_text(json.dumps({"kind": "metalearn-optimizer-search", "command": "x"}))
    with pytest.raises(Exception, match="optimizer_search result"):
        report.load_entries(tmp_path / "results")


def test_ssl_tasks_table_leaves_out_tasks_not_evaluated_yet(tmp_path, docs):
    def method(err, diff):
        return {"error": err, "vs_source": diff}
    res = tmp_path / "results" / "ttt_tasks"
    res.mkdir(parents=True)
    sets = {name: {m: {"error": 50.0, "n": 200, "pred": [0] * 200} for m in ("source", "ttt", "ttt_online")}
            for name in ("clean", "gaussian_noise", "fog")}
    (res / "cifar10c_l5_cpu.json").write_text(json.dumps({
        "command": "python benchmarks/ttt_tasks.py --steps 400", "git": {"commit": "f" * 40, "dirty": False},
        "machine": dict(MACHINE, torch_threads=1), "budget": {"joint_training": "400 steps x batch 32"},
        "settings": {"steps": 400}, "tasks": {
            "rotation": {"train": {"steps": 400, "batch_size": 32, "wall_s": 900.0},
                         "eval": {"sets": sets, "mean_corrupted": {"source": method(60.0, [0.0, 0.0]),
                                                                   "ttt": method(58.5, [-1.5, 1.2]),
                                                                   "ttt_online": method(55.0, [-5.0, 2.0])}}},
            "contrastive": {"train": {"steps": 400, "batch_size": 32, "wall_s": 950.0}}}}))   # training only so far
    assert run_report(tmp_path, docs, "--no-plots") == 0
    s = block((docs / "results.md").read_text(), report.TTT)
    assert table(s, "| SSL task | joint") == ["| rotation | 60.0 | 58.5 | 55.0 | -1.5 ± 1.2 | -5.0 ± 2.0 |"]
    assert table(s, "| SSL task | n") == ["| rotation | 200 | 400 × batch 32 | 15 min | AMD EPYC, 1 thread |"]
    assert "| method | ours, mean(15)" not in s                            # no ttt_eval file: no CIFAR-10-C table


def test_ttt_layers_table_by_sequence_length(tmp_path, docs):
    res = tmp_path / "results" / "ttt_layers"
    res.mkdir(parents=True)
    train = {"cpu_s": 16.6, "steps": 500, "batch_size": 32, "params": 57572}
    (res / "ttt_layers_cpu.json").write_text(json.dumps({
        "command": "python benchmarks/ttt_layers.py --steps 500", "git": {"commit": "9" * 40, "dirty": True},
        "machine": dict(MACHINE, torch_threads=1), "settings": {"steps": 500}, "time": {},
        "tasks": {"mqar": {"ttt_linear": {"train": train, "eval": {
                      "4": {"length": 8, "accuracy": 1.0, "ci95": 0.0, "queries": 1024},
                      "32": {"length": 64, "accuracy": 0.99524, "ci95": 0.0015, "queries": 8192}}},
                           "softmax_attention": {"train": train}},                     # still training
                  "regression": {"ttt_mlp": {"train": train, "eval": {
                      "8": {"length": 16, "mse": 0.5123, "ci95": 0.05, "least_squares_mse": 0.4, "sequences": 256}}}}}}))
    assert run_report(tmp_path, docs, "--no-plots") == 0
    s = block((docs / "results.md").read_text(), report.TTT)
    assert table(s, "| mixer | T = 8") == ["| ttt_linear | 100.0 | 99.5 | 57572 | 500 × batch 32 |"]
    assert table(s, "| mixer | T = 16") == ["| ttt_mlp | 0.512 | 57572 | 500 × batch 32 |",
                                          "| least squares | 0.400 | — | — |"]
    assert "commit `99999999` (dirty)" in block((docs / "results.md").read_text(), "ttt-runs")


def test_demo_and_dataset_distillation_tables(tmp_path, docs):
    res = tmp_path / "results"
    write(res, make_result("omni_5w1s", 98.70, 0.18, 98.8))          # beside a bench row (and its history)
    (res / "demo").mkdir(parents=True)
    (res / "demo" / "demo_omniglot-0805ff18.json").write_text(json.dumps({
        "kind": "metalearn-demo", "schema": 1, "dataset": "omniglot", "steps": 800, "episodes": 600, "smoke": False,
        "results": {"5-way 1-shot": {"protonet": {"accuracy": 96.531, "ci95": 0.384},
                                     "pixel_1nn": {"accuracy": 37.382, "ci95": 0.639}}},
        "time": {"train_s": 135.8}, "command": "metalearn demo --json x.json", "git": {"commit": "0" * 40, "dirty": False},
        "machine": MACHINE, "timestamp": "2026-12-01T09:47:43+0000"}))
    (res / "distill").mkdir()
    (res / "distill" / "mnist_fixed_10.json").write_text(json.dumps({
        "kind": "distill", "name": "mnist_fixed_10", "config": {"dataset": "mnist", "init": "fixed", "batch_size": 512},
        "setting": "fixed",
        "images": 10, "inner_steps": 3, "outer_steps_done": 6000, "distill_wall_s": 540.0,
        "test": {"untrained": {"mean": 11.2, "n": 1}, "distilled": {"mean": 88.43, "n": 1}},
        "baselines": {"random real": {"lr": 0.1, "test": {"mean": 40.1, "std": 5.2, "n": 20}}, "cpu_s": 30.0},
        "command": "python benchmarks/distill.py tasks/distill/mnist_fixed_10.yaml --out runs/distill/x",
        "commit": "1" * 40, "dirty": False, "machine": MACHINE, "published": {"accuracy": 93.8, "untrained": 12.9}}))
    # a second run of the same task file under another name (--name): its recipe is the task file it ran
    (res / "distill" / "mnist_fixed_10_b1024.json").write_text(json.dumps({
        "kind": "distill", "name": "mnist_fixed_10_b1024", "setting": "fixed", "images": 10, "inner_steps": 3,
        "config": {"dataset": "mnist", "init": "fixed", "batch_size": 1024, "seed": 2, "outer_steps": 3000},
        "outer_steps_done": 3000,
        "distill_wall_s": 600.0, "test": {"untrained": {"mean": 11.2, "n": 1}, "distilled": {"mean": 90.0, "n": 1}},
        "command": "python benchmarks/distill.py tasks/distill/mnist_fixed_10.yaml --out runs/distill/y "
                   "--name mnist_fixed_10_b1024 --set batch_size=1024",
        "commit": "1" * 40, "dirty": False, "machine": MACHINE, "published": {"accuracy": 93.8, "untrained": 12.9}}))
    (tmp_path / "tasks" / "distill").mkdir(parents=True)
    (tmp_path / "tasks" / "distill" / "mnist_fixed_10.yaml").write_text("dataset: mnist\nouter_steps: 6000\n")
    assert run_report(tmp_path, docs, "--no-plots") == 0
    text = (docs / "results.md").read_text()
    assert table(block(text, report.FEWSHOT), "| setting | ProtoNet") == [
        "| omniglot 5-way 1-shot | 96.53 ± 0.38 | 37.38 ± 0.64 | 600 | 800 | 2 min | AMD EPYC, 2 threads |"]
    d = block(text, report.DISTILL)
    assert table(d, "| setting | ours") == [
        "| mnist, fixed init, 10 images, real batch 512 | 88.4 | 1 | 93.8 | -5.4 | 11.2 / 12.9 |",
        "| mnist, fixed init, 10 images, real batch 1024, seed 2, 3000 outer steps | 90.0 | 1 | 93.8 | -3.8 | 11.2 / 12.9 |"]
    assert table(d, "| setting | outer steps") == [
        "| mnist, fixed init, 10 images, real batch 512 | 6000 / 6000 (100%) | 9 min | AMD EPYC, 2 threads |",
        "| mnist, fixed init, 10 images, real batch 1024, seed 2, 3000 outer steps | 3000 / 6000 (50%) | 10 min | "
        "AMD EPYC, 2 threads |"]
    assert table(d, "| setting | baselines") == ["| mnist, fixed init, 10 images, real batch 512 | random real 40.1 ± 5.2 |"]
    assert "Published: Wang et al. 2018." in block(text, "distill-runs")


def test_ttt_table_cis_same_images_row_and_recipe(tmp_path, docs):
    res = tmp_path / "results" / "ttt"
    write(res.parent, make_ttt(n=10, ttt_n=4), sub="ttt")
    (res / "train_gn").mkdir()
    (res / "train_gn" / "metrics.jsonl").write_text(
        json.dumps({"step": 50, "epoch": 0.128, "wall_s": 700.0}) + "\n"
        + json.dumps({"step": 100, "epoch": 0.2557544757, "wall_s": 1420.3}) + "\n")
    (res / "train_gn" / "config.yaml").write_text("train:\n  epochs: 150\n  max_steps: 200\n")
    assert run_report(tmp_path, docs) == 0
    s = block((docs / "results.md").read_text(), report.TTT)
    rows = {r.split(" | ")[0][2:]: r for r in table(s, "| method | ours")}
    # joint training: 5 of 10 images wrong in every set; CI over images of the per-image mean error: 1.96·sd/√10
    assert rows["joint training"] == "| joint training | 50.0 ± 32.7 | 10 | 33.3 | +16.7 | yes |"
    assert rows["TTT"] == "| TTT | 50.0 ± 56.6 | 4 | 31.0 | +19.0 | yes |"          # 2 of its 4 images wrong
    assert rows["joint training, TTT's images"] == "| joint training, TTT's images | 100.0 ± 0.0 | 4 | 33.3 | +66.7 | no |"
    assert rows["Tent (BN)"] == "| Tent (BN) | 30.0 ± 29.9 | 10 | 14.3 | +15.7 | yes |"
    clean = {r.split(" | ")[0][2:]: r for r in table(s, "| method | ours, clean")}
    assert clean["joint training"] == "| joint training | 50.0 ± 31.0 | 10 | 8.1 |"       # binomial CI
    assert clean["Tent (BN)"] == "| Tent (BN) | 30.0 ± 28.4 | 10 | — |"
    assert "object only" not in rows                                     # no object-only run in this file
    steps = {r.split(" | ")[0][2:]: r.split(" | ")[1:3] for r in table(s, "| method | train steps")}
    assert steps["TTT"] == ["100 / 58650 (0.17%)", "24 min"] and steps["Tent (BN)"] == ["100", "—"]
    assert (tmp_path / "docs" / "img" / "results-ttt.png").stat().st_size > 5000


def test_speed_tables_of_every_speed_file(tmp_path, docs):
    res = tmp_path / "results" / "speed"
    res.mkdir(parents=True)
    (res / "maml_speed_cpu-551b716.json").write_text(json.dumps({
        "machine": {"python": "3.11.7", "torch": "2.13.0+cpu", "device": "cpu", "gpu": None, "cpu": "x86_64",
                    "threads": 1},
        "args": {"device": "cpu", "tasks": 8, "repeats": 3, "json": "runs/m.json", "compile": False},
        "results": [{"setting": "5w1s-1step", "mode": "loop", "tasks": 8, "ms_median": 1474.4},
                    {"setting": "5w1s-1step", "mode": "vmap", "tasks": 8, "ms_median": 3617.0,
                     "max_grad_diff_rel": 0.0014, "speedup_vs_loop": 0.4076},
                    {"setting": "5w1s-1step", "mode": "bf16", "skipped": "CUDA only"}]}))
    (res / "cpu_throughput-abcdef12.json").write_text(json.dumps({
        "kind": "metalearn-cpu-throughput", "schema": 1, "command": "python benchmarks/cpu_throughput.py --threads 1",
        "git": {"commit": "abcdef12" * 5, "dirty": False}, "machine": MACHINE, "device": "cpu",
        "timestamp": "2026-12-01T09:00:00+0000", "quick": False, "records": [],
        "rows": [{"workload": "ceiling_conv", "threads": 1, "off_ms": 400.0, "default_ms": 55.0, "speedup": 7.27,
                  "default_gflops": 1075.0},
                 {"workload": "protonet_train", "threads": 1, "off_ms": 515.0, "default_ms": 130.0, "speedup": 3.96,
                  "default_gflops": 160.8, "pct_of_bf16_conv_ceiling": 32.2, "eager_tail_ms": 200.0,
                  "kernel_speedup": 1.538,
                  "eager_tail_profile": {"share": {"batch norm": 0.37, "pooling": 0.20, "conv backward": 0.20,
                                                   "other": 0.03}},
                  "default_profile": {"share": {"conv backward": 0.21, "batch norm": 0.33, "pooling": 0.30,
                                                "element-wise": 0.12, "other": 0.04}}},
                 {"workload": "maml2_vmap", "threads": 1, "off_error": "timed out after 600 s"}]}))
    (res / "precision_check-abcdef12.json").write_text(json.dumps({
        "kind": "metalearn-precision-check", "schema": 1, "steps": 1000, "command": "python benchmarks/precision_check.py",
        "git": {"commit": "abcdef12" * 5, "dirty": False}, "machine": MACHINE, "timestamp": "2026-12-01T10:00:00+0000",
        "rows": [{"task": "tasks/protonet_omniglot_5w1s.yaml",
                  "fp32": {"accuracy": 97.1, "ci95": 0.3, "episodes": 1000, "train_wall_s": 400.0},
                  "bf16": {"accuracy": 97.0, "ci95": 0.3, "episodes": 1000, "train_wall_s": 200.0},
                  "bf16_inside_fp32_ci": True, "fp32_inside_bf16_ci": True, "train_speedup": 2.0}]}))
    (res.parent / "ttt").mkdir()
    (res.parent / "ttt" / "ttt_speed_cpu.json").write_text(json.dumps({
        "device": "cpu", "device_name": "x86_64", "threads": 1, "torch": "2.13.0+cpu", "commit": "8687aaa",
        "command": "python benchmarks/ttt_speed.py --device cpu", "model": "ResNet-26 GN", "steps": 10, "copies": 32,
        "loop_images": 8, "batched_images": 8, "loop_s": 63.6, "batched_s": 82.3, "loop_images_per_s": 0.1258,
        "batched_images_per_s": 0.0972, "speedup": 0.7732, "predictions_agree": "8/8"}))
    (res / "distributed_throughput_cpu.json").write_text(json.dumps({
        "kind": "metalearn-distributed-throughput", "command": "python benchmarks/distributed_throughput.py --procs 1 2",
        "git": {"commit": "d" * 40, "dirty": True}, "machine": dict(MACHINE, torch_threads=1), "device": "cpu",
        "note": "measured on a loaded machine", "rows": [
            {"workload": "maml", "processes": 2, "meta_batch": 8, "episodes_per_s": 3.24, "speedup": 1.957,
             "scaling_efficiency": 0.979},
            {"workload": "maml", "processes": 1, "meta_batch": 8, "episodes_per_s": 1.65, "speedup": 1.0,
             "scaling_efficiency": 1.0}]}))
    (res / "threads_policy-abcdef12.json").write_text(json.dumps({
        "kind": "metalearn-threads-policy", "schema": 1, "workload": "protonet_train", "command": "python x.py",
        "git": {"commit": "abcdef12" * 5, "dirty": False}, "machine": MACHINE, "timestamp": "2026-12-01T09:41:37+0000",
        "rows": [{"neighbour": "quiet", "threads": 1, "wait_policy": "ACTIVE", "ms": 180.0},
                 {"neighbour": "quiet", "threads": 2, "wait_policy": "PASSIVE", "ms": 150.0}]}))
    (res / "time_per_token_cpu.json").write_text(json.dumps({
        "command": "python benchmarks/ttt_layers.py --time-only", "git": {"commit": "9" * 40, "dirty": False},
        "machine": MACHINE, "settings": {"dim": 64, "time_batch": 4}, "tasks": {},
        "time": {"ttt_linear": {"128": {"parallel_s_per_token": 4.78e-05, "step_s_per_token": 5.07e-04},
                                "2048": {"parallel_s_per_token": 4.96e-05, "step_s_per_token": 5.28e-04}}}}))
    (res / "vmap_norm_check.json").write_text(json.dumps({"torch": "2.13.0+cpu", "rows": [
        {"model": "conv + nn.GroupNorm", "dtype": "float64", "inner_steps": 2, "rel_diff": 6.47e-16}]}))
    assert run_report(tmp_path, docs, "--no-plots") == 0
    s = block((docs / "results.md").read_text(), report.SPEED)
    assert table(s, "| measurement | mode", links=True) == [
        "| [5w1s-1step, 8 tasks](#speed-1) | vmap | 3617 | 1474 | 0.41× | 1.4e-03 |",
        "| [5w1s-1step, 8 tasks](#speed-1) | bf16 | CUDA only | 1474 | — | — |"]
    assert table(s, "| measurement | threads", links=True) == [
        "| [ceiling_conv](#speed-2) | 1 | 400 | 55.0 | 7.27× | 1075 | — |",
        "| [protonet_train](#speed-2) | 1 | 515 | 130 | 3.96× | 161 | 32 |",
        "| [maml2_vmap](#speed-2) | 1 | — | — | error | — | — |"]
    assert table(s, "| measurement | threads | wait policy", links=True) == [
        "| [quiet machine](#speed-3) | 1 | ACTIVE | 180 | 1.00× |", "| [quiet machine](#speed-3) | 2 | PASSIVE | 150 | 1.20× |"]
    assert table(s, "| measurement | processes", links=True) == [
        "| [maml](#speed-4) | 1 | 8 | 1.65 | 1.00× | 100% |", "| [maml](#speed-4) | 2 | 8 | 3.24 | 1.96× | 98% |"]
    assert table(s, "| measurement | steps", links=True) == [
        "| [protonet_omniglot_5w1s](#speed-5) | 1000 | 97.10 ± 0.30 | 97.00 ± 0.30 | yes / yes | 2.00× |"]
    assert table(s, "| measurement | images", links=True) == [
        "| [ResNet-26 GN, 10 steps × 32](#speed-6) | 8 / 8 | 0.126 | 0.097 | 0.77× | 8/8 |"]
    assert table(s, "| measurement | T = 128", links=True) == ["| [ttt_linear](#speed-7) | 48 / 507 | 50 / 528 |"]
    assert table(s, "| measurement | dtype", links=True) == ["| [conv + nn.GroupNorm](#speed-8) | float64 | 2 | 6.5e-16 |"]
    runs = block((docs / "results.md").read_text(), "speed-runs")
    assert ('<a id="speed-1"></a>**1.** `results/speed/maml_speed_cpu-551b716.json` · commit `551b716` · time not '
            "recorded · CPU (x86_64), 1 thread, torch 2.13.0+cpu. The command is rebuilt") in runs
    assert report.wrap_command("python benchmarks/maml_speed.py --device cpu --tasks 8 --repeats 3 --json runs/m.json"
                               ) in runs
    assert "**2.** `results/speed/cpu_throughput-abcdef12.json` · commit `abcdef12` · 2026-12-01 · AMD EPYC" in runs
    assert ("protonet_train at 1 thread with the default policy, self CPU time by operator class: batch norm 33%, "
            "pooling 30%, conv backward 21%, element-wise 12%. The same step with PyTorch's own BatchNorm, max-pool "
            "and ReLU (eager_tail): batch norm 37%, pooling 20%, conv backward 20%. protonet_train at 1 thread: the fused "
            "BatchNorm/max-pool/ReLU kernel makes the default step 1.54× the same step with PyTorch's own ops "
            "(200 ms).") in runs                                            # classes under 5% left out
    assert ('<a id="speed-8"></a>**8.** `results/speed/vmap_norm_check.json`. This file records no command, commit or '
            "machine (torch 2.13.0+cpu).\n") in runs
    assert "commit `dddddddd` (dirty)" in runs and "Recorded with it: Measured on a loaded machine." in runs


def test_maml_variants_table(tmp_path, docs):
    res = tmp_path / "results" / "speed"
    res.mkdir(parents=True)
    (res / "maml_variants_1t-abcdef12.json").write_text(json.dumps({
        "kind": "metalearn-maml-variants", "schema": 1, "threads": 1, "tasks": 8, "quick": False,
        "command": "python benchmarks/maml_variants.py --threads 1", "git": {"commit": "abcdef12" * 5, "dirty": False},
        "machine": MACHINE, "timestamp": "2026-12-01T09:00:00+0000",
        "rows": [{"variant": "loop_nchw", "ms": 420.4, "speedup_vs_loop_nchw": 1.0, "meta_grad_rel_err_vs_fp64": 3e-6},
                 {"variant": "vmap_nchw", "ms": 360.0, "speedup_vs_loop_nchw": 1.1678,
                  "meta_grad_rel_err_vs_fp64": 9.8e-7}],
        "profiles": {"loop_nchw": {"share": {"conv backward": 0.4, "element-wise": 0.35, "other": 0.25}}}}))
    assert run_report(tmp_path, docs, "--no-plots") == 0
    s = block((docs / "results.md").read_text(), report.SPEED)
    assert table(s, "| measurement | threads | ms", links=True) == [
        "| [loop_nchw, 8 tasks](#speed-1) | 1 | 420 | 1.00× | 3.0e-06 |",
        "| [vmap_nchw, 8 tasks](#speed-1) | 1 | 360 | 1.17× | 9.8e-07 |"]
    runs = block((docs / "results.md").read_text(), "speed-runs")
    assert "conv backward 40%, element-wise 35%, other 25%" in runs


# -------------------------------------------------------------------------------------------- the pages

def test_hand_written_notes_kept_missing_blocks_appended_broken_markers_refused(tmp_path, docs):
    write(tmp_path / "results", make_result("omni_5w1s", 98.70, 0.18, 98.8))
    top = "# Results\n\nHand-written introduction that must survive.\n\n"
    note = "\n\nNotes: a hand-written note naming `results/x.json`.\n\n"
    (docs / "results.md").write_text(top + report.begin_marker(report.FEWSHOT) + "\nold table\n"
                                     + report.end_marker(report.FEWSHOT) + note)
    assert run_report(tmp_path, docs, "--no-plots") == 0
    text = (docs / "results.md").read_text()
    assert text.startswith(top) and note in text and "old table" not in text
    assert text.index(note) < text.index("\n## MAML sinusoid regression\n")   # the missing blocks come after
    assert report.begin_marker("fewshot-runs") in text and not (docs / "img").exists()
    assert "| [omni_5w1s](#fewshot-1) | 98.70 ± 0.18 |" in text

    (docs / "results.md").write_text("# Results\n" + report.begin_marker(report.FEWSHOT) + "\nno end marker\n")
    with pytest.raises(ConfigError, match="expected one .*BEGIN GENERATED: fewshot"):
        report.write_report(tmp_path / "results", docs, plots=False)
    (docs / "results.md").write_text("# Results\n" + report.begin_marker("bench-table") + "\nx\n"
                                     + report.end_marker("bench-table") + "\n")
    with pytest.raises(ConfigError, match="'bench-table' of an earlier metalearn report"):
        report.write_report(tmp_path / "results", docs, plots=False)


def test_empty_results_give_pages_that_say_so(tmp_path, docs):
    (tmp_path / "results").mkdir()
    assert run_report(tmp_path, docs) == 0
    text = (docs / "results.md").read_text()
    assert "from 0 result files" in text and "No few-shot results yet" in text and "No speed results yet" in text
    assert "_No results yet._" in (docs / "results_history.md").read_text()
    assert not list((docs / "img").glob("*.png"))


def test_bad_files_are_refused_with_a_clear_message(tmp_path, docs, capsys):
    res = tmp_path / "results"
    write(res, make_result("omni_5w1s", 98.70, 0.18, 98.8))
    run_report(tmp_path, docs, "--no-plots")
    before = (docs / "results.md").read_text()
    capsys.readouterr()
    cases = {
        "old.json": ({**make_result("x", 1.0, 1.0), "schema_version": 0}, "schema_version 0 is older"),
        "new.json": ({**make_result("x", 1.0, 1.0), "schema_version": SCHEMA_VERSION + 1}, "newer metalearn"),
        "other.json": ({"accuracy": 1.0}, "not a metalearn bench result"),
        "nokey.json": ({k: v for k, v in make_result("x", 1.0, 1.0).items() if k != "ci95"}, "without the key 'ci95'"),
        "sub/sinusoid.json": ({k: v for k, v in make_sinusoid().items() if k != "mse"},
                              "maml_sinusoid result without the key 'mse'"),
        "sub/badtype.json": ({**make_sinusoid(), "mse": "low"}, "mse: expected a number, got 'low'"),
        "sub/lstm.json": ({**make_lstm(), "settings": [{"setting": "x"}]}, "without the key 'optimizers'"),
        "sub/throughput.json": ({"kind": "metalearn-cpu-throughput", "rows": [], "git": {}, "machine": {}},
                                "without the key 'command'"),
    }
    for fname, (data, msg) in cases.items():
        (res / fname).parent.mkdir(exist_ok=True)
        (res / fname).write_text(json.dumps(data))
        assert run_report(tmp_path, docs, "--no-plots") == 2
        err = capsys.readouterr().err
        assert Path(fname).name in err and msg in err and "--skip-invalid" in err and "Traceback" not in err
        assert (docs / "results.md").read_text() == before            # nothing written
        (res / fname).unlink()
    (res / "sub" / "torn.json").write_text('{"kind": "metalearn-maml-sinusoid",')
    assert run_report(tmp_path, docs, "--no-plots") == 2
    assert "torn.json: line 1" in capsys.readouterr().err
    assert run_report(tmp_path, docs, "--no-plots", "--skip-invalid") == 0
    out = capsys.readouterr()
    assert "skipped" in out.err and "torn.json" in out.err and "1 row from 1 result file" in out.out
    (res / "sub" / "partial.json.tmp").write_text("{")                   # a writer's temporary is not read
    (res / "sub" / "torn.json").unlink()
    assert run_report(tmp_path, docs, "--no-plots") == 0
    # a JSON file of another kind beside the results (a new benchmark's output): left out with a warning
    (res / "sub" / "unknown.json").write_text(json.dumps({"hello": 1}))
    assert run_report(tmp_path, docs, "--no-plots") == 0
    err = capsys.readouterr().err
    assert "unknown.json: not a result file metalearn report reads, left out" in err
    (res / "unknown.json").write_text(json.dumps({"hello": 1}))         # but not directly in results/
    assert run_report(tmp_path, docs, "--no-plots") == 2
    (res / "unknown.json").unlink()
    assert run_report(tmp_path, docs / "nope") == 2
    assert main(["report", "--results", str(tmp_path / "nope"), "--docs", str(docs)]) == 2
    assert "--results" in capsys.readouterr().err


def test_names_and_hashes_that_would_leave_the_docs_folder_are_refused(tmp_path, docs, capsys):
    res = tmp_path / "results"
    bad = {"name": ["x/../../../../escaped", "../up", ".hidden", "a b", "", "n" * 201],
           "config_hash": ["../../../escaped", "ABCDEF0123456789", "0123", "0123456789abcdef/.."]}
    for key, values in bad.items():
        for value in values:
            for where in ("", "sub"):           # a bench result is checked strictly wherever it lies
                d = res / where if where else res
                d.mkdir(parents=True, exist_ok=True)
                (d / "00-result.json").write_text(json.dumps({**make_result("omni_5w1s", 98.70, 0.18, 98.8),
                                                              key: value}))
                assert run_report(tmp_path, docs) == 2
                err = capsys.readouterr().err
                assert f"{key}: expected" in err and repr(value) in err and "Traceback" not in err
                assert not (docs / "results.md").exists() and not (docs / "img").exists()
                assert not list(tmp_path.rglob("*escaped*"))
                (d / "00-result.json").unlink()
    # what bench writes is accepted
    (res / "00-result.json").write_text(json.dumps(make_result("protonet_omniglot_5w1s-v2.1", 98.70, 0.18, 98.8,
                                                               config_hash="0123456789abcdef")))
    assert run_report(tmp_path, docs, "--no-plots") == 0


def test_missing_matplotlib_names_the_extra(tmp_path, docs, monkeypatch, capsys):
    write(tmp_path / "results", make_result("omni_5w1s", 98.70, 0.18, 98.8))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run_report(tmp_path, docs) == 2
    err = capsys.readouterr().err
    assert "'matplotlib'" in err and "metalearn[report]" in err and "--no-plots" in err
    assert not (docs / "results.md").exists()                             # nothing written
    assert run_report(tmp_path, docs, "--no-plots") == 0
    assert "98.70 ± 0.18" in (docs / "results.md").read_text()
