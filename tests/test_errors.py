"""User errors and faults through the CLI: exit code 2, one line naming the argument, key or file and what was
expected, no traceback, nothing half-written (docs/errors.md lists the same cases)."""
from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from metalearn.cli import main
from metalearn.data.cifar10 import CLASSES

DIGITS = "tasks/protonet_digits_5w5s.yaml"
TINY = ["--quiet", "--set", "train.steps=4", "--set", "train.shots=1", "--set", "train.queries=2",
        "--set", "train.checkpoint_every=2", "--set", "train.log_every=2", "--set", "model.hidden=8",
        "--set", "eval.episodes=10", "--set", "eval.batch_size=5"]
MAML = ["--set", "learner=maml", "--set", "model.backbone=maml_conv4"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------ config numbers
def test_exponent_float_on_the_command_line_trains(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--config", DIGITS, "--out", str(tmp_path / "r"), "--no-eval", *TINY,
                       "--set", "train.lr=1e-3", "--set", "train.weight_decay=1E-5", "--set", "train.lr_step=1_000")
    assert code == 0, err
    resolved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 1e-3 and resolved["train"]["weight_decay"] == 1e-5
    assert resolved["train"]["lr_step"] == 1000


@pytest.mark.parametrize("override,words", [
    ("train.lr=.inf", ["train.lr", "finite"]), ("train.lr=.nan", ["train.lr", "finite"]),
    ("train.weight_decay=-1", ["train.weight_decay", ">= 0"]), ("train.lr=[1", ["train.lr", "expected float", "'[1'"]),
])
def test_bad_numbers_stop_before_anything_is_written(tmp_path, capsys, override, words):
    code, _, err = run(capsys, "train", "--config", DIGITS, "--out", str(tmp_path / "r"), *TINY, "--set", override)
    line = one_line_error(code, err)
    assert all(w in line for w in words), line
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------ diverging runs
def _finite_checkpoint(path: Path) -> bool:
    ck = torch.load(path, weights_only=True)
    return all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())


def test_a_diverging_run_stops_naming_step_learner_and_loss(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--config", DIGITS, "--out", str(out), *TINY, "--set", "train.lr=1e30",
                       "--set", "train.checkpoint_every=1")
    line = one_line_error(code, err)
    assert "ProtoNet" in line and "at step 2" in line and "nan" in line.lower() and "train.lr" in line
    assert all(_finite_checkpoint(p) for p in out.glob("*.pt"))   # nothing with NaN weights


def test_maml_support_loss_nan_names_the_training_step(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--config", DIGITS, "--out", str(tmp_path / "r"), *TINY, *MAML,
                       "--set", "maml.inner_lr=1e30", "--set", "maml.inner_steps=2")
    line = one_line_error(code, err)
    assert "MAML" in line and "training step 1" in line and "support loss is nan" in line and "inner step 1" in line
    assert not (tmp_path / "r" / "last.pt").exists()


def test_maml_query_loss_nan_is_caught_before_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--config", DIGITS, "--out", str(out), *TINY, *MAML,
                       "--set", "maml.inner_lr=1e30", "--set", "maml.inner_steps=1", "--set", "train.checkpoint_every=1")
    line = one_line_error(code, err)
    assert "MAML" in line and "step 1" in line and ("nan" in line or "inf" in line)
    assert not (out / "last.pt").exists()


# ------------------------------------------------------------------------------------------ splits, paths, kinds
@pytest.mark.parametrize("override,words", [
    ("eval.ways=2000", ["eval.ways=2000", "test split of digits", "5 classes"]),
    ("eval.queries=2000", ["eval.shots + eval.queries", "test split of digits"]),
    ("train.ways=6", ["train.ways=6", "train split of digits"]),
    ("train.queries=500", ["train.shots + train.queries", "train split of digits"]),
])
def test_every_split_is_checked_before_training(tmp_path, capsys, override, words):
    out = tmp_path / "r"
    t0 = time.perf_counter()
    code, _, err = run(capsys, "train", "--config", DIGITS, "--out", str(out), *TINY, "--set", "train.steps=100000",
                       "--set", override)
    line = one_line_error(code, err)
    assert all(w in line for w in words), line
    assert not out.exists() and time.perf_counter() - t0 < 30   # before training, nothing written


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--config", DIGITS, "--out", str(out), "--no-eval", *TINY]) == 0
    return out


