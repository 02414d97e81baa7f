from pathlib import Path

import pytest

from metalearn.config import ConfigError, apply_overrides, config_from_dict, is_ttt_task, load_config, load_yaml

TASKS = sorted(Path(__file__).resolve().parents[1].glob("tasks/*.yaml"))


@pytest.mark.parametrize("path", TASKS, ids=[p.stem for p in TASKS])
def test_every_task_file_loads(path):
    if is_ttt_task(load_yaml(path)):           # the test-time-training pipeline has its own schema
        from metalearn.ttt.config import load_ttt_config
        assert load_ttt_config(path).name == path.stem
        with pytest.raises(ConfigError, match="test-time-training task; run it with `metalearn ttt train"):
            load_config(path)
        return
    cfg = load_config(path)
    assert cfg.name == path.stem
    if cfg.dataset != "digits":
        # each benchmark carries its published number, or says why there is none
        assert cfg.reference.accuracy is not None or "no published" in cfg.reference.source


def test_six_protonet_benchmarks_with_published_numbers():
    refs = {p.stem: load_config(p).reference.accuracy for p in TASKS if not is_ttt_task(load_yaml(p))}
    assert refs["protonet_omniglot_5w1s"] == 98.8 and refs["protonet_omniglot_20w5s"] == 98.9
    assert refs["protonet_miniimagenet_5w1s"] == 49.42 and refs["protonet_miniimagenet_5w5s"] == 68.20


def test_unknown_key_and_wrong_type_are_named():
    with pytest.raises(ConfigError, match="unknown config key 'train.wayz'"):
        config_from_dict({"dataset": "omniglot", "train": {"wayz": 5}})
    with pytest.raises(ConfigError, match="train.ways: expected int, got 'five'"):
        config_from_dict({"dataset": "omniglot", "train": {"ways": "five"}})
    with pytest.raises(ConfigError, match="train.lr: expected float"):
        config_from_dict({"dataset": "omniglot", "train": {"lr": True}})
    with pytest.raises(ConfigError, match="eval.shots: expected >= 1"):
        config_from_dict({"dataset": "omniglot", "eval": {"shots": 0}})
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        config_from_dict({"dataset": "omniglot", "train": 3})


def test_malformed_yaml_reports_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("dataset: omniglot\ntrain:\n  ways: 5\n  shots: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:.*line \d+"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_and_hash_is_independent_of_key_order():
    a = config_from_dict({"dataset": "omniglot", "train": {"ways": 20, "shots": 5}})
    b = config_from_dict({"train": {"shots": 5, "ways": 20}, "dataset": "omniglot"})
    assert a.hash() == b.hash()
    c = config_from_dict(apply_overrides({"dataset": "omniglot", "train": {"ways": 20, "shots": 5}},
                                         ["train.steps=7", "eval.ways=20"]))
    assert c.train.steps == 7 and c.eval.ways == 20 and c.hash() != a.hash()
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.steps"])


def test_config_differences_treats_a_missing_section_as_its_defaults():
    from metalearn.builders import config_differences
    new = config_from_dict({"dataset": "omniglot", "learner": "protonet"}).to_dict()
    old = {k: v for k, v in new.items() if k != "matchnet"}     # written before the section existed
    assert config_differences(old, new) == []
    changed = config_from_dict({"dataset": "omniglot", "matchnet": {"fce": True}}).to_dict()
    assert config_differences(old, changed) == ["matchnet.fce"]
    assert config_differences({**old, "model": {**old["model"], "gone": 1}}, new) == ["model.gone"]


# ----------------------------------------------------------------------------- numbers as users type them
@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("3E-4", 3e-4), (".5", 0.5), ("1_000", 1000.0),
                                        ("1e3", 1000.0), ("-2.5E+2", -250.0), ("1.5e3", 1500.0), ("2", 2.0)])
def test_every_number_form_is_a_float(tmp_path, text, value):
    cfg = load_config("tasks/protonet_digits_5w5s.yaml", [f"train.lr_gamma={text.lstrip('-')}"])
    assert cfg.train.lr_gamma == abs(value) and isinstance(cfg.train.lr_gamma, float)
    path = tmp_path / "t.yaml"
    path.write_text(f"dataset: digits\ntrain:\n  lr: {text.lstrip('-')}\n  steps: 1_000\n")
    cfg = load_config(path)
    assert cfg.train.lr == abs(value) and cfg.train.steps == 1000


def test_strings_that_look_like_exponent_floats_survive_the_resolved_config(tmp_path):
    from metalearn.config import dump_config
    cfg = load_config("tasks/protonet_digits_5w5s.yaml", ["name='1e5'", "data.root='3E-4'"])
    assert cfg.name == "1e5" and cfg.data.root == "3E-4"
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert config_from_dict(load_yaml(path)) == cfg


@pytest.mark.parametrize("override,key,expected", [
    ("train.lr=.nan", "train.lr", "finite"), ("train.lr=.inf", "train.lr", "finite"),
    ("train.lr=-.inf", "train.lr", "finite"), ("train.lr=0", "train.lr", "> 0"),
    ("train.weight_decay=-1", "train.weight_decay", ">= 0"), ("train.lr_gamma=0", "train.lr_gamma", "> 0"),
    ("maml.inner_lr=.nan", "maml.inner_lr", "finite"), ("matchnet.scale=.inf", "matchnet.scale", "finite"),
    ("siamese.rotation=.nan", "siamese.rotation", "finite"), ("train.lr=1e400", "train.lr", "finite"),
    ("train.lr=[1", "train.lr", "expected float"), ("train.steps=1e3", "train.steps", "expected int"),
    ("train.ways=a: b: c", "train.ways", "expected int"),
])
def test_bad_numbers_are_refused_at_load_naming_the_key(override, key, expected):
    with pytest.raises(ConfigError) as err:
        load_config("tasks/protonet_digits_5w5s.yaml", [override])
    msg = str(err.value)
    assert f"{key}: " in msg and expected in msg and "\n" not in msg


def test_ttt_config_numbers_and_ranges():
    from metalearn.ttt.config import load_ttt_config
    cfg = load_ttt_config("tasks/ttt_cifar10_gn.yaml", ["train.lr=1e-2", "ttt.lr=3E-4", "train.weight_decay=5e-4"])
    assert (cfg.train.lr, cfg.ttt.lr, cfg.train.weight_decay) == (1e-2, 3e-4, 5e-4)
    for override, key in (("train.lr=.nan", "train.lr"), ("train.weight_decay=-1", "train.weight_decay"),
                          ("train.momentum=1.5", "train.momentum"), ("tent.lr=.inf", "tent.lr"),
                          ("train.gamma=0", "train.gamma"), ("train.precision=fp16", "train.precision")):
        with pytest.raises(ConfigError, match=rf"{key}: expected"):
            load_ttt_config("tasks/ttt_cifar10_gn.yaml", [override])
