"""Name -> object lookups for the CLI (the only place that resolves names; library code passes objects)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from metalearn.config import ConfigError, TaskConfig
from metalearn.data.storage import ClassImages
from metalearn.learners.base import Learner

# keys that may change between a checkpoint and the config that resumes/evaluates it
MUTABLE_KEYS = {"train.steps", "train.log_every", "train.checkpoint_every", "train.threads", "train.precision", "data.root",
                "data.cache_dir", "data.device", "data.source", "eval", "name", "reference",
                "maml.eval_inner_steps", "maml.vmap", "maml.chunk_size", "maml.check_finite"}


def resolve_device(name: str) -> torch.device:
    """``data.device`` -> torch.device (auto: CUDA when available); a clear error for anything else.  In a
    distributed run a CUDA device is this process's own, ``cuda:LOCAL_RANK``."""
    from metalearn import distributed
    from metalearn.checks import check_device
    return distributed.device_for(check_device("data.device", name))


def _omniglot(cfg: TaskConfig, split: str) -> ClassImages:
    from metalearn.data.omniglot import load_omniglot
    return load_omniglot(cfg.data.root, split=split, image_size=cfg.data.image_size,
                         rotations=cfg.data.rotations, source=cfg.data.source, cache_dir=cfg.data.cache_dir)


def _miniimagenet(cfg: TaskConfig, split: str) -> ClassImages:
    from metalearn.data.miniimagenet import load_miniimagenet
    if split == "trainval":   # the standard files define three splits; trainval is the first two together
        return ClassImages.concat([_miniimagenet(cfg, s) for s in ("train", "val")])
    return load_miniimagenet(cfg.data.root, split=split, source=cfg.data.source, cache_dir=cfg.data.cache_dir)


def _digits(cfg: TaskConfig, split: str) -> ClassImages | None:
    from metalearn.data.digits import load_digits
    if split == "val":
        return None  # digits has no meta-validation classes
    if split == "trainval":
        raise ConfigError("train.split: trainval needs validation classes, and dataset 'digits' has none; "
                          "use train.split: train")
    return load_digits(split)


DATASETS: dict[str, Callable[[TaskConfig, str], ClassImages | None]] = {
    "omniglot": _omniglot, "miniimagenet": _miniimagenet, "digits": _digits}


def check_episode_fit(data: ClassImages, where: str, ways: tuple[str, int], shots: tuple[str, int],
                      queries: tuple[str, int]) -> None:
    """ConfigError naming the setting when episodes of (ways, shots, queries) cannot be drawn from ``data``.

    Args:
        data: The split's images.
        where: Which split it is ("the test split of omniglot").
        ways: ``(name, value)`` of the setting, e.g. ``("eval.ways", 2000)``.
        shots: ``(name, value)`` of the setting.
        queries: ``(name, value)`` of the setting.

    Raises:
        ConfigError: More ways than classes, or more shots + queries than the smallest class has images.
    """
    (wk, w), (sk, k), (qk, q) = ways, shots, queries
    if w > data.num_classes:
        raise ConfigError(f"{wk}={w} but {where} has only {data.num_classes} classes")
    fewest = int(data.counts.min())
    if k + q > fewest:
        c = int(data.counts.argmin())
        raise ConfigError(f"{sk} + {qk} = {k} + {q} = {k + q} images per class, but class {data.names[c]!r} of "
                          f"{where} has only {fewest}")


def check_splits(cfg: TaskConfig, splits: list[tuple[str, str]]) -> None:
    """Check, before any training, that every split a run will draw episodes from fits the episodes asked of it.

    Splits the dataset does not have are left out.

    Args:
        cfg: The task config.
        splits: Pairs of a split and the config section whose ways/shots/queries it serves (``[("train",
            "train"), ("val", "eval"), ("test", "eval")]``).

    Raises:
        ConfigError: An unknown dataset, or a split the episodes do not fit.
    """
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"dataset: unknown {cfg.dataset!r}; expected one of {sorted(DATASETS)}")
    for split, section in dict.fromkeys(splits):
        data = DATASETS[cfg.dataset](cfg, split)   # the decoded split (cached), not moved to the device
        if data is None:
            continue
        sec = getattr(cfg, section)
        check_episode_fit(data, f"the {split} split of {cfg.dataset}", (f"{section}.ways", sec.ways),
                          (f"{section}.shots", sec.shots), (f"{section}.queries", sec.queries))