def test_eval_flags_are_named_when_they_do_not_fit(digits_run, capsys):
    line = one_line_error(*run(capsys, "eval", "--checkpoint", str(digits_run), "--ways", "9")[::2])
    assert "--ways=9" in line and "test split of digits" in line


def test_checkpoint_path_typo_says_the_file_does_not_exist(digits_run, tmp_path, capsys):
    line = one_line_error(*run(capsys, "eval", "--checkpoint", str(digits_run / "bset.pt"))[::2])
    assert f"{str(digits_run / 'bset.pt')!r} does not exist" in line and "best.pt" in line
    assert "bset.pt/config.yaml" not in line
    line = one_line_error(*run(capsys, "ttt", "eval", "--checkpoint", str(digits_run / "lsat.pt"))[::2])
    assert "lsat.pt' does not exist" in line and "last.pt" in line
    line = one_line_error(*run(capsys, "eval", "--checkpoint", str(tmp_path / "nowhere"))[::2])
    assert "nowhere' does not exist" in line
    line = one_line_error(*run(capsys, "eval", "--checkpoint", str(tmp_path))[::2])
    assert "not a run directory" in line and "config.yaml" in line


def _ttt_run(tmp_path: Path) -> Path:
    from metalearn.ttt.config import dump_ttt_config, load_ttt_config
    run_dir = tmp_path / "ttt"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_ttt_config(load_ttt_config("tasks/ttt_cifar10_gn.yaml")))
    (run_dir / "last.pt").write_bytes(b"")
    (run_dir / "best.pt").write_bytes(b"")
    return run_dir


def test_a_run_of_the_other_kind_names_its_command(digits_run, tmp_path, capsys):
    line = one_line_error(*run(capsys, "ttt", "eval", "--checkpoint", str(digits_run))[::2])
    assert "few-shot run" in line and "'protonet'" in line and "metalearn eval --checkpoint" in line
    assert "unknown config key" not in line
    line = one_line_error(*run(capsys, "eval", "--checkpoint", str(_ttt_run(tmp_path)))[::2])
    assert "test-time-training run" in line and "metalearn ttt eval --checkpoint" in line


def test_unknown_device_is_refused(tmp_path, capsys, monkeypatch):
    run_dir = _ttt_run(tmp_path)
    for argv in (["ttt", "eval", "--checkpoint", str(run_dir), "--device", "tpu"],
                 ["ttt", "train", "--config", "tasks/ttt_cifar10_gn.yaml", "--out", str(tmp_path / "t"),
                  "--device", "tpu"],
                 ["data", "cifar10c", "--data-dir", str(tmp_path), "--device", "tpu", "--quiet"],
                 ["train", "--config", DIGITS, "--out", str(tmp_path / "d"), "--set", "data.device=cuda:x"]):
        line = one_line_error(*run(capsys, *argv)[::2])
        assert "expected auto, cpu, cuda or cuda:N" in line and ("'tpu'" in line or "cuda:x" in line), line
    if not torch.cuda.is_available():
        line = one_line_error(*run(capsys, "ttt", "eval", "--checkpoint", str(run_dir), "--device", "cuda")[::2])
        assert "CUDA is not available" in line
    assert not (tmp_path / "t").exists() and not (tmp_path / "d").exists()


def test_missing_data_root_names_the_flag_of_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("METALEARN_DATA", raising=False)
    line = one_line_error(*run(capsys, "data", "cifar10c", "--quiet", "--cache-dir", str(tmp_path))[::2])
    assert "--data-dir" in line and "METALEARN_DATA" in line


