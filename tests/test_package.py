"""Packaging: the flat public API, the typing marker, the distribution name, and the CI packaging check.

The build itself (wheel + sdist, twine check, install into a fresh venv, run the command) is
``.ci/package_check.sh``, which ``.ci/run`` calls after the tests.
"""
from __future__ import annotations

import configparser
import inspect
from pathlib import Path

import metalearn
from metalearn.learners.base import Learner

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves():
    missing = [n for n in metalearn.__all__ if not hasattr(metalearn, n)]
    assert not missing
    assert len(set(metalearn.__all__)) == len(metalearn.__all__)


def test_every_learner_is_exported_at_the_root():
    import metalearn.learners as learners
    found = {name for name, obj in vars(learners).items()
             if inspect.isclass(obj) and issubclass(obj, Learner) and obj is not Learner}
    for mod in ("maml", "matchnet", "protonet", "siamese"):
        m = __import__(f"metalearn.learners.{mod}", fromlist=["_"])
        found |= {name for name, obj in vars(m).items()
                  if inspect.isclass(obj) and issubclass(obj, Learner) and obj is not Learner
                  and obj.__module__ == m.__name__}
    assert {"MAML", "MatchingNet", "ProtoNet", "Siamese"} <= found
    for name in found:
        assert name in metalearn.__all__ and getattr(metalearn, name).__name__ == name
    for name in ("TrainConfig", "DataConfig", "EvalConfig", "TaskConfig", "load_config", "Adaptable"):
        assert name in metalearn.__all__


def test_submodules_are_not_shadowed_by_root_names():
    import metalearn.ttt
    import types
    assert isinstance(metalearn.ttt, types.ModuleType)


def test_distribution_metadata():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["name"] == "torch-metalearn"
    assert "py.typed" in cfg["options.package_data"]["metalearn"]
    assert "torch>=2.4" in cfg["options"]["install_requires"].split()
    dev = cfg["options.extras_require"]["dev"].split()
    assert any(r.startswith("build") for r in dev) and any(r.startswith("twine") for r in dev)
    assert cfg["options.entry_points"]["console_scripts"].strip() == "metalearn = metalearn.cli:main"
    assert (ROOT / "metalearn" / "py.typed").is_file()


def test_ci_runs_the_package_check_after_the_tests():
    run = (ROOT / ".ci" / "run").read_text()
    assert "make test" in run and "package_check.sh" in run
    assert run.index("make test") < run.index("package_check.sh")
    script = (ROOT / ".ci" / "package_check.sh").read_text()
    for step in ("-m build", "twine check", "-m venv", "torch==2.13.0", "demo --smoke"):
        assert step in script
