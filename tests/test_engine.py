"""The CPU engine: allocator setting, precision policy, channels-last weights, folded BatchNorm for inference."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conformance import check_learner
from metalearn.config import ConfigError, config_from_dict
from metalearn.engine import (OneDNNChain, autocast, bf16_supported, channels_last, fold_batchnorm,
                              omp_env_defaults, onednn_inference, resolve_precision)
from metalearn.episodes import EpisodeSampler
from metalearn.learners.matchnet import MatchingNet
from metalearn.learners.protonet import ProtoNet
from metalearn.learners.siamese import Siamese
from metalearn.nn import Conv4
from metalearn.train.evaluator import evaluate
from metalearn.types import Episode

ROOT = Path(__file__).resolve().parents[1]


def episode(ways=5, shots=1, queries=3, batch=None, seed=0, size=28):
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    sy = torch.arange(ways).repeat_interleave(shots).expand(*lead, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(*lead, -1).contiguous()
    return Episode(torch.rand(*lead, ways * shots, 1, size, size, generator=g), sy,
                   torch.rand(*lead, ways * queries, 1, size, size, generator=g), qy, ways)


def assert_close_predictions(got, ref, tol):
    """Logits within ``tol`` of the reference's scale, and the same predicted class for every query whose
    reference margin (top-1 minus top-2 logit) exceeds ``tol`` of the scale: on random images a lightly
    trained model has many near-ties, which bf16 rounding may flip, so only those are exempt (at least 30% of
    the queries must be confident for the check to mean anything)."""
    scale = ref.abs().max()
    assert ((got - ref).abs().max() / scale).item() < tol
    top2 = ref.topk(2, dim=-1).values
    confident = (top2[..., 0] - top2[..., 1]) > tol * scale
    assert confident.float().mean().item() >= 0.3
    assert torch.equal(got.argmax(-1)[confident], ref.argmax(-1)[confident])


def trained_conv4(steps=30, seed=0):
    """A Conv4 ProtoNet with non-trivial BatchNorm statistics and weights (a few Adam steps)."""
    torch.manual_seed(seed)
    learner = ProtoNet(Conv4(1, hidden=16))
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for i in range(steps):
        opt.zero_grad()
        learner.loss(episode(seed=i))[0].backward()
        opt.step()
    return learner.eval()


def test_allocator_applied_once_and_can_be_disabled():
    code = ("import metalearn.engine as e; a = e.tune_allocator(); b = e.tune_allocator(); "
            "print(a, b, e.allocator_tuned())")
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                        env={**os.environ, "METALEARN_MALLOC": ""}).stdout.split()
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "METALEARN_MALLOC": "default"}).stdout.split()
    if sys.platform.startswith("linux"):
        assert on == ["True", "True", "True"]
    assert off == ["False", "False", "False"]


def test_omp_default_respects_the_user_and_the_machine(tmp_path):
    # a quiet machine: spin briefly; a shared one (or unknown): sleep at once
    env = {}
    assert omp_env_defaults(env, others=0) == {"GOMP_SPINCOUNT": "30000"} and "OMP_WAIT_POLICY" not in env
    env = {}
    assert omp_env_defaults(env, others=1) == {"OMP_WAIT_POLICY": "PASSIVE"} and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert omp_env_defaults({}, others=None) == {"OMP_WAIT_POLICY": "PASSIVE"}
    for user in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"}, {"METALEARN_OMP": "default"}):
        env = dict(user)
        assert omp_env_defaults(env, others=0) == {} and env == user
    # the count of other runnable tasks: the fewest over the reads, the reader itself not counted
    from metalearn._omp import runnable_others
    f = tmp_path / "loadavg"
    f.write_text("0.50 0.40 0.30 3/120 999\n")
    assert runnable_others(samples=3, gap_s=0.0, path=str(f)) == 2
    assert runnable_others(path=str(tmp_path / "missing")) is None
    # `import metalearn` decides before torch loads, in a fresh process
    code = "import metalearn, os; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "METALEARN_OMP")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=clean).stdout.split()
    assert out in (["PASSIVE", "None"], ["None", "30000"])


def test_threads_policy_benchmark_environments():
    import importlib.util
    spec = importlib.util.spec_from_file_location("threads_policy", ROOT / "benchmarks" / "threads_policy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "7", "X": "1"}
    assert mod.policy_env("ACTIVE", base) == {"OMP_WAIT_POLICY": "ACTIVE", "X": "1"}
    assert mod.policy_env("SPIN=30000", base) == {"GOMP_SPINCOUNT": "30000", "METALEARN_OMP": "default", "X": "1"}
    for bad in ("SPIN=lots", "SLEEPY"):
        with pytest.raises(ValueError, match="--policies"):
            mod.policy_env(bad, {})
    assert mod.main(["--policies", "SLEEPY"]) == 2


def test_channels_last_restrides_every_conv_including_one_channel():
    net = Conv4(1, hidden=8)
    first = net.encoder[0][0].weight
    assert first.is_contiguous(memory_format=torch.channels_last)       # (8, 1, 3, 3): ambiguous ...
    assert first.stride()[1] != 1                                         # ... but NCHW strides
    channels_last(net)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.stride()[1] == 1, m                           # real channels-last strides
    y = net.encoder[0][0](torch.rand(2, 1, 28, 28))
    assert y.is_contiguous(memory_format=torch.channels_last) and y.stride()[1] == 1


def test_channels_last_and_folded_batchnorm_give_identical_eval_logits():
    learner = trained_conv4()
    other = channels_last(trained_conv4())
    l64 = trained_conv4().double()
    ep = episode(batch=3, seed=99)
    with torch.no_grad():
        ref = learner.predict(ep)
        cl = other.predict(ep)
        folded = fold_batchnorm(learner)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert any(isinstance(m, nn.BatchNorm2d) for m in learner.modules())     # the original is unchanged
        fl = folded.predict(ep)
    # fp32: other summation orders only (logits are squared distances, |a|^2 + |b|^2 - 2ab, which cancels)
    scale = ref.abs().max()
    assert (cl - ref).abs().max() <= 5e-5 * scale and (fl - ref).abs().max() <= 5e-5 * scale
    assert torch.equal(cl.argmax(-1), ref.argmax(-1)) and torch.equal(fl.argmax(-1), ref.argmax(-1))
    # float64: the fold is exact up to rounding
    ep64 = Episode(ep.support_x.double(), ep.support_y, ep.query_x.double(), ep.query_y, ep.ways)
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(l64).predict(ep64), l64.predict(ep64), atol=1e-10, rtol=1e-10)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")
def test_onednn_chain_gives_the_folded_logits():
    learner = trained_conv4()
    ep = episode(batch=3, seed=5)
    folded = fold_batchnorm(learner)
    chained = onednn_inference(fold_batchnorm(learner))
    assert sum(isinstance(m, OneDNNChain) for m in chained.modules()) == 1          # Conv4's whole encoder
    with torch.inference_mode():
        ref, got = folded.predict(ep), chained.predict(ep)
    scale = ref.abs().max()
    assert (got - ref).abs().max() <= 1e-5 * scale and torch.equal(got.argmax(-1), ref.argmax(-1))
    # with gradients on it runs the original modules: the same values, and they reach the weights
    x = torch.rand(4, 1, 28, 28)
    enc = chained.encoder
    y = enc(x)
    assert y.requires_grad is False                                                    # folded copies: no grads
    p = next(enc.parameters())
    p.requires_grad_(True)
    enc(x).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    # float64 (no oneDNN tensors): the original modules, the same numbers
    l64 = fold_batchnorm(trained_conv4().double())
    ep64 = Episode(ep.support_x.double(), ep.support_y, ep.query_x.double(), ep.query_y, ep.ways)
    with torch.inference_mode():
        assert torch.equal(onednn_inference(fold_batchnorm(l64)).predict(ep64), l64.predict(ep64))
    # a chain with a BatchNorm left in it (not folded) is not wrapped
    assert not any(isinstance(m, OneDNNChain) for m in onednn_inference(Conv4(1, hidden=8).eval()).modules())


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")
def test_onednn_chain_chunks_give_the_one_call_output():
    chained = onednn_inference(fold_batchnorm(trained_conv4()))
    chain = next(m for m in chained.modules() if isinstance(m, OneDNNChain))
    x = torch.rand(7, 1, 28, 28)
    with torch.inference_mode():
        whole = chain(x)
        chain.CHUNK_BYTES = 3 * 16 * 28 * 28 * 4        # 3 images per oneDNN call (fp32): chunks of 3, 3, 1
        parts = chain(x)
        single = torch.cat([chain(x[i:i + 1]) for i in range(7)])
    assert parts.shape == whole.shape == single.shape == (7, 16, 1, 1)
    assert torch.allclose(parts, whole, atol=1e-6, rtol=1e-5) and torch.allclose(single, whole, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not bf16_supported("cpu") or not torch.backends.mkldnn.is_available(),
                    reason="this CPU has no native bf16")
def test_onednn_chain_in_bf16_matches_autocast():
    learner = trained_conv4(steps=60)
    ep = episode(batch=20, seed=7, queries=5)
    folded = fold_batchnorm(learner)
    chained = onednn_inference(fold_batchnorm(learner))
    folded.precision = chained.precision = "bf16"
    with torch.inference_mode():
        ref, got = folded.predict(ep), chained.predict(ep)
    assert got.dtype == torch.float32
    # two bf16 paths round activations at different points (how closely depends on the CPU's oneDNN kernels:
    # 0.3% of the logit scale on AVX-512-BF16, 2% with AMX): both within bf16's tolerance, and equal
    # predictions wherever the scores are not near a tie
    assert_close_predictions(got, ref, tol=0.05)


def test_fold_keeps_batch_statistics_norms():
    from metalearn.nn import MamlConv4
    net = MamlConv4(1, 5, hidden=8, norm="torch")             # BatchNorm without running stats: batch statistics
    folded = fold_batchnorm(net)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 4


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_bf16_predictions_match_fp32_on_a_trained_model():
    learner = trained_conv4(steps=60)
    ep = episode(batch=20, seed=7, queries=5)
    with torch.no_grad():
        ref = learner.predict(ep)
        learner.precision = "bf16"
        low = learner.predict(ep)
        learner.precision = "fp32"
    assert low.dtype == torch.float32                                     # heads and distances stay fp32
    assert_close_predictions(low, ref, tol=0.05)


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_evaluate_precision_and_fold_agree():
    learner = trained_conv4()
    from metalearn.data.storage import ClassImages
    from metalearn.episodes import EpisodeSampler
    g = torch.Generator().manual_seed(0)
    data = ClassImages(torch.randint(0, 256, (40 * 6, 1, 28, 28), dtype=torch.uint8, generator=g),
                       torch.arange(40) * 6, torch.full((40,), 6), tuple(str(i) for i in range(40)))
    runs = {}
    for prec, fold in (("fp32", False), ("fp32", True), ("bf16", True)):
        s = EpisodeSampler(data, 5, 1, 5, batch_size=4, seed=3)
        runs[prec, fold] = evaluate(learner, s, 40, precision=prec, fold_bn=fold)
    assert runs["fp32", True].per_episode == runs["fp32", False].per_episode
    diff = abs(runs["bf16", True].accuracy - runs["fp32", False].accuracy)
    assert diff < 3.0
    assert learner.precision == "fp32"          # evaluate restores the learner's own precision


def _rotated_split(classes=12, per_class=6, seed=0):
    from metalearn.data.storage import ClassImages
    g = torch.Generator().manual_seed(seed)
    return ClassImages(torch.randint(0, 256, (classes * per_class, 1, 28, 28), dtype=torch.uint8, generator=g),
                       torch.arange(classes) * per_class, torch.full((classes,), per_class),
                       tuple(str(i) for i in range(classes)), (0, 90, 180, 270))


def _with_running_stats(learner, seed=0):
    learner.train()
    with torch.no_grad():                   # BatchNorm running statistics away from (0, 1)
        for i in range(3):
            learner.encoder(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(seed + i)) * 2)
    return learner.eval()


REUSERS = [lambda: ProtoNet(Conv4(1, hidden=8), check_support=False),
           lambda: MatchingNet(Conv4(1, hidden=8), embed_dim=8, fce=True, process_steps=2),
           lambda: Siamese(Conv4(1, hidden=8), dim=8, fill=1.0)]


@pytest.mark.parametrize("make", REUSERS, ids=["protonet", "matchnet", "siamese"])
def test_reused_embeddings_give_the_episode_logits(make):
    from metalearn.train.evaluator import _table_if_worth
    torch.manual_seed(0)
    learner = _with_running_stats(make())
    data = _rotated_split()
    model = fold_batchnorm(learner)
    a, b = EpisodeSampler(data, 4, 2, 3, batch_size=3, seed=5), EpisodeSampler(data, 4, 2, 3, batch_size=3, seed=5)
    with torch.inference_mode():
        table = _table_if_worth(model, a, draws=1, force=True)
        assert table is not None and table.table.shape == (4, data.images.shape[0], 8)   # every image, 4 angles
        for _ in range(3):
            rows, rot_k = a.sample_indices()
            ep = b.sample()
            zs, zq = table.episode(rows, rot_k, a.shots)
            got = model.logits_from_embeddings(zs, ep.support_y, zq, ep.ways)
            ref = model.predict(ep)
            assert got.shape == ref.shape == (3, 12, 4)
            assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-5
    runs = [evaluate(learner, EpisodeSampler(data, 4, 2, 3, batch_size=3, seed=9), 20, reuse_embeddings=r)
            for r in (False, None, True)]
    assert runs[0].per_episode == runs[1].per_episode == runs[2].per_episode


class _BatchCentred(nn.Module):
    """An encoder whose embedding of an image depends on the rest of the batch (it subtracts the batch mean)."""

    def __init__(self):
        super().__init__()
        self.net = Conv4(1, hidden=8)

    def forward(self, x):
        z = self.net(x)
        return z - z.mean(dim=-2, keepdim=True)


def test_embeddings_are_not_reused_where_they_depend_on_the_batch():
    from metalearn.nn import MamlConv4
    from metalearn.train.evaluator import _reuse_possible, _table_if_worth
    torch.manual_seed(0)
    data = _rotated_split()
    sampler = EpisodeSampler(data, 4, 1, 3, batch_size=2, seed=1)
    centred = ProtoNet(_BatchCentred(), check_support=False).eval()
    with torch.inference_mode():
        assert _reuse_possible(centred, sampler)                         # nothing in its modules says so ...
        assert _table_if_worth(centred, sampler, draws=1, force=True) is None   # ... the check finds it
    runs = [evaluate(centred, EpisodeSampler(data, 4, 1, 3, batch_size=2, seed=1), 10, reuse_embeddings=r)
            for r in (False, True)]
    assert runs[0].per_episode == runs[1].per_episode
    transductive = ProtoNet(nn.Sequential(MamlConv4(1, 5, hidden=8, norm="torch").features, nn.Flatten()))
    assert not _reuse_possible(fold_batchnorm(transductive), sampler)    # BatchNorm on batch statistics
    assert not _reuse_possible(fold_batchnorm(ProtoNet(Conv4(1, hidden=8))), _F64Sampler(data, 4, 1, 3))


class _F64Sampler(EpisodeSampler):
    def sample(self, tasks=None):               # a subclass whose episodes are not its gathered indices
        ep = super().sample(tasks)
        return Episode(ep.support_x.double(), ep.support_y, ep.query_x.double(), ep.query_y, ep.ways)


def test_embeddings_are_reused_only_where_the_episodes_embed_more_images_than_the_split():
    from metalearn.train.evaluator import _table_if_worth
    learner = fold_batchnorm(ProtoNet(Conv4(1, hidden=8), check_support=False))
    data = _rotated_split()                    # 72 images x 4 angles = 288 embeddings
    sampler = EpisodeSampler(data, 4, 1, 3, batch_size=2, seed=1)   # 32 images per draw
    with torch.inference_mode():
        assert _table_if_worth(learner, sampler, draws=8, force=False) is None      # 256 < 288
        assert _table_if_worth(learner, sampler, draws=9, force=False) is not None  # 288
        from metalearn.data.storage import ClassImages
        rot0 = EpisodeSampler(ClassImages(data.images, data.offsets, data.counts, data.names, (0,)),
                              4, 1, 3, batch_size=2, seed=1)
        t = _table_if_worth(learner, rot0, draws=3, force=False)                    # 96 >= 72: one angle
        assert t is not None and t.table.shape[0] == 1


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
@pytest.mark.parametrize("make", [
    lambda: ProtoNet(Conv4(1, hidden=8)),
    lambda: MatchingNet(Conv4(1, hidden=8), embed_dim=8, fce=True, process_steps=2),
    lambda: Siamese(Conv4(1, hidden=8), dim=8, fill=1.0)], ids=["protonet", "matchnet", "siamese"])
def test_conformance_under_bf16(make):
    def bf16():
        learner = make()
        learner.precision = "bf16"
        return learner
    check_learner(bf16, episode(ways=3, shots=2, queries=2, batch=2, size=16), atol=5e-2, rtol=5e-2)


def test_precision_policy_resolution_and_config():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu", bf16_safe=False) == "fp32"
    assert resolve_precision("auto", "cpu") == ("bf16" if bf16_supported("cpu") else "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "auto")
    with pytest.raises(ConfigError, match="train.precision"):
        config_from_dict({"dataset": "omniglot", "train": {"precision": "half"}})
    with pytest.raises(ConfigError, match="train.precision: bf16 is not offered for learner 'maml'"):
        config_from_dict({"dataset": "omniglot", "learner": "maml", "model": {"backbone": "maml_conv4"},
                          "train": {"precision": "bf16"}})
    assert config_from_dict({"dataset": "omniglot"}).train.precision == "auto"


def test_trainer_sets_the_policy_and_maml_stays_fp32(tmp_path):
    from metalearn.config import TrainConfig
    from metalearn.data.storage import ClassImages
    from metalearn.episodes import EpisodeSampler
    from metalearn.learners.maml import MAML
    from metalearn.nn import MamlConv4
    from metalearn.train.trainer import train
    g = torch.Generator().manual_seed(0)
    data = ClassImages(torch.randint(0, 256, (10 * 4, 1, 28, 28), dtype=torch.uint8, generator=g),
                       torch.arange(10) * 4, torch.full((10,), 4), tuple(str(i) for i in range(10)))
    cfg = TrainConfig(ways=3, shots=1, queries=1, steps=2, val_every=0, checkpoint_every=2, log_every=1)
    pn = ProtoNet(Conv4(1, hidden=4))
    train(pn, EpisodeSampler(data, 3, 1, 1, seed=0), cfg, tmp_path / "pn", progress=False)
    assert pn.precision == ("bf16" if bf16_supported("cpu") else "fp32")
    mm = MAML(MamlConv4(1, 3, hidden=4, pool="stride"), 3)
    train(mm, EpisodeSampler(data, 3, 1, 1, batch_size=2, seed=0), cfg, tmp_path / "mm", progress=False)
    assert mm.precision == "fp32"


def test_maml_variants_benchmark_smoke(tmp_path):
    """benchmarks/maml_variants.py --quick: every variant's meta-gradient matches the float64 loop."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("maml_variants", ROOT / "benchmarks" / "maml_variants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--tasks", "2", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("maml_variants_1t-*.json")
    res = json.loads(path.read_text())
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == set(mod.VARIANTS)
    assert rows["loop_nchw"]["speedup_vs_loop_nchw"] == 1.0
    for name, r in rows.items():
        assert r["meta_grad_rel_err_vs_fp64"] < 1e-3, name
        assert len(r["samples_ms"]) == 2 and r["ms"] > 0
    assert res["command"].startswith("python benchmarks/maml_variants.py") and res["profiles"] == {}