# ------------------------------------------------------------------------------------------ tiny CIFAR-10
def _jpeg(c: int, k: int) -> bytes:
    a = np.full((32, 32, 3), (20 * c + 5 * k) % 256, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "cifar10_jpeg.tar.gz", "w:gz") as tf:
        for split, n in (("train", 2), ("test", 1)):
            for c in range(10):
                for k in range(n):
                    data = _jpeg(c, k)
                    info = tarfile.TarInfo(f"{split}/{CLASSES[c]}/{k:04d}.jpg")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return tmp_path / "data"


def test_unusable_cache_directory_names_the_setting(cifar_root, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = one_line_error(*run(capsys, "data", "cifar10c", "--data-dir", str(cifar_root), "--cache-dir",
                               str(blocker / "cache"), "--quiet", "--corruptions", "fog", "--severities", "1")[::2])
    assert "cache directory" in line and "--cache-dir" in line and "cannot be created" in line
    monkeypatch.setenv("METALEARN_CACHE", str(blocker / "cache"))
    line = one_line_error(*run(capsys, "ttt", "train", "--config", "tasks/ttt_cifar10_gn.yaml", "--out",
                               str(tmp_path / "t"), "--set", f"data.root={cifar_root}", "--quiet")[::2])
    assert "METALEARN_CACHE" in line and "cannot be created" in line
    # an existing directory that refuses writes
    import metalearn.data.cache as cache_mod
    monkeypatch.setenv("METALEARN_CACHE", str(tmp_path / "ro"))

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))
    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", refuse)
    line = one_line_error(*run(capsys, "data", "cifar10c", "--data-dir", str(cifar_root), "--quiet",
                               "--corruptions", "fog", "--severities", "1")[::2])
    assert "cannot write the cache file" in line and "Permission denied" in line and "METALEARN_CACHE" in line


