"""Scale-out on torch.distributed: 2 CPU processes (gloo, loopback) against 1 process.

One spawned job of 2 processes computes everything the tests below compare (meta-gradients of every learner,
a few training steps, resume, evaluation, a non-finite loss on one rank); the CLI tests launch torchrun.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metalearn import distributed as D
from metalearn.episodes import EpisodeSampler
from metalearn.types import Episode

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TORCHRUN = str(Path(PY).with_name("torchrun"))
WAYS, SHOTS, QUERIES, BATCH = 5, 2, 3, 5          # 5 tasks: shares of 2 and 3 on 2 processes
KINDS = ["protonet", "matchnet_fce", "siamese", "maml_vmap", "maml_loop", "maml_chunked"]


# ------------------------------------------------------------------------------------------ shared setup

class F64Sampler(EpisodeSampler):
    """Episodes in float64 (the gradient comparisons are at 1e-12); ``nan_at``: on rank 1, the query images of
    that draw (1-based) are NaN."""
    nan_at = 0
    draws = 0

    def sample(self, tasks=None):
        ep = super().sample(tasks)
        self.draws += 1
        qx = ep.query_x.double()
        if self.nan_at and self.draws == self.nan_at and D.rank() == 1:
            qx = qx * float("nan")
        return Episode(ep.support_x.double(), ep.support_y, qx, ep.query_y, ep.ways)


def _data(split="train"):
    from metalearn.data.digits import load_digits
    return load_digits(split)


def make_learner(kind: str):
    from metalearn.augment import KOCH
    from metalearn.learners.maml import MAML
    from metalearn.learners.matchnet import MatchingNet
    from metalearn.learners.protonet import ProtoNet
    from metalearn.learners.siamese import Siamese
    from metalearn.nn import Conv4, MamlConv4
    torch.manual_seed(0)
    if kind == "protonet":
        m = ProtoNet(Conv4(1, hidden=8), check_support=False)
    elif kind == "matchnet_fce":
        m = MatchingNet(Conv4(1, hidden=8), 8, fce=True, process_steps=2, check_support=False)
    elif kind == "siamese":
        m = Siamese(Conv4(1, hidden=8), 8, distort=KOCH, fill=1.0, seed=3, check_support=False)
    else:
        m = MAML(MamlConv4(1, WAYS, hidden=8, pool="max", image_size=16), WAYS, inner_lr=0.4, inner_steps=1,
                 eval_inner_steps=2, vmap=kind != "maml_loop", chunk_size=2 if kind == "maml_chunked" else 0)
    return m.double()


def train_cfg(steps: int, **kw):
    from metalearn.config import TrainConfig
    return TrainConfig(ways=WAYS, shots=SHOTS, queries=QUERIES, batch_size=4, steps=steps, lr=1e-2, lr_step=100,
                       val_every=3, val_episodes=12, checkpoint_every=2, log_every=1, precision="fp32", **kw)


def val_sampler():
    return F64Sampler(_data("test"), WAYS, SHOTS, QUERIES, batch_size=4, seed=7)


def train_run(kind: str, out: Path, steps: int, resume: bool = False):
    from metalearn.train.trainer import train
    learner = make_learner(kind)
    sampler = F64Sampler(_data(), WAYS, SHOTS, QUERIES, batch_size=4, seed=1)
    state = train(learner, sampler, train_cfg(steps), out, val_sampler, resume=resume, progress=False)
    return learner, state


def meta_gradient(kind: str, tasks=None):
    learner = make_learner(kind)
    sampler = F64Sampler(_data(), WAYS, SHOTS, QUERIES, batch_size=BATCH, seed=0)
    learner.train()
    if tasks is None:
        learner.backward(sampler.sample())
    else:
        step = D.MetaBatchStep(learner, BATCH)
        step.backward(sampler.sample(tasks=(step.lo, step.hi)))
        step.close()
    grads = {n: p.grad.clone() for n, p in learner.named_parameters()}
    buffers = {n: b.clone() for n, b in learner.named_buffers()}
    return grads, buffers


def evaluation(kind: str):
    from metalearn.train.evaluator import evaluate
    learner = make_learner(kind)
    sampler = F64Sampler(_data("test"), WAYS, SHOTS, 5, batch_size=4, seed=11)
    return evaluate(learner, sampler, 30)   # 8 draws, the last one cut to 2 episodes


def evaluation_reused():
    """ProtoNet on the stock sampler with the embedding table: each process embeds its share of the split's
    images and the table is gathered."""
    from metalearn.train.evaluator import evaluate
    learner = make_learner("protonet").float()           # the stock sampler's images are float32
    sampler = EpisodeSampler(_data("test"), WAYS, SHOTS, 5, batch_size=4, seed=11)
    return evaluate(learner, sampler, 30, reuse_embeddings=True)


def _digits_task(tmp: Path) -> Path:
    task = tmp / "digits.yaml"
    task.write_text((ROOT / "tasks" / "protonet_digits_5w5s.yaml").read_text())
    return task


SETS = ["--set", "train.batch_size=2", "--set", "model.hidden=8", "--set", "train.log_every=1",
        "--set", "train.checkpoint_every=2", "--set", "train.precision=fp32", "--set", "eval.episodes=40",
        "--set", "eval.batch_size=10", "--quiet"]


def _cli_jobs(rank: int, out: Path) -> dict:
    """The commands under 2 processes (the process group is the caller's, so main() leaves it open)."""
    import contextlib
    import io

    from metalearn.cli import main
    task = _digits_task(out) if rank == 0 else out / "digits.yaml"
    D.on_main(lambda: None)          # rank 1 reads the task file only after rank 0 wrote it
    res, buf = {}, io.StringIO()
    with contextlib.redirect_stdout(buf):
        res["half"] = main(["train", "--config", str(task), "--out", str(out / "cli-half"), *SETS,
                            "--set", "train.steps=2", "--no-eval"])
        if rank == 0:
            shutil.copytree(out / "cli-half", out / "cli-half-copy")   # resumed by 1 process in the test
        D.on_main(lambda: None)
        res["resume"] = main(["train", "--config", str(task), "--out", str(out / "cli-half"), *SETS,
                              "--set", "train.steps=4", "--resume", "--no-eval"])
        res["eval"] = main(["eval", "--checkpoint", str(out / "cli-half"), "--json"])
        res["bench"] = main(["bench", str(task), "--out-root", str(out / "bench-runs"), "--results",
                             str(out / "bench-results"), *SETS[:-1], "--set", "train.steps=2", "--quiet"])
        res["small"] = main(["train", "--config", str(task), "--out", str(out / "cli-small"), *SETS,
                             "--set", "train.batch_size=1", "--set", "train.steps=2", "--no-eval"])
    res["stdout"] = buf.getvalue()
    return res


def tiny_resnet(norm: str):
    from metalearn.nn.resnet_cifar import ResNetCIFAR
    torch.manual_seed(0)
    return ResNetCIFAR(8, classes=5, norm=norm, rotation_head=True).double()


def cifar_like(n: int = 21, seed: int = 5):
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return x, torch.arange(n) % 5


def joint_run(norm: str, out: Path):
    """3 steps of joint training: batches of 8, 8 and 5 images (the last one of the epoch)."""
    from metalearn.ttt import JointTrainConfig, train_joint
    model = tiny_resnet(norm)
    x, y = cifar_like()
    train_joint(model, x, y, JointTrainConfig(epochs=1, batch_size=8, checkpoint_every=2, log_every=1, seed=7),
                out)
    return {k: v.clone() for k, v in model.state_dict().items()}


def ttt_methods():
    """Logits of the per-image / per-batch methods on a stream of 7 images (chunks of 2, batches of 3)."""
    from metalearn.ttt.config import load_ttt_config
    from metalearn.ttt.run import run_method_split
    cfg = load_ttt_config(ROOT / "tasks" / "ttt_cifar10_bn.yaml",
                          ["ttt.steps=2", "ttt.copies=3", "ttt.chunk_size=2", "eval.batch_size=3", "ttt.lr=0.05"])
    model = tiny_resnet("bn").eval()
    x, _ = cifar_like(7, seed=9)
    return {m: run_method_split(m, model, x, cfg) for m in ("source", "ttt", "norm_adapt", "ttt_online")}


# --------------------------------------------------------------------------------------- the 2-process job

def _job(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), D.TIMEOUT_ENV: "60"})
    torch.set_num_threads(1)
    assert D.init_from_env()
    out = Path(out)
    res: dict = {"grads": {}, "eval": {}}
    try:
        for kind in KINDS:
            res["grads"][kind] = meta_gradient(kind, tasks="shard")
        for kind in ("protonet", "maml_vmap"):
            res["eval"][kind] = evaluation(kind)
        res["eval"]["protonet_reused"] = evaluation_reused()
        # training: 4 steps straight, and 2 steps then resumed to 4 (each rank names its own directory, so
        # that a file written by rank 1 would show)
        for kind in ("protonet", "maml_vmap", "siamese"):
            learner, _ = train_run(kind, out / f"{kind}-full-r{rank}", 4)
            res[f"train-{kind}"] = {k: v.clone() for k, v in learner.state_dict().items() if torch.is_tensor(v)}
        train_run("protonet", out / f"protonet-half-r{rank}", 2)   # rank 1 reads and writes no file of it
        if rank == 0:
            shutil.copytree(out / "protonet-half-r0", out / "protonet-half-copy")   # resumed by 1 process
        learner, _ = train_run("protonet", out / f"protonet-half-r{rank}", 4, resume=True)
        res["resumed"] = {k: v.clone() for k, v in learner.state_dict().items()}
        # a NaN loss on rank 1 only (MAML: no statistics shared between the tasks): every rank stops at the
        # same check, naming rank 1; ProtoNet: the shared BatchNorm statistics carry it to both ranks
        from metalearn.train.trainer import NonFiniteLossError, train
        for kind in ("maml_vmap", "protonet"):
            sampler = F64Sampler(_data(), WAYS, SHOTS, QUERIES, batch_size=4, seed=1)
            sampler.nan_at = 2
            try:
                train(make_learner(kind), sampler, train_cfg(4), out / f"nan-{kind}-r{rank}", progress=False)
                res[f"nan-{kind}"] = None
            except NonFiniteLossError as err:
                res[f"nan-{kind}"] = str(err)
        # a meta-batch smaller than the number of processes
        try:
            meta_batch_one = F64Sampler(_data(), WAYS, SHOTS, QUERIES, batch_size=1, seed=1)
            train(make_learner("protonet"), meta_batch_one, train_cfg(1), out / f"small-r{rank}", progress=False)
            res["small"] = None
        except ValueError as err:
            res["small"] = str(err)
        res["joint"] = {norm: joint_run(norm, out / f"joint-{norm}-r{rank}") for norm in ("bn", "gn")}
        res["ttt"] = ttt_methods()
        res["cli"] = _cli_jobs(rank, out)
    finally:
        torch.save(res, out / f"result-{rank}.pt")
        D.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Results of the 2-process job: {rank: dict}, and its directory."""
    import torch.multiprocessing as mp
    out = tmp_path_factory.mktemp("dist")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    try:
        mp.start_processes(_job, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    print(f"2-process job: {time.perf_counter() - t0:.1f} s")
    return {r: torch.load(out / f"result-{r}.pt", weights_only=False) for r in (0, 1)}, out


def _max_diff(a: dict, b: dict, keys=None) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
               for k in (a if keys is None else keys) if a[k].is_floating_point())


def _null_directions(kind: str) -> set[str]:
    """State-dict keys of the conv biases that a normalisation layer follows, and of that layer's running mean.

    Their gradient is zero in exact arithmetic (the normalisation removes any constant), so what they get is
    rounding noise (~1e-14 here), which Adam's step g / (sqrt(v) + eps) magnifies by up to lr / eps; after a few
    steps they differ between 1 and 2 processes by ~1e-8 (and the running mean, which follows the bias, by
    ~1e-9), while every other weight agrees to ~1e-12."""
    from torch import nn

    from metalearn.nn.norm import BatchNorm2d
    learner, out = make_learner(kind), set()
    for prefix, seq in learner.named_modules():
        if isinstance(seq, nn.Sequential):
            names = list(seq._modules)
            for a, b in zip(names, names[1:]):
                if isinstance(seq._modules[a], nn.Conv2d) and isinstance(seq._modules[b], (nn.BatchNorm2d,
                                                                                           BatchNorm2d)):
                    out |= {f"{prefix}.{a}.bias", f"{prefix}.{b}.running_mean"}
                    last_norm = f"{prefix}.{b}"
    if kind == "protonet":
        # squared Euclidean distances do not change when every embedding moves by the same vector: the last
        # norm's shift of a channel that the final ReLU passes on every image has a zero gradient too (its
        # rounding noise, magnified by Adam, reached 2e-10 on one CPU)
        out |= {f"{last_norm}.bias"}
    return out


def _same_weights(a: dict, b: dict, kind: str, tol: float = 1e-10) -> None:
    null = _null_directions(kind) & set(a)
    rest = [k for k in a if k not in null]
    assert null, kind
    worst = max((k for k in rest if a[k].is_floating_point() and a[k].numel()), key=lambda k: _max_diff(a, b, [k]))
    assert _max_diff(a, b, rest) <= tol, (kind, worst)
    assert _max_diff(a, b, null) <= 1e-6, kind


# ------------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("kind", KINDS)
def test_meta_gradient_of_two_processes_equals_one(two, kind):
    results, _ = two
    grads, buffers = meta_gradient(kind)
    for r in (0, 1):
        g, b = results[r]["grads"][kind]
        assert _max_diff(g, grads) <= 1e-12, (kind, r)
        if buffers:   # BatchNorm running statistics over the whole meta-batch
            assert _max_diff(b, buffers) <= 1e-12, (kind, r)


@pytest.mark.parametrize("kind", ["protonet", "maml_vmap", "siamese"])
def test_training_steps_of_two_processes_end_at_the_weights_of_one(two, kind, tmp_path):
    results, out = two
    learner, state = train_run(kind, tmp_path / "one", 4)
    ref = {k: v for k, v in learner.state_dict().items() if torch.is_tensor(v)}
    _same_weights(results[0][f"train-{kind}"], ref, kind)
    _same_weights(results[1][f"train-{kind}"], ref, kind)
    # rank 0 wrote the run's files; rank 1 none
    assert {p.name for p in (out / f"{kind}-full-r0").iterdir()} == {"last.pt", "best.pt", "metrics.jsonl"}
    assert not (out / f"{kind}-full-r1").exists()
    # the logged loss is that of the whole meta-batch; validation saw the same episodes
    two_recs = [json.loads(line) for line in (out / f"{kind}-full-r0" / "metrics.jsonl").read_text().splitlines()]
    one_recs = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in two_recs] == [sorted(r) for r in one_recs]
    for a, b in zip(two_recs, one_recs):
        for key in ("loss", "train_accuracy", "val_accuracy", "val_ci95"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-9, (key, a, b)


def test_resume_of_a_two_process_run_with_two_and_with_one_process(two, tmp_path):
    results, out = two
    # 2 processes: 2 steps, then resumed to 4 = 4 steps straight, bit for bit
    straight = results[0]["train-protonet"]
    resumed = {k: v for k, v in results[0]["resumed"].items() if torch.is_tensor(v)}
    assert _max_diff(resumed, straight) == 0.0
    assert _max_diff({k: v for k, v in results[1]["resumed"].items() if torch.is_tensor(v)}, straight) == 0.0
    # 1 process resumes the 2-process checkpoint and ends where 1 process running straight ends
    assert not (out / "protonet-half-r1").exists()
    learner, state = train_run("protonet", out / "protonet-half-copy", 4, resume=True)
    assert state.step == 4
    one, _ = train_run("protonet", tmp_path / "one", 4)
    ref = {k: v for k, v in one.state_dict().items() if torch.is_tensor(v)}
    _same_weights({k: v for k, v in learner.state_dict().items() if torch.is_tensor(v)}, ref, "protonet")


@pytest.mark.parametrize("kind", ["protonet", "maml_vmap"])
def test_evaluation_with_two_processes_is_the_single_process_result(two, kind):
    results, _ = two
    one = evaluation(kind)
    for r in (0, 1):
        two_res = results[r]["eval"][kind]
        assert two_res.per_episode == one.per_episode
        assert (two_res.accuracy, two_res.ci95, two_res.episodes) == (one.accuracy, one.ci95, 30)


def test_evaluation_from_the_embedding_table_with_two_processes_is_the_single_process_result(two):
    results, _ = two
    one = evaluation_reused()
    for r in (0, 1):
        assert results[r]["eval"]["protonet_reused"].per_episode == one.per_episode


def test_a_non_finite_loss_on_one_rank_stops_every_rank_naming_it(two):
    results, out = two
    for r in (0, 1):
        msg = results[r]["nan-maml_vmap"]
        assert msg is not None and "became nan at step 2 on rank 1 of 2" in msg, msg
        msg = results[r]["nan-protonet"]
        assert msg is not None and "became nan at step 2 on ranks 0 and 1 of 2" in msg, msg
    assert not (out / "nan-maml_vmap-r0" / "last.pt").exists()   # stopped before the first checkpoint (step 2)


def test_a_meta_batch_smaller_than_the_processes_is_refused(two):
    results, _ = two
    for r in (0, 1):
        assert "batch_size (tasks per meta-batch)=1" in results[r]["small"]
        assert "2 processes" in results[r]["small"]


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_joint_ttt_training_with_two_processes_ends_at_the_weights_of_one(two, norm, tmp_path):
    results, out = two
    ref = joint_run(norm, tmp_path / "one")
    for r in (0, 1):   # SGD: no normalisation of the step, so every weight and buffer agrees to rounding
        assert _max_diff(results[r]["joint"][norm], ref) <= 1e-10
    assert {p.name for p in (out / f"joint-{norm}-r0").iterdir()} == {"last.pt", "metrics.jsonl"}
    assert not (out / f"joint-{norm}-r1").exists()
    two_recs = (out / f"joint-{norm}-r0" / "metrics.jsonl").read_text().splitlines()
    one_recs = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    for a, b in zip(map(json.loads, two_recs), map(json.loads, one_recs)):
        assert abs(a["loss"] - b["loss"]) <= 1e-10 and a["step"] == b["step"]


def test_ttt_eval_split_across_two_processes_gives_the_single_process_logits(two):
    results, _ = two
    one = ttt_methods()
    for r in (0, 1):
        for method, logits in one.items():   # the same chunks and draws: the same numbers, bit for bit
            assert torch.equal(results[r]["ttt"][method], logits), method


# ------------------------------------------------------------------------------- single-process identity

def test_helpers_are_the_identity_without_a_process_group():
    assert not D.active() and D.rank() == 0 and D.world_size() == 1 and D.is_main()
    assert D.shard_range(7) == (0, 7) and D.on_main(lambda: 5) == 5 and D.broadcast_object([1]) == [1]
    t = [torch.ones(3)]
    assert D.gather_draws(t, 1, (3,)) is t and D.describe() == ""
    assert [D.shard_range(5, r, 2) for r in (0, 1)] == [(0, 2), (2, 5)]
    assert [D.block_range(10, 4, r, 2) for r in (0, 1)] == [(0, 4), (4, 10)]
    assert [D.block_range(3, 4, r, 2) for r in (0, 1)] == [(0, 0), (0, 3)]


def test_sampler_shares_are_slices_of_the_same_stream():
    data = _data()
    full = EpisodeSampler(data, WAYS, SHOTS, QUERIES, batch_size=5, seed=4)
    part = EpisodeSampler(data, WAYS, SHOTS, QUERIES, batch_size=5, seed=4)
    skip = EpisodeSampler(data, WAYS, SHOTS, QUERIES, batch_size=5, seed=4)
    for _ in range(2):
        a, b = full.sample(), part.sample(tasks=(2, 5))
        assert torch.equal(a.support_x[2:], b.support_x) and torch.equal(a.query_x[2:], b.query_x)
    skip.skip(2)
    assert torch.equal(full.sample().query_x, skip.sample().query_x)
    with pytest.raises(ValueError, match="tasks"):
        part.sample(tasks=(3, 9))


def test_world_size_and_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        D.env_world_size()
    monkeypatch.setenv(D.TIMEOUT_ENV, "-3")
    with pytest.raises(ValueError, match=D.TIMEOUT_ENV):
        D.timeout_s()
    monkeypatch.delenv("WORLD_SIZE")
    assert D.init_from_env() is False   # no WORLD_SIZE: nothing is initialised


def test_commands_that_run_in_one_process_refuse_torchrun(monkeypatch, capsys):
    from metalearn.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["report", "--results", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "error (rank 1 of 2)" in err and "runs in one process" in err


# ------------------------------------------------------------------------------------------------ the CLI

def _curve(run: Path) -> list[tuple[int, float, float]]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["train_accuracy"]) for r in recs if "loss" in r]


def _same_curve(a: Path, b: Path) -> None:
    """float32 runs of the CLI: the same steps and accuracies, the losses within rounding (the weights are
    compared in float64 above; in float32, Adam turns rounding noise of near-zero gradients into steps of up
    to lr, so weights of two float32 runs can differ by ~lr without meaning anything)."""
    ca, cb = _curve(a), _curve(b)
    assert [(s, acc) for s, _, acc in ca] == [(s, acc) for s, _, acc in cb]
    assert all(abs(la - lb) <= 1e-4 * abs(lb) for (_, la, _), (_, lb, _) in zip(ca, cb)), (ca, cb)


def test_cli_train_resume_eval_and_bench_with_two_processes(two, tmp_path):
    from metalearn.cli import evaluate_run, main
    results, out = two
    cli = [results[r]["cli"] for r in (0, 1)]
    for c in cli:
        assert (c["half"], c["resume"], c["eval"], c["bench"]) == (0, 0, 0, 0), c
        assert c["small"] == 2
    assert cli[1]["stdout"] == ""                       # rank 0 alone prints
    assert cli[0]["stdout"].count("trained to step 2") == 2 and "trained to step 4" in cli[0]["stdout"]
    assert {p.name for p in (out / "cli-half").iterdir()} == {"config.yaml", "last.pt", "best.pt", "metrics.jsonl"}
    task = out / "digits.yaml"
    # the 2-process run resumed by 1 process, and 1 process straight: the same weights as 2 processes resumed
    assert main(["train", "--config", str(task), "--out", str(out / "cli-half-copy"), *SETS,
                 "--set", "train.steps=4", "--resume", "--no-eval"]) == 0
    assert main(["train", "--config", str(task), "--out", str(tmp_path / "ref"), *SETS, "--set", "train.steps=4",
                 "--no-eval"]) == 0
    for run in (out / "cli-half", out / "cli-half-copy"):
        assert torch.load(run / "last.pt", weights_only=True)["step"] == 4
        _same_curve(run, tmp_path / "ref")
    # evaluation with 2 processes: exactly the single-process accuracy and CI over the same episodes
    two_res = json.loads([line for line in cli[0]["stdout"].splitlines() if line.startswith("{")][0])
    one_res = evaluate_run(out / "cli-half")
    assert (two_res["accuracy"], two_res["ci95"], two_res["episodes"]) == (one_res["accuracy"], one_res["ci95"], 40)
    assert two_res["processes"] == 2 and one_res["processes"] == 1
    # bench: one result file, written by rank 0, that says how many processes trained it
    files = list((out / "bench-results").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["machine"]["processes"] == 2


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", METALEARN_DIST_TIMEOUT="60", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_torchrun_m_metalearn_train(tmp_path):
    task = _digits_task(tmp_path)
    r = _torchrun(["-m", "metalearn", "train", "--config", str(task), "--out", str(tmp_path / "run"), *SETS,
                   "--set", "train.steps=2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("trained to step 2") == 1 and r.stdout.count("over 40 episodes") == 1, r.stdout
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["processes"] == 2


FAIL_SCRIPT = '''
import os, sys
from metalearn.episodes import EpisodeSampler
from metalearn.cli import main
if os.environ["RANK"] == "1":
    real = EpisodeSampler.sample
    calls = []
    def sample(self, tasks=None):
        calls.append(1)
        if len(calls) == 3:
            import time
            print(f"failing at {time.time()}", file=sys.stderr, flush=True)
            raise ValueError("injected failure in the third draw")
        return real(self, tasks)
    EpisodeSampler.sample = sample
sys.exit(main(sys.argv[1:]))
'''


def test_a_failing_rank_ends_the_job_within_seconds_with_its_error(tmp_path):
    task = _digits_task(tmp_path)
    script = tmp_path / "fail.py"
    script.write_text(FAIL_SCRIPT)
    r = _torchrun([str(script), "train", "--config", str(task), "--out", str(tmp_path / "run"), *SETS,
                   "--set", "train.steps=50", "--no-eval", "--quiet"], tmp_path, timeout=90)
    end = time.time()
    assert r.returncode != 0
    assert "metalearn train: error (rank 1 of 2): injected failure in the third draw" in r.stderr, r.stderr
    assert "error (rank 0 of 2): lost contact with another process of the job" in r.stderr, r.stderr
    failed_at = float(r.stderr.split("failing at ")[1].split()[0])
    assert end - failed_at < 10, end - failed_at   # the job ends seconds after the failure, not at a timeout
