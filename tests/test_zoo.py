"""The model zoo: add only reproduced rows, sha256 checked on load, shipped models re-evaluate to their record."""
import json
import os
from pathlib import Path

import pytest

import metalearn
import metalearn.bench as bench
from metalearn.cli import main
from metalearn.zoo import add_model, manifest, pretrained, reproduces

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "tasks" / "protonet_digits_5w5s.yaml"
TINY = ["train.steps=4", "train.ways=5", "train.shots=1", "train.queries=2", "train.checkpoint_every=2",
        "train.log_every=2", "model.hidden=8", "eval.episodes=10", "eval.batch_size=5"]


def test_reproduces_rule():
    assert reproduces(98.5, 0.4, 98.8)          # published inside the CI
    assert reproduces(99.0, 0.1, 98.8)          # published below our mean
    assert not reproduces(98.0, 0.4, 98.8)
    assert not reproduces(98.0, 0.4, None)


@pytest.fixture
def digits_result(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "git_state", lambda *a, **k: {"commit": "c" * 40, "dirty": False})
    sets = [a for t in TINY for a in ("--set", t)]
    assert main(["bench", str(DIGITS), "--out-root", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
                 "--quiet", *sets]) == 0
    return next((tmp_path / "res").glob("*.json"))


def test_add_refuses_a_row_that_did_not_reproduce(tmp_path, digits_result):
    res = json.loads(digits_result.read_text())
    res["reference"]["accuracy"] = 100.0
    digits_result.write_text(json.dumps(res))
    with pytest.raises(ValueError, match="does not reproduce"):
        add_model(digits_result, zoo_dir=tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


def test_add_then_load_and_tamper(tmp_path, digits_result, capsys):
    res = json.loads(digits_result.read_text())
    res["reference"]["accuracy"] = 1.0          # a row that "reproduced", to exercise the zoo
    digits_result.write_text(json.dumps(res))
    zoo = tmp_path / "zoo"
    entry = add_model(digits_result, zoo_dir=zoo)
    assert entry["name"] == "protonet_digits_5w5s" and len(entry["sha256"]) == 64
    listed = pretrained(zoo_dir=zoo)
    assert [m["name"] for m in listed] == ["protonet_digits_5w5s"]
    assert listed[0]["accuracy"] == res["accuracy"]
    learner = pretrained("protonet_digits_5w5s", zoo_dir=zoo)
    assert not learner.training
    # the shipped check episodes re-evaluate exactly (fp32)
    from metalearn.cli import _episode_sampler
    from metalearn.config import config_from_dict
    from metalearn.train.evaluator import evaluate
    cfg = config_from_dict(entry["config"])
    r = entry["result"]
    sampler = _episode_sampler(cfg, r["split"], r["ways"], r["shots"], r["queries"], cfg.eval.batch_size, r["seed"])
    again = evaluate(learner, sampler, entry["check"]["episodes"], precision="fp32")
    assert list(again.per_episode) == entry["check"]["per_episode"]
    # an altered weights file is refused
    w = zoo / entry["weights"]
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        pretrained("protonet_digits_5w5s", zoo_dir=zoo)
    with pytest.raises(ValueError, match="no model 'nope'"):
        pretrained("nope", zoo_dir=zoo)


def test_unknown_pretrained_at_the_cli(capsys):
    assert main(["eval", "--pretrained", "no_such_model"]) == 2
    assert "no model 'no_such_model'" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


SHIPPED = sorted(manifest())


@pytest.mark.skipif(not SHIPPED, reason="the zoo ships no model yet")
@pytest.mark.skipif(not os.environ.get("METALEARN_DATA"), reason="needs the real data (METALEARN_DATA)")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_re_evaluate_to_their_record(name, tmp_path, monkeypatch):
    """Every shipped model: sha256 ok, and its first test episodes give the recorded accuracies (fp32)."""
    from metalearn.cli import _episode_sampler
    from metalearn.config import config_from_dict
    from metalearn.train.evaluator import evaluate
    entry = manifest()[name]
    learner = metalearn.pretrained(name)
    cfg = config_from_dict(entry["config"])
    r = entry["result"]
    sampler = _episode_sampler(cfg, r["split"], r["ways"], r["shots"], r["queries"], cfg.eval.batch_size, r["seed"])
    res = evaluate(learner, sampler, entry["check"]["episodes"], precision="fp32")
    recorded = entry["check"]["per_episode"]
    # the same episodes; a different CPU may round one query differently, so allow a single flipped query
    flip = 100.0 / (r["ways"] * r["queries"])
    assert max(abs(a - b) for a, b in zip(res.per_episode, recorded)) <= flip + 1e-9
    assert abs(res.accuracy - sum(recorded) / len(recorded)) <= flip


def test_add_writes_nothing_when_its_recheck_fails(tmp_path, digits_result, monkeypatch):
    res = json.loads(digits_result.read_text())
    res["reference"]["accuracy"] = 1.0
    digits_result.write_text(json.dumps(res))

    def fail(*a, **k):
        raise FileNotFoundError("no data root")
    import importlib
    monkeypatch.setattr(importlib.import_module("metalearn.train.evaluator"), "evaluate", fail)
    with pytest.raises(FileNotFoundError):
        add_model(digits_result, zoo_dir=tmp_path / "zoo")
    assert not list((tmp_path / "zoo").glob("*"))            # neither weights nor manifest


def test_add_keeps_a_modules_extra_state(tmp_path, monkeypatch):
    """Siamese saves its augmentation RNG as extra state (a dict, not a tensor): it survives the zoo round trip."""
    monkeypatch.setattr(bench, "git_state", lambda *a, **k: {"commit": "c" * 40, "dirty": False})
    sets = [a for t in [*TINY, "learner=siamese"] for a in ("--set", t)]
    assert main(["bench", str(DIGITS), "--out-root", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
                 "--quiet", *sets]) == 0
    result = next((tmp_path / "res").glob("*.json"))
    res = json.loads(result.read_text())
    res["reference"]["accuracy"] = 1.0
    result.write_text(json.dumps(res))
    zoo = tmp_path / "zoo"
    entry = add_model(result, zoo_dir=zoo)
    import torch
    state = torch.load(zoo / entry["weights"], weights_only=True)
    assert isinstance(state["_extra_state"], dict)
    assert not pretrained(entry["name"], zoo_dir=zoo).training


def test_a_model_serves_another_row_of_its_own_run_only(tmp_path, digits_result):
    """add_row: the 20-way row of a 1-shot model loads the same weights; rows of other runs are refused."""
    from metalearn.zoo import add_row, lookup
    res = json.loads(digits_result.read_text())
    res["reference"]["accuracy"] = 1.0
    digits_result.write_text(json.dumps(res))
    zoo = tmp_path / "zoo"
    entry = add_model(digits_result, zoo_dir=zoo)
    # a bench --model-from result of the same run at another shape
    other = dict(res, name="protonet_digits_3w5s", ways=3, accuracy=91.5, ci95=0.4,
                 model_from={"task": res["name"], "run_dir": res["run_dir"]}, run_dir=res["run_dir"])
    path = tmp_path / "res" / "protonet_digits_3w5s-x.json"
    path.write_text(json.dumps(other))
    row = add_row(path, zoo_dir=zoo)
    assert row["ways"] == 3 and row["accuracy"] == 91.5 and row["seed"] == res["eval_seed"]
    listed = {m["name"]: m for m in pretrained(zoo_dir=zoo)}
    assert sorted(listed) == ["protonet_digits_3w5s", "protonet_digits_5w5s"]
    assert listed["protonet_digits_3w5s"]["model"] == "protonet_digits_5w5s"
    assert (listed["protonet_digits_3w5s"]["ways"], listed["protonet_digits_5w5s"]["ways"]) == (3, 5)
    e, r = lookup("protonet_digits_3w5s", zoo_dir=zoo)
    assert e["name"] == entry["name"] and r["ways"] == 3
    a, b = pretrained("protonet_digits_3w5s", zoo_dir=zoo), pretrained("protonet_digits_5w5s", zoo_dir=zoo)
    assert all((x == y).all() for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert len(manifest(zoo)) == 1 and len(list(zoo.glob("*.pt"))) == 1       # no second weights file
    # adding it again replaces the row, it does not duplicate it
    add_row(path, zoo_dir=zoo)
    assert [r["name"] for r in manifest(zoo)["protonet_digits_5w5s"]["rows"]] == ["protonet_digits_3w5s"]
    before = (zoo / "manifest.json").read_text()
    stranger = dict(other, name="protonet_digits_4w5s",
                    model_from={"run_dir": "runs/bench/x-0123456789abcdef-deadbeef"})
    path.write_text(json.dumps(stranger))
    with pytest.raises(ValueError, match="not the run of any zoo model"):
        add_row(path, zoo_dir=zoo)
    short = dict(other, reference={"accuracy": 99.0})
    path.write_text(json.dumps(short))
    with pytest.raises(ValueError, match="does not reproduce"):
        add_row(path, zoo_dir=zoo)
    assert (zoo / "manifest.json").read_text() == before


def test_a_model_added_from_a_later_model_from_row_keeps_its_training_commit(tmp_path, digits_result):
    """add_model on a --model-from result made at a later commit: the entry records the commit the model was
    trained at (its run's name), so that the run's other rows still find it."""
    from metalearn.zoo import add_row
    res = json.loads(digits_result.read_text())
    res["reference"]["accuracy"] = 1.0
    run_dir = res["run_dir"]
    assert Path(run_dir).name.endswith("-" + "c" * 8)                      # trained at commit cccc...
    later = dict(res, git={"commit": "d" * 40, "dirty": False},
                 model_from={"task": res["name"], "run_dir": run_dir})
    path = tmp_path / "res" / "later.json"
    path.write_text(json.dumps(later))
    zoo = tmp_path / "zoo"
    entry = add_model(path, zoo_dir=zoo)
    assert entry["commit"] == "c" * 8
    other = dict(later, name="protonet_digits_3w5s", ways=3)
    path.write_text(json.dumps(other))
    assert add_row(path, zoo_dir=zoo)["name"] == "protonet_digits_3w5s"


def test_published_number_is_the_task_files_as_it_is_now(tmp_path):
    from metalearn.zoo import published_now
    task = tmp_path / "t.yaml"
    task.write_text("name: t\ndataset: omniglot\nlearner: siamese\neval:\n  ways: 5\n  shots: 1\n"
                    "reference:\n  accuracy: 96.7\n")
    res = {"task": str(task), "dataset": "omniglot", "learner": "siamese", "ways": 5, "shots": 1,
           "reference": {"accuracy": 97.3}}
    assert published_now(res) == 96.7                                     # corrected since the run
    assert published_now(dict(res, ways=20)) == 97.3                       # the file now describes another row
    assert published_now(dict(res, task=str(tmp_path / "gone.yaml"))) == 97.3
    assert published_now({"reference": 12.5}) == 12.5


ROWS = sorted(m["name"] for m in pretrained())


@pytest.mark.skipif(not os.environ.get("METALEARN_DATA"), reason="needs the real data (METALEARN_DATA)")
@pytest.mark.parametrize("name", [r for r in ROWS if r not in SHIPPED])
def test_rows_served_by_another_rows_model_evaluate_in_their_own_shape(name):
    from metalearn.cli import evaluate_pretrained
    from metalearn.zoo import lookup
    entry, row = lookup(name)
    assert row["name"] == name and entry["name"] != name
    res = evaluate_pretrained(name, episodes=3)
    assert (res["ways"], res["shots"], res["episodes"]) == (row["ways"], row["shots"], 3)
    assert res["reference"] == row["published"] and res["recorded"] is None   # 3 episodes: not the recorded run
