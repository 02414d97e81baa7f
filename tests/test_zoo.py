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