def load_split(cfg: TaskConfig, split: str) -> ClassImages | None:
    """The ``split`` of the configured dataset on the configured device (None: the dataset has no such split)."""
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"dataset: unknown {cfg.dataset!r}; expected one of {sorted(DATASETS)}")
    data = DATASETS[cfg.dataset](cfg, split)
    return None if data is None else data.to(resolve_device(cfg.data.device))


def _backbone(cfg: TaskConfig, in_channels: int) -> torch.nn.Module:
    from metalearn.nn import Conv4
    if cfg.model.backbone != "conv4":
        raise ConfigError(f"model.backbone: unknown {cfg.model.backbone!r}; expected one of ['conv4']")
    return Conv4(in_channels=in_channels, hidden=cfg.model.hidden)


def _protonet(cfg: TaskConfig, image_shape: tuple) -> Learner:
    from metalearn.learners.protonet import ProtoNet
    return ProtoNet(_backbone(cfg, image_shape[0]), check_support=False)  # fed by EpisodeSampler: always complete


def _maml(cfg: TaskConfig, image_shape: tuple) -> Learner:
    from metalearn.learners.maml import MAML
    from metalearn.nn import MamlConv4
    if cfg.model.backbone != "maml_conv4":
        raise ConfigError(f"model.backbone: learner 'maml' needs 'maml_conv4' (a classifier with a head), "
                          f"got {cfg.model.backbone!r}")
    if cfg.eval.ways != cfg.train.ways:
        raise ConfigError(f"eval.ways: the MAML head has train.ways={cfg.train.ways} outputs, so eval.ways must "
                          f"match, got {cfg.eval.ways}")
    if image_shape[-1] != image_shape[-2]:
        raise ConfigError(f"data: maml_conv4 expects square images, got {tuple(image_shape)}")
    m = cfg.maml
    model = MamlConv4(image_shape[0], cfg.train.ways, hidden=cfg.model.hidden, pool=cfg.model.pool,
                      image_size=image_shape[-1])
    return MAML(model, cfg.train.ways, inner_lr=m.inner_lr, inner_steps=m.inner_steps,
                eval_inner_steps=m.eval_inner_steps, first_order=m.first_order, learn_lr=m.learn_lr,
                adapt=m.adapt, vmap=m.vmap, chunk_size=m.chunk_size, check_finite=m.check_finite)


def _matchnet(cfg: TaskConfig, image_shape: tuple) -> Learner:
    from metalearn.learners.matchnet import MatchingNet, embedding_dim
    encoder = _backbone(cfg, image_shape[0])
    m = cfg.matchnet
    return MatchingNet(encoder, embedding_dim(encoder, image_shape), fce=m.fce, process_steps=m.process_steps,
                       lstm_hidden=m.lstm_hidden, scale=m.scale, distance=m.distance,
                       support_score=m.support_score, check_support=False)  # fed by EpisodeSampler: always complete


LEARNERS: dict[str, Callable[[TaskConfig, tuple], Learner]] = {"protonet": _protonet, "maml": _maml,
                                                                "matchnet": _matchnet}


