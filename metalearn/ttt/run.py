"""The work of ``metalearn ttt train`` and ``metalearn ttt eval``: runs from a task file, on CIFAR-10 / -10-C.

``train_run`` writes ``OUT/config.yaml`` (resolved), ``metrics.jsonl`` and ``last.pt``; ``eval_run`` evaluates a
run's ``last.pt`` with the methods of its config on the clean test set and the corruptions (``corrupt`` applied to
the first ``eval.images`` test images), and returns per set and method the error in %.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from metalearn.config import ConfigError, load_yaml
from metalearn.nn.resnet_cifar import ResNetCIFAR
from metalearn.ttt.config import TTTTaskConfig, adapt_filter, dump_ttt_config, methods_for, ttt_config_from_dict
from metalearn.ttt.train import JointTrainState, load_model, train_joint


def resolve_device(device: str) -> torch.device:
    """``--device`` (or ``data.device``) -> torch.device (auto: CUDA when available); a clear error otherwise.  In
    a distributed run a CUDA device is this process's own, ``cuda:LOCAL_RANK``."""
    from metalearn import distributed
    from metalearn.checks import check_device
    return distributed.device_for(check_device("--device / data.device", device))


def _ttt_run_config(run_dir: Path, shown: str | Path) -> dict:
    """The raw ``config.yaml`` of a TTT run directory; a few-shot run's is refused, naming its command."""
    from metalearn.config import is_ttt_task
    raw = load_yaml(run_dir / "config.yaml")
    if not is_ttt_task(raw):
        raise ConfigError(f"{str(run_dir)!r} is a few-shot run (learner {raw.get('learner', 'protonet')!r} on "
                          f"dataset {raw.get('dataset')!r}), not a test-time-training run; evaluate it with "
                          f"`metalearn eval --checkpoint {shown}` (or train a TTT model with `metalearn ttt train`)")
    return raw


def build_model(cfg: TTTTaskConfig) -> ResNetCIFAR:
    m = cfg.model
    return ResNetCIFAR(m.depth, 10, m.norm, m.groups, m.width, m.rotation_head,
                       ssl_head=cfg.ssl.task if m.rotation_head else None)


def train_run(cfg: TTTTaskConfig, out: str | Path, *, resume: bool = False, device: str | None = None,
              progress: Callable[[dict], None] | None = None) -> JointTrainState:
    from metalearn.data.cache import atomic_write
    from metalearn.data.cifar10 import load_cifar10

    from metalearn import distributed

    out = Path(out)
    resolved = out / "config.yaml"

    def check_run_dir() -> None:   # rank 0 alone looks at the run directory in a distributed run
        if resume:
            if not resolved.is_file():
                raise ConfigError(f"--resume: {str(resolved)!r} does not exist; nothing to resume")
            old = ttt_config_from_dict(_ttt_run_config(out, out))
            if (old.model, old.train.epochs, old.train.batch_size, old.train.lr, old.train.seed) != (
                    cfg.model, cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.seed):
                raise ConfigError(f"--resume: the run in {str(out)!r} was made with another model or recipe")
        elif (out / "last.pt").exists():
            raise FileExistsError(f"{str(out)!r} already holds a run; add --resume or choose another --out")

    distributed.on_main(check_run_dir)
    dev = resolve_device(device or cfg.data.device)
    torch.manual_seed(cfg.train.seed)
    images, labels = load_cifar10(cfg.data.root, "train", cfg.data.cache_dir)
    images, labels = images.to(dev), labels.to(dev)
    model = build_model(cfg).to(dev)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(resolved, mode="w") as f:
            f.write(dump_ttt_config(cfg))
    return train_joint(model, images, labels, cfg.train, out, resume=resume, meta={"config": cfg.to_dict()},
                       progress=progress, task=cfg.ssl.make() if model.has_ssl_head else None)


def corruption_names(cfg: TTTTaskConfig) -> list[str]:
    """``clean`` first, then the corruptions of ``eval.corruptions``."""
    from metalearn.data.corruptions import CORRUPTIONS
    spec = cfg.eval.corruptions
    names = list(CORRUPTIONS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in CORRUPTIONS and n != "clean"]
    if bad:
        raise ConfigError(f"eval.corruptions: unknown {bad}; expected 'all' or names from {list(CORRUPTIONS)} "
                          "or 'clean'")
    return ["clean"] + [n for n in names if n != "clean"] if spec == "all" else names


