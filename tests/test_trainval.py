"""``train.split: trainval``: training on the train and validation classes together (Snell et al.'s last stage).

The Omniglot test needs the real data (METALEARN_DATA pointing at the folder that holds omniglot/).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from metalearn import builders
from metalearn.cli import main, train_task
from metalearn.config import ConfigError, config_from_dict
from metalearn.data.storage import ClassImages


def _images(n_classes: int, per_class: int, start: int, shape=(1, 4, 4), rotations=(0,)) -> ClassImages:
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = (labels + start).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, *shape).contiguous()
    return ClassImages.from_labels(images, labels, names=[f"c{start + i}" for i in range(n_classes)],
                                   rotations=rotations)


def test_concat_keeps_every_class_and_its_images():
    a, b = _images(3, 2, 0), _images(2, 5, 10)
    both = ClassImages.concat([a, b])
    assert both.num_base_classes == 5 and both.names == ("c0", "c1", "c2", "c10", "c11")
    assert both.counts.tolist() == [2, 2, 2, 5, 5] and both.offsets.tolist() == [0, 2, 4, 6, 11]
    for c, part, i in [(0, a, 0), (2, a, 2), (3, b, 0), (4, b, 1)]:
        assert torch.equal(both.class_images(c), part.class_images(i))
    # a subset of the concatenation is the original part again
    back = both.subset([3, 4])
    assert torch.equal(back.images, b.images) and back.names == b.names and torch.equal(back.counts, b.counts)


def test_concat_rejects_mixed_parts():
    with pytest.raises(ValueError, match="at least one"):
        ClassImages.concat([])
    with pytest.raises(ValueError, match="one image shape"):
        ClassImages.concat([_images(2, 2, 0), _images(2, 2, 5, shape=(1, 5, 5))])
    with pytest.raises(ValueError, match="one image shape and one set of rotations"):
        ClassImages.concat([_images(2, 2, 0), _images(2, 2, 5, rotations=(0, 90))])
    with pytest.raises(ValueError, match="'c1' is in more than one part"):
        ClassImages.concat([_images(2, 2, 0), _images(2, 2, 1)])


def test_config_checks_train_split():
    base = {"dataset": "omniglot", "learner": "protonet"}
    assert config_from_dict(base).train.split == "train"
    with pytest.raises(ConfigError, match="train.split: expected train or trainval, got 'val'"):
        config_from_dict({**base, "train": {"split": "val"}})
    with pytest.raises(ConfigError, match="train.split: trainval trains on the validation classes.*train.split: train to validate.*val_every: 0"):
        config_from_dict({**base, "train": {"split": "trainval", "val_every": 500}})
    cfg = config_from_dict({**base, "train": {"split": "trainval", "val_every": 0}})
    assert cfg.train.split == "trainval"
    assert cfg.hash() != config_from_dict({**base, "train": {"val_every": 0}}).hash()


def test_miniimagenet_trainval_is_train_then_val(monkeypatch):
    parts = {"train": _images(4, 3, 0), "val": _images(2, 3, 20)}
    import metalearn.data.miniimagenet as mini
    monkeypatch.setattr(mini, "load_miniimagenet", lambda root, split, **kw: parts[split])
    cfg = config_from_dict({"dataset": "miniimagenet", "learner": "protonet"})
    tv = builders.DATASETS["miniimagenet"](cfg, "trainval")
    assert tv.names == parts["train"].names + parts["val"].names
    assert torch.equal(tv.images, torch.cat([parts["train"].images, parts["val"].images]))


def test_digits_has_no_trainval(tmp_path, capsys):
    cfg = config_from_dict({"dataset": "digits", "learner": "protonet",
                            "train": {"split": "trainval", "val_every": 0, "steps": 1}})
    with pytest.raises(ConfigError, match="train.split: trainval needs validation classes.*'digits'"):
        train_task(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()   # refused before anything was written
    # at the CLI: exit code 2, the message, no traceback
    assert main(["train", "--config", "tasks/protonet_digits_5w5s.yaml", "--out", str(tmp_path / "cli"), "--quiet",
                 "--set", "train.split=trainval", "--set", "train.val_every=0"]) == 2
    err = capsys.readouterr().err
    assert "train.split: trainval needs validation classes" in err and "Traceback" not in err


def test_omniglot_trainval_trains_on_1200_characters(tmp_path, monkeypatch):
    env = os.environ.get("METALEARN_DATA")
    if not env or not (Path(env) / "omniglot" / "images_background.npz").is_file():
        pytest.skip("real Omniglot: METALEARN_DATA not set / omniglot missing")
    import metalearn.episodes as episodes
    seen = []
    real_sampler = episodes.EpisodeSampler

    def spy(data, *a, **kw):
        seen.append(data.names)
        return real_sampler(data, *a, **kw)

    monkeypatch.setattr(episodes, "EpisodeSampler", spy)
    runs = {}
    for split in ("train", "trainval"):
        cfg = config_from_dict({"dataset": "omniglot", "learner": "protonet", "data": {"root": env},
                                "model": {"hidden": 4},
                                "train": {"split": split, "val_every": 0, "steps": 1, "ways": 3, "shots": 1,
                                          "queries": 1, "threads": 1}})
        seen.clear()
        train_task(cfg, tmp_path / split, progress=False, check_eval=False)
        runs[split] = seen[0]
    assert len(runs["train"]) == 1028 and len(runs["trainval"]) == 1200
    cfg = config_from_dict({"dataset": "omniglot", "learner": "protonet", "data": {"root": env}})
    val, test = (set(builders.DATASETS["omniglot"](cfg, s).names) for s in ("val", "test"))
    assert set(runs["trainval"]) == set(runs["train"]) | val and not set(runs["trainval"]) & test


def test_short_validated_runs_of_the_scripts_load_on_the_trainval_task_files():
    import importlib.util
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("precision_check", root / "benchmarks" / "precision_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from metalearn.config import load_config
    for task in ("protonet_omniglot_5w1s", "matchnet_omniglot_5w1s", "siamese_omniglot_5w1s"):
        assert load_config(root / "tasks" / f"{task}.yaml").train.split == "trainval"
        cfg = load_config(root / "tasks" / f"{task}.yaml", mod.overrides("bf16", 1000, 1))
        assert (cfg.train.split, cfg.train.val_every, cfg.train.steps) == ("train", 250, 1000)
    # gpu_suite's ProtoNet wall-clock run validates too
    suite = (root / "benchmarks" / "gpu_suite.sh").read_text()
    line = next(ln for ln in suite.splitlines() if "train.val_every=1000" in ln)
    assert "train.split=train" in line


def test_precision_check_compares_the_cis_and_writes_the_result_atomically(tmp_path):
    import importlib.util
    import json
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("precision_check", root / "benchmarks" / "precision_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = mod.compare({"fp32": {"accuracy": 38.44, "ci95": 0.95, "train_wall_s": 974.0},
                       "bf16": {"accuracy": 39.89, "ci95": 0.96, "train_wall_s": 487.0}})
    assert (row["bf16_inside_fp32_ci"], row["fp32_inside_bf16_ci"], row["cis_overlap"]) == (False, False, True)
    assert row["train_speedup"] == 2.0
    row = mod.compare({"fp32": {"accuracy": 97.12, "ci95": 0.24, "train_wall_s": 3.0},
                       "bf16": {"accuracy": 97.07, "ci95": 0.25, "train_wall_s": 2.0}})
    assert (row["bf16_inside_fp32_ci"], row["fp32_inside_bf16_ci"], row["cis_overlap"]) == (True, True, True)
    row = mod.compare({"fp32": {"accuracy": 90.0, "ci95": 0.5, "train_wall_s": 1.0},
                       "bf16": {"accuracy": 88.0, "ci95": 0.5, "train_wall_s": 1.0}})
    assert row["cis_overlap"] is False
    res = {"rows": [row], "git": {"commit": "0123456789abcdef"}}
    path = mod.write_result(res, tmp_path / "speed", "ttt_precision")
    assert path == tmp_path / "speed" / "ttt_precision-01234567.json"
    assert json.loads(path.read_text()) == res and sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_precision_check_runs_end_to_end(tmp_path, monkeypatch):
    """The script itself on the bundled digits task: two runs per task, each with its overrides recorded."""
    import importlib.util
    import json
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("precision_check", root / "benchmarks" / "precision_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.chdir(root)
    task = "tasks/protonet_digits_5w5s.yaml"
    assert mod.main([task, "--steps", "2", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    (path,) = (tmp_path / "out").glob("precision_check-*.json")
    res = json.loads(path.read_text())
    (row,) = res["rows"]
    assert row["task"] == task and res["steps"] == 2
    for prec in ("fp32", "bf16"):
        assert f"train.precision={prec}" in row[prec]["overrides"] and 0 <= row[prec]["accuracy"] <= 100
    assert isinstance(row["cis_overlap"], bool)