def _siamese(cfg: TaskConfig, image_shape: tuple) -> Learner:
    from metalearn.augment import AffineRanges
    from metalearn.learners.siamese import Siamese, embedding_dim
    from metalearn.nn import Conv4, KochNet
    s, c = cfg.siamese, image_shape[0]
    if cfg.model.backbone == "koch":
        if image_shape[-1] != image_shape[-2]:
            raise ConfigError(f"data: the koch backbone expects square images, got {tuple(image_shape)}")
        encoder = KochNet(c, image_shape[-1], hidden=cfg.model.hidden, fc=s.fc or 4096)
    elif cfg.model.backbone == "conv4":
        encoder = Conv4(in_channels=c, hidden=cfg.model.hidden)
        if s.fc:
            encoder = torch.nn.Sequential(encoder, torch.nn.Linear(embedding_dim(encoder, image_shape), s.fc),
                                          torch.nn.Sigmoid())
    else:
        raise ConfigError(f"model.backbone: learner 'siamese' needs 'conv4' or 'koch', got {cfg.model.backbone!r}")
    ranges = AffineRanges(s.rotation, s.shear, (s.scale_min, s.scale_max), s.translate, 105, s.distort_p)
    return Siamese(encoder, embedding_dim(encoder, image_shape), ranges if s.distort else None, fill=s.fill,
                   seed=cfg.train.seed, check_support=False,  # fed by EpisodeSampler: always complete
                   support_score=s.support_score)


LEARNERS["siamese"] = _siamese


def build_learner(cfg: TaskConfig, image_shape: tuple) -> Learner:
    """The untrained learner a task config describes (learner, backbone and their sections), conv weights in
    channels-last ([`channels_last`][metalearn.engine.channels_last]) except for the MAML family (NCHW measured
    faster there).

    Args:
        cfg: The task config (a run's ``config.yaml`` read with
            [`config_from_dict`][metalearn.config.config_from_dict], or [`load_config`][metalearn.config.load_config]).
        image_shape: (C, H, W) of the images; a checkpoint stores it as ``meta["image_shape"]``.

    Returns:
        The learner, on the CPU, in training mode; ``load_state_dict(checkpoint["model"])`` restores a run's
        weights.

    Raises:
        ConfigError: An unknown learner or a backbone the learner cannot use.
    """
    if cfg.learner not in LEARNERS:
        raise ConfigError(f"learner: unknown {cfg.learner!r}; expected one of {sorted(LEARNERS)}")
    from metalearn.engine import channels_last, fused_kernels
    learner = LEARNERS[cfg.learner](cfg, tuple(image_shape))
    if cfg.learner == "maml":
        # second-order MAML keeps NCHW weights: channels-last made its step 15% slower, loop and vmap alike
        # (results/speed/maml_variants_1t-*.json: batch norm from primitive ops mixes the two layouts)
        return learner
    # conv weights channels-last; Conv4 blocks train with the fused BatchNorm -> pool -> ReLU kernel
    return fused_kernels(channels_last(learner))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = prefix + k
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two config dicts, ignoring `MUTABLE_KEYS`."""
    fa, fb = _flatten(a), _flatten(b)
    # a key one side lacks (a config section added after that checkpoint was written) counts as its default
    defaults = _flatten(TaskConfig(dataset="").to_dict())
    missing = object()

    def fixed(k: str) -> bool:
        return not any(k == m or k.startswith(m + ".") for m in MUTABLE_KEYS)

    def value(f: dict, k: str):
        return f[k] if k in f else defaults.get(k, missing)

    return sorted(k for k in set(fa) | set(fb) if fixed(k) and value(fa, k) != value(fb, k))


def run_meta(cfg: TaskConfig, image_shape: tuple) -> dict:
    """What every checkpoint stores about the run that made it."""
    return {"config": cfg.to_dict(), "config_hash": cfg.hash(), "learner": cfg.learner,
            "model": dataclasses.asdict(cfg.model), "image_shape": list(image_shape)}


def check_compatible(cfg: TaskConfig, meta: dict, what: str) -> None:
    """Raise ValueError if checkpoint ``meta`` was made by another learner/model/config than ``cfg``."""
    if meta.get("learner") != cfg.learner or meta.get("model") != dataclasses.asdict(cfg.model):
        raise ValueError(f"{what} holds a {meta.get('learner')!r} model {meta.get('model')}, but the config asks "
                         f"for a {cfg.learner!r} model {dataclasses.asdict(cfg.model)}")
    diff = config_differences(meta.get("config", {}), cfg.to_dict())
    if diff:
        raise ValueError(f"{what} was made with a different config: {', '.join(diff)} differ")