def run_method(method: str, model: ResNetCIFAR, x: torch.Tensor, cfg: TTTTaskConfig,
               first_index: int = 0) -> torch.Tensor:
    """Logits of ``method`` on the stream ``x`` with the config's settings.

    Args:
        method: ``source``, ``ttt``, ``ttt_online``, ``norm_adapt`` or ``tent``.
        model: The trained model.
        x: (N, 3, 32, 32) uint8 stream.
        cfg: The TTT task config.
        first_index: The position of ``x[0]`` in the whole stream (seeds TTT's draws).

    Raises:
        ConfigError: An unknown ``method``.
    """
    from metalearn.ttt.adapt import ttt, ttt_online
    from metalearn.ttt.tent import norm_adapt, predict, tent
    a = cfg.ttt
    filt = adapt_filter(cfg)
    task = cfg.ssl.make() if method in ("ttt", "ttt_online") else None
    if method == "source":
        return predict(model, x, cfg.eval.batch_size)
    if method == "ttt":
        return ttt(model, x, steps=a.steps, lr=a.lr, copies=a.copies, adapt=filt, seed=a.seed,
                   chunk_size=a.chunk_size, task=task, first_index=first_index).logits
    if method == "ttt_online":
        return ttt_online(model, x, steps=a.online_steps, lr=a.lr, copies=a.copies, adapt=filt, seed=a.seed,
                          task=task, first_index=first_index).logits
    if method == "norm_adapt":
        return norm_adapt(model, x, cfg.eval.batch_size)
    if method == "tent":
        return tent(model, x, lr=cfg.tent.lr, batch_size=cfg.tent.batch_size, steps=cfg.tent.steps).logits
    raise ConfigError(f"eval.methods: unknown method {method!r}")


#: methods that carry what they adapt from one image (or batch) to the next: they see the stream in order,
#: so a distributed ``ttt eval`` runs them whole on every process (the same result, no speed-up)
SEQUENTIAL_METHODS = ("ttt_online", "tent")


def run_method_split(method: str, model: ResNetCIFAR, x: torch.Tensor, cfg: TTTTaskConfig) -> torch.Tensor:
    """[`run_method`][metalearn.ttt.run.run_method] with the stream split across the processes of a distributed run.

    For the methods that treat each image (``ttt``, ``source``) or each batch of ``eval.batch_size``
    (``norm_adapt``) on its own: every process takes a contiguous run of whole chunks (``ttt.chunk_size`` /
    ``eval.batch_size``, so the chunks are those of one process), TTT's draws seeded by each image's position in
    the stream, and the logits are gathered in stream order.  One process, or a method of
    [`SEQUENTIAL_METHODS`][metalearn.ttt.run.SEQUENTIAL_METHODS]: ``run_method`` itself.

    Args:
        method: The method, as for ``run_method``.
        model: The trained model.
        x: (N, 3, 32, 32) uint8 stream.
        cfg: The TTT task config.
    """
    from metalearn import distributed as D
    if not D.active() or method in SEQUENTIAL_METHODS:
        return run_method(method, model, x, cfg)
    block = cfg.ttt.chunk_size if method == "ttt" else cfg.eval.batch_size
    n = x.shape[0]
    lo, hi = D.block_range(n, block)
    counts = [b - a for a, b in (D.block_range(n, block, r) for r in range(D.world_size()))]
    if hi > lo:
        local = run_method(method, model, x[lo:hi], cfg, first_index=lo)
    else:   # more processes than chunks: this one has nothing to adapt
        local = torch.zeros(0, model.classes, dtype=next(model.parameters()).dtype, device=x.device)
    return D.gather_rows(local, counts)


