"""metalearn bench: suites, result JSON, skip/resume by (config hash, commit), bad input, TensorBoard extra."""
import json
import os
import signal
import sys
from pathlib import Path

import pytest

import metalearn.bench as bench
from metalearn.train import trainer  # metalearn.train the attribute is the train() function
from metalearn.cli import main
from metalearn.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "tasks" / "protonet_digits_5w5s.yaml"
TINY = ["train.steps=4", "train.ways=5", "train.shots=1", "train.queries=2", "train.checkpoint_every=2",
        "train.log_every=2", "model.hidden=8", "eval.episodes=10", "eval.batch_size=5"]
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def sets(*items):
    return [a for item in items for a in ("--set", item)]


@pytest.fixture
def commit(monkeypatch):
    """Pin the git state the runner sees; ``commit.set(sha)`` changes it."""
    class Pin:
        value = COMMIT_A

        def set(self, sha):
            self.value = sha

    pin = Pin()
    monkeypatch.setattr(bench, "git_state", lambda *a, **k: {"commit": pin.value, "dirty": False})
    return pin


def bench_args(tmp_path, suite, *extra):
    return ["bench", str(suite), "--out-root", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--quiet", *sets(*TINY), *extra]


def results(tmp_path):
    return sorted((tmp_path / "results").glob("*.json"))


def test_suite_file_forms_and_override_order(tmp_path):
    (tmp_path / "t.yaml").write_text(DIGITS.read_text())
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""# a suite in mapping form
set: [train.steps=7, train.seed=3]
tasks:
  - t.yaml                         # next to the suite file
  - task: {DIGITS}
    set: {{train.steps: 9, eval.episodes: 50}}
""")
    entries = bench.load_suite(suite)
    assert [e.task for e in entries] == [tmp_path / "t.yaml", DIGITS]
    assert entries[0].overrides == ("train.steps=7", "train.seed=3")
    assert entries[1].overrides == ("train.steps=7", "train.seed=3", "train.steps=9", "eval.episodes=50")
    assert entries[1].where == f"{suite}:5"
    plans, _ = bench.plan_suite(entries, ["train.seed=11"], tmp_path / "runs", tmp_path / "res", COMMIT_A)
    assert [p.cfg.train.steps for p in plans] == [7, 9]          # entry set after suite set
    assert [p.cfg.train.seed for p in plans] == [11, 11]         # command-line --set last
    assert plans[1].cfg.eval.episodes == 50
    assert [p.status for p in plans] == ["new", "new"]
    assert plans[0].run_dir == tmp_path / "runs" / f"protonet_digits_5w5s-{plans[0].config_hash}-aaaaaaaa"
    # the same config twice is run once
    suite.write_text(f"- {DIGITS}\n- {DIGITS}\n")
    plans, _ = bench.plan_suite(bench.load_suite(suite), [], tmp_path / "runs", tmp_path / "res", COMMIT_A)
    assert [p.status for p in plans] == ["new", "duplicate"]


def test_glob_and_single_task_file(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert [e.task for e in bench.load_suite("tasks/protonet_digits_*.yaml")] == [Path("tasks/protonet_digits_5w5s.yaml")]
    assert [e.task for e in bench.load_suite(DIGITS)] == [DIGITS]
    with pytest.raises(ConfigError, match="matches no file"):
        bench.load_suite("tasks/no_such_*.yaml")
    with pytest.raises(ConfigError, match="neither a file nor a glob"):
        bench.load_suite("tasks/no_such.yaml")


def test_config_hash_stable_across_key_order(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("dataset: digits\nname: x\ntrain: {ways: 5, shots: 5, steps: 10}\neval: {ways: 5, episodes: 20}\n")
    b.write_text("eval: {episodes: 20, ways: 5}\ntrain: {steps: 10, shots: 5, ways: 5}\nname: x\ndataset: digits\n")
    ha, hb = load_config(a).hash(), load_config(b).hash()
    assert ha == hb and len(ha) == 16
    assert load_config(a, ["train.steps=11"]).hash() != ha
    # a value given explicitly equal to its default is the same config
    assert load_config(a, ["train.lr=0.001"]).hash() == ha


def test_bench_writes_result_then_skips_and_reruns_on_new_hash_or_commit(tmp_path, commit, capsys):
    assert main(bench_args(tmp_path, DIGITS)) == 0
    files = results(tmp_path)
    assert len(files) == 1
    res = json.loads(files[0].read_text())
    cfg = load_config(DIGITS, TINY)
    assert res["schema_version"] == bench.SCHEMA_VERSION and res["kind"] == bench.RESULT_KIND
    assert res["config_hash"] == cfg.hash() and res["config"] == cfg.to_dict()
    assert res["git"] == {"commit": COMMIT_A, "dirty": False}
    assert (res["ways"], res["shots"], res["queries"], res["episodes"]) == (5, 5, 15, 10)
    assert 0 <= res["accuracy"] <= 100 and res["ci95"] >= 0
    assert res["seed"] == 0 and res["train"]["steps"] == 4 and res["train"]["sessions"] == 1
    assert res["train"]["wall_s"] > 0 and res["eval_wall_s"] > 0
    assert res["peak_memory"]["kind"] == "process_max_rss" and res["peak_memory"]["bytes"] > 0
    assert res["reference"] == {"accuracy": None, "ci95": None, "source": ""}
    m = res["machine"]
    assert m["gpu"] is None and m["cpu_count"] >= 1 and m["torch"] and m["python"]
    assert os.uname().nodename not in json.dumps(m)
    assert res["curve"]["step"] == [2, 4] and len(res["curve"]["loss"]) == 2
    assert res["command"].startswith("metalearn bench ") and "train.steps=4" in res["command"]
    assert res["train_command"].startswith("metalearn train --config ")
    # the run directory is a normal train run directory
    run = Path(res["run_dir"])
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    capsys.readouterr()

    # same hash + commit: skipped, nothing rewritten
    before = files[0].stat().st_mtime_ns
    assert main(bench_args(tmp_path, DIGITS)) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and str(files[0]) in out and "0 runs finished, 1 skipped" in out
    assert results(tmp_path) == files and files[0].stat().st_mtime_ns == before

    # a different hash runs again
    assert main(bench_args(tmp_path, DIGITS, "--set", "train.steps=6")) == 0
    assert len(results(tmp_path)) == 2
    # a different commit runs again (in a fresh run directory)
    commit.set(COMMIT_B)
    assert main(bench_args(tmp_path, DIGITS)) == 0
    new = [json.loads(p.read_text()) for p in results(tmp_path)]
    assert len(new) == 3
    assert sorted(r["git"]["commit"] for r in new if r["config_hash"] == cfg.hash()) == [COMMIT_A, COMMIT_B]
    assert len({r["run_dir"] for r in new}) == 3


def test_ctrl_c_then_rerun_resumes(tmp_path, commit, monkeypatch, capsys):
    real_train = trainer.train
    calls = []

    def train_with_ctrl_c(*args, loggers=(), **kwargs):
        calls.append(kwargs["resume"])

        def press_ctrl_c(record):
            if record["step"] == 2 and len(calls) == 1:
                os.kill(os.getpid(), signal.SIGINT)   # the trainer's handler: finish the step, write last.pt
        return real_train(*args, loggers=[*loggers, press_ctrl_c], **kwargs)

    monkeypatch.setattr(trainer, "train", train_with_ctrl_c)
    assert main(bench_args(tmp_path, DIGITS)) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert results(tmp_path) == []
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "last.pt").exists()

    assert main(bench_args(tmp_path, DIGITS, "--dry-run")) == 0
    assert "resume from step 2" in capsys.readouterr().out

    assert main(bench_args(tmp_path, DIGITS)) == 0
    assert calls == [False, True]
    (res,) = [json.loads(p.read_text()) for p in results(tmp_path)]
    assert res["train"]["steps"] == 4 and res["train"]["sessions"] == 2
    assert res["curve"]["step"] == [2, 4]
    steps = [json.loads(s)["step"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_dry_run_writes_nothing(tmp_path, commit, capsys):
    assert main(bench_args(tmp_path, DIGITS, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "(dry run)" in out and "train in" in out and "metalearn train --config" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_bad_suites_name_file_and_line(tmp_path, commit, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"- {DIGITS}\n- tasks/does_not_exist.yaml\n")
    assert main(bench_args(tmp_path, suite)) == 2
    err = capsys.readouterr().err
    assert "does_not_exist.yaml" in err and f"{suite}:2" in err and "does not exist" in err
    assert not (tmp_path / "runs").exists()                    # nothing trained before the error

    suite.write_text(f"- {DIGITS}\n- [unclosed\n")
    assert main(bench_args(tmp_path, suite)) == 2
    err = capsys.readouterr().err
    assert str(suite) in err and "line 3" in err and "malformed YAML" in err

    suite.write_text(f"- {DIGITS}\n- task: {DIGITS}\n  sett: [train.steps=3]\n")
    assert main(bench_args(tmp_path, suite)) == 2
    err = capsys.readouterr().err
    assert f"{suite}:2" in err and "sett" in err

    suite.write_text("tasks: []\n")
    assert main(bench_args(tmp_path, suite)) == 2
    assert "non-empty list" in capsys.readouterr().err

    bad_task = tmp_path / "bad_task.yaml"
    bad_task.write_text("dataset: digits\ntrain:\n  steps: 3\n   ways: 5\n")
    suite.write_text(f"- {bad_task}\n")
    assert main(bench_args(tmp_path, suite)) == 2
    err = capsys.readouterr().err
    assert str(bad_task) in err and "line 4" in err

    wrong_key = tmp_path / "wrong_key.yaml"
    wrong_key.write_text("dataset: digits\ntrain: {stepz: 3}\n")
    suite.write_text(f"- {DIGITS}\n- {wrong_key}\n")
    assert main(bench_args(tmp_path, suite)) == 2
    err = capsys.readouterr().err
    assert str(wrong_key) in err and "train.stepz" in err and f"{suite}:2" in err


def test_results_of_another_schema_are_ignored_with_a_warning(tmp_path, commit, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "old.json").write_text(json.dumps({"kind": bench.RESULT_KIND, "schema_version": 0}))
    (tmp_path / "results" / "junk.json").write_text("{not json")
    assert main(bench_args(tmp_path, DIGITS, "--dry-run")) == 0
    err = capsys.readouterr().err
    assert "old.json: schema_version 0 is older" in err and "junk.json: line 1" in err


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if not installed
    out = tmp_path / "run"
    assert main(["train", "--config", str(DIGITS), "--out", str(out), "--quiet", "--tensorboard", *sets(*TINY)]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard" in err and "metalearn[tb]" in err and "'tensorboard'" in err
    assert not (out / "last.pt").exists()


def test_tensorboard_logs_when_installed(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert main(["train", "--config", str(DIGITS), "--out", str(out), "--quiet", "--no-eval", "--tensorboard",
                 *sets(*TINY)]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert {"train/loss", "train/accuracy", "train/lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]
    logged = [json.loads(s)["loss"] for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(logged, rel=1e-6)


def test_glob_skips_test_time_training_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    (tmp_path / "a.yaml").write_text("dataset: digits\nname: a\n")
    (tmp_path / "ttt.yaml").write_text("dataset: cifar10\nname: ttt\n")
    assert [e.task.name for e in bench.load_suite(str(tmp_path / "*.yaml"))] == ["a.yaml"]
    with pytest.raises(ConfigError, match="only test-time-training tasks"):
        bench.load_suite(str(tmp_path / "t*.yaml"))
    # every episodic task of the repository, none of the TTT ones
    names = [e.task.stem for e in bench.load_suite("tasks/*.yaml")]
    assert "protonet_omniglot_5w1s" in names and not [n for n in names if n.startswith("ttt_")]


def test_model_from_evaluates_another_runs_model_as_this_tasks_row(tmp_path, commit, capsys):
    """One trained model serving two rows: the second task's result file evaluates the first run's best.pt."""
    assert main(bench_args(tmp_path, DIGITS)) == 0
    src = json.loads(results(tmp_path)[0].read_text())
    run = Path(src["run_dir"])
    best_before = (run / "best.pt").read_bytes()
    other = tmp_path / "protonet_digits_5w1s.yaml"
    other.write_text(DIGITS.read_text().replace("name: protonet_digits_5w5s", "name: protonet_digits_5w1s"))
    capsys.readouterr()
    assert main(bench_args(tmp_path, other, "--set", "eval.shots=1", "--model-from", str(run))) == 0
    out = capsys.readouterr().out
    assert f"evaluate the model of {run}" in out and "train in" not in out
    new = [json.loads(p.read_text()) for p in results(tmp_path) if "5w1s" in p.name]
    assert len(new) == 1
    res = new[0]
    assert res["name"] == "protonet_digits_5w1s" and res["shots"] == 1 and res["episodes"] == 10
    assert res["model_from"]["run_dir"] == str(run) and res["model_from"]["validated_on"]["shots"] == 5
    assert res["train"]["steps"] == src["train"]["steps"] == 4 and res["train"]["sessions"] == 1
    assert (run / "best.pt").read_bytes() == best_before                  # the source run is untouched
    # a run trained with another config is refused, naming the key
    capsys.readouterr()
    assert main(bench_args(tmp_path, other, "--set", "train.lr=0.01", "--model-from", str(run))) == 2
    assert "train.lr" in capsys.readouterr().err
