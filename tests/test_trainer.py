import json
import os
import signal

import pytest
import torch

from metalearn.config import TrainConfig
from metalearn.data.digits import load_digits
from metalearn.episodes import EpisodeSampler
from metalearn.learners.protonet import ProtoNet
from metalearn.nn import Conv4
from metalearn.train.checkpoint import atomic_save, load_checkpoint
from metalearn.train.evaluator import evaluate, mean_ci95
from metalearn.train.trainer import train

CFG = TrainConfig(ways=5, shots=2, queries=3, steps=8, lr_step=3, lr_gamma=0.5, val_every=4, val_episodes=4,
                  checkpoint_every=2, log_every=2, seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_digits("train", image_size=8), load_digits("test", image_size=8)


class SmallNet(Conv4):
    def __init__(self):
        super().__init__(in_channels=1, hidden=8, blocks=3)


def setup(digits, seed=0):
    torch.manual_seed(seed)
    tr, te = digits
    learner = ProtoNet(SmallNet())
    sampler = EpisodeSampler(tr, CFG.ways, CFG.shots, CFG.queries, seed=seed)
    val = lambda: EpisodeSampler(te, 5, 1, 2, batch_size=2, seed=99)  # noqa: E731
    return learner, sampler, val


def test_resume_after_ctrl_c_equals_uninterrupted(digits, tmp_path):
    learner, sampler, val = setup(digits)
    full = train(learner, sampler, CFG, tmp_path / "a", val, progress=False)
    ref = {k: v.clone() for k, v in learner.state_dict().items()}

    learner2, sampler2, val2 = setup(digits)
    calls = {"n": 0}
    orig = sampler2.sample

    def sample_then_interrupt():  # a Ctrl-C arriving during the 5th step
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return orig()

    sampler2.sample = sample_then_interrupt
    part = train(learner2, sampler2, CFG, tmp_path / "b", val2, progress=False)
    assert part.interrupted and part.step == 5
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 5

    learner3, sampler3, val3 = setup(digits, seed=123)  # different init: everything must come from last.pt
    sampler3 = EpisodeSampler(digits[0], CFG.ways, CFG.shots, CFG.queries, seed=5)
    done = train(learner3, sampler3, CFG, tmp_path / "b", val3, resume=True, progress=False)
    assert done.step == 8 and not done.interrupted
    for k, v in learner3.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert (done.best_accuracy, done.best_step) == (full.best_accuracy, full.best_step)
    # metrics of the resumed run: same steps as the uninterrupted one, no duplicates
    steps_a = [json.loads(s)["step"] for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps_b = [json.loads(s)["step"] for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps_a == steps_b
    assert (tmp_path / "b" / "best.pt").exists()


def test_refuses_to_overwrite_a_run(digits, tmp_path):
    learner, sampler, val = setup(digits)
    cfg = TrainConfig(ways=5, shots=1, queries=1, steps=1, val_every=0, checkpoint_every=1, log_every=1)
    train(learner, sampler, cfg, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(learner, sampler, cfg, tmp_path, progress=False)


def test_interrupted_checkpoint_save_keeps_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"format": 1, "step": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"format": 1, "step": 2, "x": Boom()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_corrupted_or_foreign_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"format": 1, "step": 1, "w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="last.pt.*truncated or corrupted"):
        load_checkpoint(path)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a metalearn checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_mean_ci95_exact():
    m, ci = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5
    assert ci == pytest.approx(1.96 * (5.0 / 3.0) ** 0.5 / 2.0)


def test_evaluate_counts_episodes_and_restores_mode(digits):
    learner, _, _ = setup(digits)
    learner.train()
    res = evaluate(learner, EpisodeSampler(digits[1], 5, 1, 2, batch_size=3, seed=0), episodes=7)
    assert res.episodes == 7 and len(res.per_episode) == 7 and learner.training
    assert all(a in {0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0} for a in res.per_episode)


def test_resume_drops_a_torn_metrics_line_and_fresh_run_starts_a_new_log(digits, tmp_path):
    cfg = TrainConfig(ways=5, shots=1, queries=1, steps=2, val_every=0, checkpoint_every=2, log_every=1)
    learner, sampler, _ = setup(digits)
    train(learner, sampler, cfg, tmp_path / "r", progress=False)
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.1')            # a line cut short by a crash
    learner, sampler, _ = setup(digits)
    train(learner, sampler, TrainConfig(**{**cfg.__dict__, "steps": 3}), tmp_path / "r", resume=True, progress=False)
    steps = [json.loads(s)["step"] for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # a directory with a stale log but no last.pt (died before its first checkpoint) starts a new log
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "metrics.jsonl").write_text('{"step": 99}\n')
    learner, sampler, _ = setup(digits)
    train(learner, sampler, cfg, tmp_path / "s", progress=False)
    steps = [json.loads(s)["step"] for s in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