def test_quiet_hides_the_data_decoding_bars(cifar_root, tmp_path, capsys):
    code, out, err = run(capsys, "ttt", "train", "--config", "tasks/ttt_cifar10_gn.yaml", "--out", str(tmp_path / "t"),
                         "--set", f"data.root={cifar_root}", "--set", f"data.cache_dir={tmp_path / 'c'}",
                         "--set", "model.depth=8", "--set", "model.width=1", "--set", "train.max_steps=1",
                         "--set", "train.batch_size=4", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "decoding" not in err and "it/s" not in err and "img/s" not in err, err
    # and without --quiet the bar is there (the same loader)
    from metalearn.data.cifar10 import load_cifar10
    load_cifar10(cifar_root, "test", tmp_path / "c2")
    assert "decoding CIFAR-10 test" in capsys.readouterr().err


def test_damaged_cifar10c_entry_is_rebuilt_and_said_so(cifar_root, tmp_path, capsys):
    argv = ["data", "cifar10c", "--data-dir", str(cifar_root), "--cache-dir", str(tmp_path / "c"), "--quiet",
            "--corruptions", "fog", "--severities", "1"]
    assert main(argv) == 0
    npy = next((tmp_path / "c" / "cifar10c").rglob("fog_1.npy"))
    good = npy.read_bytes()
    npy.write_bytes(good[:-7])
    # a separate process: what a user sees on stderr (pytest would record the warning instead)
    proc = subprocess.run([sys.executable, "-m", "metalearn.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0 and npy.read_bytes() == good, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metalearn: warning: cache file") and "fog_1.npy" in lines[0]
    assert "rebuilding" in lines[0]
    # a flipped byte (same size) is found by the checksum when the entry is loaded
    from metalearn.data.cache import CacheRebuildWarning
    from metalearn.data.cifar10c import load_cifar10c
    npy.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    with pytest.warns(CacheRebuildWarning, match="fog_1.npy"):
        x, _ = load_cifar10c("fog", 1, cifar_root, tmp_path / "c", progress=False)
    assert npy.read_bytes() == good and x.shape == (10, 3, 32, 32)


# ------------------------------------------------------------------------------------------ disk full
def _fill_disk_when_writing(monkeypatch, marker: str, after: int = 0):
    """os.fdopen of a temporary whose name contains ``marker`` returns a file whose writes fail with ENOSPC once
    ``after`` bytes went through (what a full disk does)."""
    import metalearn.data.cache as cache_mod
    real = os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(memoryview(b).cast("B"))
            if self.n > after:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def flush(self):
            self.f.flush()

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    def fdopen(fd, *a, **k):
        f = real(fd, *a, **k)
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        return Full(f) if marker in os.path.basename(name) else f
    monkeypatch.setattr(cache_mod.os, "fdopen", fdopen)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name the temporary")
def test_disk_full_during_a_checkpoint_save(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    assert main(["train", "--config", DIGITS, "--out", str(out), "--no-eval", *TINY]) == 0
    before = (out / "last.pt").read_bytes()
    _fill_disk_when_writing(monkeypatch, ".last.pt.", after=1000)
    line = one_line_error(*run(capsys, "train", "--config", DIGITS, "--out", str(out), "--no-eval", "--resume",
                               *TINY, "--set", "train.steps=6")[::2])
    assert f"no space left on device while writing {out / 'last.pt'}" in line and "enforce" not in line
    assert (out / "last.pt").read_bytes() == before                      # the previous checkpoint survives
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name the temporary")
def test_disk_full_during_a_cache_build(cifar_root, tmp_path, capsys, monkeypatch):
    _fill_disk_when_writing(monkeypatch, ".cifar10_jpeg_test.npy.", after=100)
    line = one_line_error(*run(capsys, "data", "cifar10c", "--data-dir", str(cifar_root), "--cache-dir",
                               str(tmp_path / "c"), "--quiet", "--corruptions", "fog", "--severities", "1")[::2])
    assert "no space left on device while writing" in line and "cifar10_jpeg_test.npy" in line
    assert not list((tmp_path / "c").rglob("*.tmp")) and not list((tmp_path / "c").rglob("*.npy"))


# ------------------------------------------------------------------------------------------ stale temporaries
_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from metalearn.data import cache
    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind == "checkpoint":
        from metalearn.train.checkpoint import atomic_save
        import torch
        real = torch.save
        def slow_save(obj, f):
            f.write(b"x" * 4096)
            f.flush()
            print("writing", flush=True)
            time.sleep(120)
        torch.save = slow_save
        atomic_save({"format": 1}, target)
    else:
        real = cache._HashingWriter.write
        def slow_write(self, b):
            n = real(self, b)
            self.flush()
            print("writing", flush=True)
            time.sleep(120)
            return n
        cache._HashingWriter.write = slow_write
        cache.save_uint8_cache(target, np.zeros((4, 1, 8, 8), np.uint8), {})
""")


def _start_writer(kind: str, target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, kind, str(target)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _temps(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    from metalearn.data.cache import load_uint8_cache, save_uint8_cache
    from metalearn.train.checkpoint import atomic_save, load_checkpoint
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    run_dir.mkdir()
    cache.mkdir()
    # a killed checkpoint save and a killed cache build, each leaving its temporary
    for kind, target, name in (("checkpoint", run_dir / "last.pt", "last.pt"), ("cache", cache / "x", "x.npy")):
        proc = _start_writer(kind, target)
        assert len(_temps(target.parent, name)) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(_temps(target.parent, name)) == 1          # kill -9: nothing cleaned it up
    # an old temporary of an older metalearn (no pid in the name), a fresh one, and files that are not ours
    old_legacy, fresh_legacy = run_dir / ".last.pt.abcd1234.tmp", run_dir / ".last.pt.zyxw9876.tmp"
    for p in (old_legacy, fresh_legacy):
        p.write_bytes(b"x")
    os.utime(old_legacy, (time.time() - 3 * 3600, time.time() - 3 * 3600))
    others = [run_dir / ".last.pt.notes", run_dir / ".best.pt.abcd1234.tmp", run_dir / "last.pt.abcd1234.tmp",
              cache / ".x.npy.12345-otherhost.abcd1234.tmp"]   # another host's writer may still be running
    for p in others:
        p.write_bytes(b"keep")
    atomic_save({"format": 1, "step": 3}, run_dir / "last.pt")
    save_uint8_cache(cache / "x", np.ones((2, 1, 4, 4), np.uint8), {"a": 1})
    assert _temps(run_dir, "last.pt") == [fresh_legacy]
    assert _temps(cache, "x.npy") == [others[-1]] and not _temps(cache, "x.json")
    assert all(p.exists() for p in others)
    assert load_checkpoint(run_dir / "last.pt")["step"] == 3 and load_uint8_cache(cache / "x")[1] == {"a": 1}

    # a writer that is still running keeps its temporary; once it is gone, the next write removes it
    live = _start_writer("checkpoint", run_dir / "last.pt")
    try:
        live_tmp = [p for p in _temps(run_dir, "last.pt") if f".{live.pid}-" in p.name]
        assert len(live_tmp) == 1
        atomic_save({"format": 1, "step": 4}, run_dir / "last.pt")
        assert set(_temps(run_dir, "last.pt")) == {fresh_legacy, live_tmp[0]}
    finally:
        live.kill()
        live.wait()
    atomic_save({"format": 1, "step": 5}, run_dir / "last.pt")
    assert _temps(run_dir, "last.pt") == [fresh_legacy] and load_checkpoint(run_dir / "last.pt")["step"] == 5


# ------------------------------------------------------------------------------------------ ttt resume
def test_ttt_resume_after_a_cut_off_metrics_line(tmp_path):
    from metalearn.nn.resnet_cifar import ResNetCIFAR
    from metalearn.ttt.train import JointTrainConfig, train_joint
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(16) % 10
    cfg = JointTrainConfig(epochs=2, batch_size=8, max_steps=2, checkpoint_every=2, log_every=1)
    train_joint(ResNetCIFAR(8, 10, "gn", 2, 1, True), images, labels, cfg, tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "loss": 2.3, "ma')   # killed mid-line
    cfg = JointTrainConfig(epochs=2, batch_size=8, max_steps=4, checkpoint_every=2, log_every=1)
    state = train_joint(ResNetCIFAR(8, 10, "gn", 2, 1, True), images, labels, cfg, tmp_path, resume=True)
    assert state.step == 4 and state.resumed_from == 2
    assert [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()] == [1, 2, 3, 4]


def test_ttt_training_loss_nan_stops_before_the_checkpoint(tmp_path, monkeypatch):
    from metalearn.nn.resnet_cifar import ResNetCIFAR
    from metalearn.train.trainer import NonFiniteLossError
    from metalearn.ttt import train as ttt_train
    real, calls = ttt_train.joint_loss, []

    def nan_from_step_2(model, x, y, precision="fp32"):
        loss, metrics = real(model, x, y, precision=precision)
        calls.append(1)
        if len(calls) >= 2:
            loss = loss * float("nan")
            metrics = {**metrics, "loss": loss.detach()}
        return loss, metrics
    monkeypatch.setattr(ttt_train, "joint_loss", nan_from_step_2)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = ttt_train.JointTrainConfig(epochs=4, batch_size=8, max_steps=4, checkpoint_every=3, log_every=100)
    with pytest.raises(NonFiniteLossError, match=r"ResNetCIFAR became nan at step 2"):
        ttt_train.train_joint(ResNetCIFAR(8, 10, "gn", 2, 1, True), images, torch.arange(16) % 10, cfg, tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_no_loader_unpickles_with_the_pickle_module():
    """Data files that are pickles go through metalearn.data.safe_pickle, never pickle.load / pickle.loads."""
    root = Path(__file__).resolve().parents[1] / "metalearn" / "data"
    hits = [str(p.relative_to(root)) for p in root.rglob("*.py") if re.search(r"\bpickle\.loads?\(", p.read_text())]
    assert hits == [], hits


def test_raw_os_errors_read_as_one_plain_line(tmp_path, capsys, monkeypatch):
    import metalearn.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))
    monkeypatch.setattr(cli, "cmd_report", full)
    line = one_line_error(*run(capsys, "report", "--results", str(tmp_path))[::2])
    assert line == f"metalearn report: error: no space left on device while writing {tmp_path / 'metrics.jsonl'}"

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/x")
    monkeypatch.setattr(cli, "cmd_report", denied)
    assert one_line_error(*run(capsys, "report")[::2]) == "metalearn report: error: Permission denied: /x"