def eval_run(checkpoint: str | Path, overrides: list[str] | None = None, *, device: str | None = None,
             progress: Callable[[str], None] | None = None,
             on_set: Callable[[str, dict], None] | None = None) -> dict:
    """Evaluate a run directory's ``last.pt`` (or a ``.pt`` in a run directory) with its ``config.yaml``.

    Args:
        checkpoint: The run directory or checkpoint file.
        overrides: ``key=value`` overrides of the run's config.
        device: The device (default: the config's).
        progress: Gets one line per test set and method.
        on_set: ``on_set(name, row)`` is called after each test set (to save partial results).

    Returns:
        ``{"sets": {set: {method: {"error", "n", "wall_s", "pred"}}}, "labels": [...], ...}`` (``pred``: the
        predicted class of each image, in stream order).

    Raises:
        ConfigError: The methods or the self-supervised task do not fit the checkpoint, or more images are asked
            for than a test set has.
    """
    from metalearn.config import apply_overrides
    from metalearn.data.cifar10 import load_cifar10
    from metalearn.data.corruptions import corrupt
    from metalearn.ttt.tent import has_batchnorm

    from metalearn.train.checkpoint import locate_checkpoint

    ck_path = locate_checkpoint(checkpoint, "last.pt")
    cfg = ttt_config_from_dict(apply_overrides(_ttt_run_config(ck_path.parent, checkpoint), overrides or []))
    dev = resolve_device(device or cfg.data.device)
    model, ck = load_model(ck_path, map_location=dev)
    methods = methods_for(cfg, model.has_ssl_head, has_batchnorm(model))
    if ("ttt" in methods or "ttt_online" in methods) and not model.has_ssl_head:
        raise ConfigError(f"eval.methods: {methods} include TTT but {ck_path} has no rotation head (no "
                          "self-supervised branch)")
    if model.has_ssl_head and model.ssl_head != cfg.ssl.task:
        raise ConfigError(f"ssl.task: {cfg.ssl.task!r}, but {ck_path} was trained with the {model.ssl_head!r} "
                          f"branch; evaluate it with ssl.task={model.ssl_head}")
    names = corruption_names(cfg)
    from metalearn import distributed
    if distributed.active() and progress is not None:
        for m in methods:
            if m in SEQUENTIAL_METHODS:
                progress(f"{m}: adapts along the stream in order, so each of the {distributed.world_size()} "
                         "processes runs the whole stream (the same result as one process, no speed-up)")
    x_all, y_all = load_cifar10(cfg.data.root, "test", cfg.data.cache_dir)
    n = cfg.eval.images
    if n > x_all.shape[0]:
        raise ConfigError(f"eval.images: {n} but the test set has {x_all.shape[0]} images")
    x0, y = x_all[:n].to(dev), y_all[:n].to(dev)
    n_ttt = cfg.eval.ttt_images or n
    sets: dict = {}
    for name in names:
        y_set = y
        if name == "clean":
            x = x0
        elif cfg.eval.cifar10c == "official":   # the released CIFAR-10-C .npy files, their own labels
            from metalearn.data.cifar10c import load_cifar10c_official
            x, y_set = load_cifar10c_official(name, cfg.eval.severity, cfg.data.root, limit=n)
            if x.shape[0] < n:
                raise ConfigError(f"eval.images: {n} but the official {name} set has {x.shape[0]} images")
            x, y_set = x.to(dev), y_set.to(dev)
        else:
            x = corrupt(x0, name, cfg.eval.severity, seed=cfg.eval.corruption_seed)
        sets[name] = {}
        for method in methods:
            m_n = min(n_ttt, n) if method == "ttt" else n
            t0 = time.perf_counter()
            logits = run_method_split(method, model, x[:m_n], cfg)
            pred = logits.argmax(-1)
            err = float((pred != y_set[:m_n]).float().mean()) * 100
            sets[name][method] = {"error": err, "n": m_n, "wall_s": time.perf_counter() - t0,
                                  "pred": pred.tolist()}
            if progress is not None:
                progress(f"{name:18s} {method:11s} error {err:5.1f}% on {m_n} images "
                         f"({time.perf_counter() - t0:.0f} s)")
        if on_set is not None:
            on_set(name, sets[name])
    return {"checkpoint": str(ck_path), "step": ck.get("step"), "labels": y.tolist(), "config": cfg.to_dict(),
            "methods": methods, "processes": distributed.world_size(),
            "severity": cfg.eval.severity, "images": n, "ttt_images": n_ttt, "device": str(dev),
            "corruption_seed": cfg.eval.corruption_seed, "cifar10c": cfg.eval.cifar10c, "sets": sets}
