import json
import shutil

import pytest
import yaml

from metalearn.cli import main

TINY = ["--set", "train.steps=4", "--set", "train.ways=5", "--set", "train.shots=1", "--set", "train.queries=2",
        "--set", "train.checkpoint_every=2", "--set", "train.log_every=2", "--set", "model.hidden=8",
        "--set", "eval.episodes=10", "--set", "eval.batch_size=5"]


def test_demo_smoke(tmp_path, capsys):
    """The default demo: bundled Omniglot, 5-way and 20-way 1-shot against 1-NN on pixels."""
    assert main(["demo", "--smoke", "--quiet", "--out", str(tmp_path / "d"), "--json", str(tmp_path / "demo.json")]) == 0
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "demo.json").read_text())
    assert rec["kind"] == "metalearn-demo" and rec["smoke"] and rec["steps"] == 20 and rec["episodes"] == 20
    assert set(rec["results"]) == {"5-way 1-shot", "20-way 1-shot"}
    assert 0 <= rec["results"]["5-way 1-shot"]["protonet"]["accuracy"] <= 100 and rec["command"].startswith("metalearn demo")
    assert "smoke mode" in out and "Omniglot" in out
    assert "5-way 1-shot" in out and "20-way 1-shot" in out and "1-NN on pixels" in out and "±" in out


def test_demo_digits_smoke(tmp_path, capsys):
    assert main(["demo", "--dataset", "digits", "--steps", "3", "--episodes", "20", "--quiet",
                 "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "5-way 1-shot" in out and "5-way 5-shot" in out and "1-NN on pixels" in out


def test_train_then_eval_json_on_digits(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "tasks/protonet_digits_5w5s.yaml", "--out", str(run), "--quiet", *TINY]) == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["steps"] == 4 and resolved["model"]["hidden"] == 8
    assert {"best.pt", "last.pt", "metrics.jsonl", "eval.json"} <= {p.name for p in run.iterdir()}
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--ways", "4", "--shots", "2", "--episodes", "12", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["ways"], res["shots"], res["episodes"]) == (4, 2, 12)
    assert 0.0 <= res["accuracy"] <= 100.0 and res["ci95"] >= 0.0

    # resume a finished run to a larger step count continues from last.pt
    assert main(["train", "--config", "tasks/protonet_digits_5w5s.yaml", "--out", str(run), "--quiet", "--resume",
                 "--no-eval", *TINY, "--set", "train.steps=6"]) == 0
    steps = [json.loads(s)["step"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_cli_bad_inputs(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "tasks/protonet_digits_5w5s.yaml", "--out", str(run), "--quiet",
                 "--no-eval", *TINY]) == 0
    capsys.readouterr()
    # same directory again without --resume
    assert main(["train", "--config", "tasks/protonet_digits_5w5s.yaml", "--out", str(run), "--quiet", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    # resume with a different model
    assert main(["train", "--config", "tasks/protonet_digits_5w5s.yaml", "--out", str(run), "--quiet", "--resume",
                 *TINY, "--set", "model.hidden=16"]) == 2
    assert "model.hidden" in capsys.readouterr().err
    # a checkpoint from a different model under a run directory
    other = tmp_path / "other"
    shutil.copytree(run, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["model"]["hidden"] = 16
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--checkpoint", str(other)]) == 2
    assert "model" in capsys.readouterr().err
    # unknown key / wrong type in --set
    assert main(["train", "--config", "tasks/protonet_digits_5w5s.yaml", "--out", str(tmp_path / "x"),
                 "--set", "train.wayz=3"]) == 2
    assert "train.wayz" in capsys.readouterr().err
    assert main(["train", "--config", "tasks/protonet_digits_5w5s.yaml", "--out", str(tmp_path / "x"),
                 "--set", "train.ways=20"]) == 2
    assert "train.ways=20 but the train split of digits has only 5 classes" in capsys.readouterr().err
    assert not (tmp_path / "x" / "last.pt").exists()
    # not a run directory
    assert main(["eval", "--checkpoint", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err