def _cpu_throughput():
    import importlib.util
    spec = importlib.util.spec_from_file_location("cpu_throughput", ROOT / "benchmarks" / "cpu_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_throughput_maml_over_two_processes_keeps_the_meta_gradient():
    """maml2_procs: two gloo processes of one thread, each its half of the meta-batch; rank 0's record holds the
    all-reduced meta-gradient's error against the float64 loop over all 8 tasks."""
    mod = _cpu_throughput()
    spec = {"workload": "maml2_procs", "policy": "default", "threads": 2, "quick": True, "reps": 1, "device": "cpu"}
    rec = mod._run_worker(spec, 300)
    if "error" in rec:          # one retry: the two processes' rendezvous on a free port failed once in a full run
        first = rec["error"]
        rec = mod._run_worker(spec, 300)
        assert "error" not in rec, (first, rec["error"])
    assert rec["processes"] == 2 and rec["threads"] == 2 and rec["threads_per_process"] == 1
    assert rec["meta_grad_rel_err_vs_fp64"] < 1e-4
    assert len(rec["samples_ms"]) == 3 and rec["ms"] > 0


def test_cpu_throughput_processes_row_is_against_the_one_thread_loop_with_levers_off():
    mod = _cpu_throughput()
    recs = [{"workload": "maml2_loop", "policy": "off", "threads": 1, "ms": 400.0, "gflops": 10.0},
            {"workload": "maml2_loop", "policy": "off", "threads": 2, "ms": 300.0, "gflops": 12.0},
            {"workload": "maml2_procs", "policy": "default", "threads": 2, "ms": 160.0, "gflops": 50.0,
             "meta_grad_rel_err_vs_fp64": 1e-6},
            {"workload": "maml2_procs", "policy": "default", "threads": 2, "ms": 240.0, "gflops": 40.0,
             "meta_grad_rel_err_vs_fp64": 1e-6}]
    row = [r for r in mod.summarize(recs) if r["workload"] == "maml2_procs"][0]
    assert row["off_ms"] == 400.0 and row["default_ms"] == 200.0 and row["speedup"] == 2.0
    assert row["off_reference"] == "maml2_loop, 1 thread, levers off"


def test_cpu_throughput_profile_splits_the_step_by_operator_class():
    """--profile: the one-thread default-policy record of a training step holds its self CPU time by class; the
    shares sum to 1, every class of the Conv4 step is there, and the row carries it as default_profile."""
    mod = _cpu_throughput()
    rec = mod._run_worker({"workload": "siamese_train", "policy": "default", "threads": 1, "quick": True, "reps": 1,
                           "device": "cpu", "profile": True}, 300)
    assert "error" not in rec, rec
    prof = rec["profile"]
    assert abs(sum(prof["share"].values()) - 1) < 1e-9 and prof["aten_calls"] > 0
    assert abs(sum(prof["self_ms"].values()) - prof["total_ms"]) < 1e-6
    from metalearn import kernels
    tail = ("fused BN/pool/ReLU",) if kernels.load() is not None else ("batch norm", "pooling")
    for cls in ("conv forward", "conv backward", "sampling", *tail):
        assert prof["self_ms"][cls] > 0, cls
    off = mod._run_worker({"workload": "siamese_train", "policy": "off", "threads": 1, "quick": True, "reps": 1,
                           "device": "cpu", "profile": True}, 300)
    assert "profile" not in off          # only the default policy is profiled
    row = mod.summarize([off, rec])[0]
    assert row["default_profile"] == prof and "off_profile" not in row
    assert "kernel_speedup" not in row                       # no eager_tail record
    tail = mod._run_worker({"workload": "siamese_train", "policy": "eager_tail", "threads": 1, "quick": True,
                            "reps": 1, "device": "cpu", "profile": True}, 300)
    assert tail["profile"]["self_ms"]["batch norm"] > 0 and tail["profile"]["self_ms"]["pooling"] > 0
    assert tail["profile"]["self_ms"]["fused BN/pool/ReLU"] == 0          # METALEARN_KERNELS=off in that worker
    row = mod.summarize([off, rec, tail])[0]
    assert row["eager_tail_profile"] == tail["profile"] and row["kernel_speedup"] > 0


def test_cpu_throughput_eager_tail_row_gives_the_kernel_share():
    mod = _cpu_throughput()
    recs = [{"workload": "protonet_train", "policy": p, "threads": 1, "ms": ms, "gflops": 100.0}
            for p, ms in (("off", 600.0), ("default", 100.0), ("eager_tail", 150.0), ("eager_tail", 170.0))]
    (row,) = mod.summarize(recs)
    assert row["speedup"] == 6.0 and row["eager_tail_ms"] == 160.0 and row["kernel_speedup"] == 1.6


def test_builder_layout_policy_channels_last_for_metric_learners_nchw_for_maml():
    from metalearn.builders import build_learner

    def conv_weights(learner):
        return [m.weight for m in learner.modules() if isinstance(m, nn.Conv2d)]
    proto = build_learner(config_from_dict({"dataset": "omniglot", "model": {"hidden": 8}}), (1, 28, 28))
    assert all(w.stride()[1] == 1 for w in conv_weights(proto))            # real channels-last strides
    from metalearn.nn.conv4 import ConvBlock
    blocks = [m for m in proto.modules() if isinstance(m, ConvBlock)]
    assert len(blocks) == 4 and all(b.fused for b in blocks)                # the fused BN -> pool -> ReLU tail
    maml = build_learner(config_from_dict({"dataset": "omniglot", "learner": "maml",
                                           "model": {"backbone": "maml_conv4", "hidden": 8, "pool": "stride"},
                                           "train": {"ways": 5}}),
                         (1, 28, 28))
    ws = conv_weights(maml)
    assert ws and all(w.is_contiguous() and w.stride()[1] != 1 for w in ws[1:])   # NCHW (after the 1-channel conv)
    assert not any(getattr(m, "fused", False) for m in maml.modules())
