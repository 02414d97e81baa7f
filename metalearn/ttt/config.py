"""TTT task files (``tasks/ttt_*.yaml``): a frozen dataclass per section, parsed as strictly as
[`metalearn.config`][metalearn.config] (unknown keys and wrong types are errors naming the key;
``--set key=value`` overrides).

Sections: ``model`` (the ResNet), ``train`` ([`JointTrainConfig`][metalearn.ttt.train.JointTrainConfig]),
``ttt`` (standard and online TTT), ``ssl`` (the self-supervised task: rotation, contrastive or reconstruction),
``tent``, ``eval``
(which test sets and methods), ``data``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from metalearn.config import ConfigError, _build, apply_overrides, load_yaml, yaml_dump
from metalearn.ttt.train import JointTrainConfig

METHODS = ("source", "ttt", "ttt_online", "norm_adapt", "tent")


@dataclass(frozen=True)
class TTTModelConfig:
    """The network (section ``model``): a pre-activation ResNet for CIFAR-10
    ([`ResNetCIFAR`][metalearn.nn.resnet_cifar.ResNetCIFAR]).

    Attributes:
        depth: Depth 6n+2 (26 in the paper: 4 blocks per stage).
        norm: ``gn`` (GroupNorm, the paper's main numbers) or ``bn`` (BatchNorm2d, for norm adaptation and Tent).
        groups: GroupNorm groups (``gn`` only).
        width: Channel multiplier of the 16/32/64 stages.
        rotation_head: A self-supervised branch beside the main head; False is the object-recognition-only
            baseline.
    """
    depth: int = 26
    norm: str = "gn"                 # gn (GroupNorm, 8 groups) | bn (BatchNorm2d)
    groups: int = 8
    width: int = 1
    rotation_head: bool = True       # a self-supervised branch (the one of ssl.task); False: object only


@dataclass(frozen=True)
class TTTAdaptConfig:
    """Test-time training (section ``ttt``): standard TTT (weights reset before every image) and TTT-Online.

    Attributes:
        steps: Standard TTT: SGD steps per test image.
        online_steps: TTT-Online: SGD steps per image, the weights carried along the stream.
        lr: SGD learning rate (no momentum).
        copies: Augmented copies of the test image per step.
        adapt: What adapts: ``trunk`` (the paper: stem, stage 1 and stage 2), ``trunk+rotation`` (the released
            code), ``trunk+ssl`` (the trunk and the branch of ``ssl.task``) or ``all``.
        chunk_size: Test images adapted at once (batched with ``vmap``).
        seed: Seed of the augmentations.
    """
    steps: int = 10                  # standard TTT: SGD steps per image
    online_steps: int = 1            # TTT-Online: steps per image
    lr: float = 0.001
    copies: int = 32                 # augmented copies of the test image per step
    adapt: str = "trunk"             # trunk (paper: stem+stage1+stage2) | trunk+rotation (released code) | all
    chunk_size: int = 64             # images adapted at once (vmap)
    seed: int = 0


@dataclass(frozen=True)
class TTTSSLConfig:
    """The self-supervised task (section ``ssl``; ``metalearn.ttt.ssl``): its name and settings (each task
    reads its own).

    Attributes:
        task: ``rotation``, ``contrastive`` or ``reconstruction``.
        weight: Weight of the self-supervised loss: joint loss = CE(main) + weight * self-supervised loss.
        temperature: Contrastive: the NT-Xent temperature.
        crop_scale: Contrastive: the smallest crop area of a view.
        mask_ratio: Reconstruction: the share of the patches masked.
        patch: Reconstruction: the patch side in pixels.
    """
    task: str = "rotation"           # rotation | contrastive | reconstruction
    weight: float = 1.0              # joint loss = CE(main) + weight * self-supervised loss
    temperature: float = 0.5         # contrastive: NT-Xent temperature
    crop_scale: float = 0.2          # contrastive: smallest crop area of a view
    mask_ratio: float = 0.5          # reconstruction: share of the patches masked
    patch: int = 4                   # reconstruction: patch side in pixels

    def make(self):
        """The [`SelfSupervisedTask`][metalearn.ttt.ssl.SelfSupervisedTask] these settings describe."""
        from metalearn.ttt.ssl import make_task
        return make_task(self.task, **dataclasses.asdict(self))


@dataclass(frozen=True)
class TentConfig:
    """Tent (section ``tent``; Wang et al. 2021): entropy minimisation on the norm layers' affine parameters.

    Attributes:
        lr: Adam's learning rate.
        batch_size: Test images per adaptation batch.
        steps: Adam steps per test batch.
    """
    lr: float = 0.001                # Adam
    batch_size: int = 128
    steps: int = 1                   # Adam steps per test batch


@dataclass(frozen=True)
class TTTEvalConfig:
    """Which test sets and methods ``metalearn ttt eval`` runs (section ``eval``).

    Attributes:
        severity: CIFAR-10-C severity, 1 to 5.
        corruptions: ``all`` or comma-separated corruption names; ``clean`` is the uncorrupted test set.
        images: The first N test images of each set (up to 1000 keeps CIFAR-10's original order).
        ttt_images: The first N of those for standard TTT, the slowest method (0: all of them).
        methods: ``auto`` (what the model supports) or a comma-separated subset of ``source``, ``ttt``,
            ``ttt_online``, ``norm_adapt``, ``tent``.
        batch_size: Batch of the source and norm-adaptation evaluations.
        corruption_seed: Seed of the generated corruptions.
        cifar10c: ``generated`` (our implementation, [`metalearn.data.corruptions`][metalearn.data.corruptions])
            or ``official`` (the released ``.npy`` files).
    """
    severity: int = 5
    corruptions: str = "all"         # all | comma-separated names; 'clean' is the uncorrupted test set
    images: int = 1000               # first N test images per set (<= 1000 keeps CIFAR-10's original order)
    ttt_images: int = 0              # first N of those for standard TTT (0: all of them)
    methods: str = "auto"            # auto (from the model) | comma-separated subset of METHODS
    batch_size: int = 128            # source / norm_adapt batch
    corruption_seed: int = 0
    cifar10c: str = "generated"     # generated (metalearn.data.corruptions) | official (the released .npy files)


@dataclass(frozen=True)
class TTTDataConfig:
    """Where CIFAR-10 is read and cached (section ``data``).

    Attributes:
        root: Data root holding ``cifar10/`` (and ``cifar10c/``); None reads ``$METALEARN_DATA``.
        cache_dir: Folder of the decoded caches; None reads ``$METALEARN_CACHE``, else ``~/.cache/metalearn``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    """
    root: str | None = None
    cache_dir: str | None = None
    device: str = "auto"             # auto | cpu | cuda[:N]


@dataclass(frozen=True)
class TTTTaskConfig:
    """A test-time-training task file (``tasks/ttt_*.yaml``) resolved, one dataclass per section.

    Read with ``load_ttt_config(path, overrides)``; ``metalearn ttt train`` and ``metalearn ttt eval`` run it.

    Attributes:
        name: Name of the task in result files.
        dataset: ``cifar10``, the only dataset of the pipeline.
        model: The network.
        train: Joint training.
        ttt: Standard TTT and TTT-Online.
        ssl: The self-supervised task.
        tent: Tent.
        eval: Test sets and methods.
        data: Data root, cache and device.
        reference: Where the published numbers come from.
    """
    name: str = ""
    dataset: str = "cifar10"
    model: TTTModelConfig = field(default_factory=TTTModelConfig)
    train: JointTrainConfig = field(default_factory=JointTrainConfig)
    ttt: TTTAdaptConfig = field(default_factory=TTTAdaptConfig)
    ssl: TTTSSLConfig = field(default_factory=TTTSSLConfig)
    tent: TentConfig = field(default_factory=TentConfig)
    eval: TTTEvalConfig = field(default_factory=TTTEvalConfig)
    data: TTTDataConfig = field(default_factory=TTTDataConfig)
    reference: str = ""              # where the published numbers come from

    def to_dict(self) -> dict:
        """The config as plain data, as written to a run's ``config.yaml``."""
        return _plain(dataclasses.asdict(self))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


ADAPT_FILTERS = {"trunk": "trunk", "trunk+rotation": ["trunk", "rotation"], "trunk+ssl": "trunk+ssl", "all": "all"}


def adapt_filter(cfg: TTTTaskConfig):
    """The parameter filter of ``ttt.adapt`` (``trunk+ssl``: the trunk and the branch of ``ssl.task``)."""
    if cfg.ttt.adapt == "trunk+ssl":
        from metalearn.ttt.ssl import SSL_TASKS
        return ["trunk", SSL_TASKS[cfg.ssl.task].head]
    return ADAPT_FILTERS[cfg.ttt.adapt]


def validate(cfg: TTTTaskConfig) -> None:
    def positive(key: str, v) -> None:
        if v < 1:
            raise ConfigError(f"{key}: expected >= 1, got {v}")
    if cfg.dataset != "cifar10":
        raise ConfigError(f"dataset: expected cifar10, got {cfg.dataset!r}")
    m, t, a, e = cfg.model, cfg.train, cfg.ttt, cfg.eval
    if m.norm not in ("gn", "bn"):
        raise ConfigError(f"model.norm: expected gn or bn, got {m.norm!r}")
    if m.depth < 8 or (m.depth - 2) % 6:
        raise ConfigError(f"model.depth: expected 6n+2 >= 8, got {m.depth}")
    for key, v in (("model.groups", m.groups), ("model.width", m.width), ("train.epochs", t.epochs),
                   ("train.batch_size", t.batch_size), ("train.checkpoint_every", t.checkpoint_every),
                   ("train.log_every", t.log_every), ("ttt.steps", a.steps), ("ttt.online_steps", a.online_steps),
                   ("ttt.copies", a.copies), ("ttt.chunk_size", a.chunk_size), ("tent.batch_size", cfg.tent.batch_size),
                   ("tent.steps", cfg.tent.steps), ("eval.images", e.images), ("eval.batch_size", e.batch_size)):
        positive(key, v)
    for key, v in (("train.lr", t.lr), ("ttt.lr", a.lr), ("tent.lr", cfg.tent.lr), ("train.gamma", t.gamma)):
        if not v > 0:
            raise ConfigError(f"{key}: expected > 0, got {v}")
    if t.weight_decay < 0:
        raise ConfigError(f"train.weight_decay: expected >= 0, got {t.weight_decay}")
    if t.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision: expected auto, bf16 or fp32, got {t.precision!r}")
    if not 0 <= t.momentum < 1:
        raise ConfigError(f"train.momentum: expected a value in [0, 1), got {t.momentum}")
    if t.max_steps < 0 or e.ttt_images < 0:
        raise ConfigError("train.max_steps / eval.ttt_images: expected >= 0")
    if list(t.milestones) != sorted(t.milestones):
        raise ConfigError(f"train.milestones: expected increasing epochs, got {list(t.milestones)}")
    if a.adapt not in ADAPT_FILTERS:
        raise ConfigError(f"ttt.adapt: expected one of {sorted(ADAPT_FILTERS)}, got {a.adapt!r}")
    validate_ssl(cfg)
    if not 1 <= e.severity <= 5:
        raise ConfigError(f"eval.severity: expected 1..5, got {e.severity}")
    if e.cifar10c not in ("generated", "official"):
        raise ConfigError(f"eval.cifar10c: expected 'generated' or 'official', got {e.cifar10c!r}")
    if e.methods != "auto":
        bad = [x for x in e.methods.split(",") if x.strip() not in METHODS]
        if bad:
            raise ConfigError(f"eval.methods: unknown {bad}; expected 'auto' or a comma list of {list(METHODS)}")
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", cfg.data.device):
        raise ConfigError(f"data.device: expected auto, cpu, cuda or cuda:N, got {cfg.data.device!r}")


def validate_ssl(cfg: TTTTaskConfig) -> None:
    """Range checks of the ``ssl`` section, and of the TTT settings the chosen task constrains."""
    from metalearn.ttt.ssl import SSL_TASKS
    s = cfg.ssl
    if s.task not in SSL_TASKS:
        raise ConfigError(f"ssl.task: expected one of {sorted(SSL_TASKS)}, got {s.task!r}")
    for key, v in (("ssl.weight", s.weight), ("ssl.temperature", s.temperature)):
        if not v > 0:
            raise ConfigError(f"{key}: expected > 0, got {v}")
    if not 0 < s.crop_scale <= 1:
        raise ConfigError(f"ssl.crop_scale: expected a value in (0, 1], got {s.crop_scale}")
    if not 0 < s.mask_ratio < 1:
        raise ConfigError(f"ssl.mask_ratio: expected a value in (0, 1), got {s.mask_ratio}")
    if s.patch < 1 or 32 % s.patch:
        raise ConfigError(f"ssl.patch: expected a divisor of the image side 32 (1, 2, 4, 8, 16, 32), got {s.patch}")
    if s.task == "contrastive" and cfg.ttt.copies % 2:
        raise ConfigError(f"ttt.copies: the contrastive task makes pairs of views, so copies must be even, got "
                          f"{cfg.ttt.copies}")
    if cfg.ttt.adapt == "trunk+rotation" and s.task != "rotation":
        raise ConfigError(f"ttt.adapt: 'trunk+rotation' adapts the rotation head, but ssl.task is {s.task!r}; "
                          "use 'trunk+ssl' (the trunk and the task's branch)")


def ttt_config_from_dict(data: dict) -> TTTTaskConfig:
    cfg = _build(TTTTaskConfig, data, "")
    validate(cfg)
    return cfg


def load_ttt_config(path: str | Path, overrides: list[str] | None = None) -> TTTTaskConfig:
    data = apply_overrides(load_yaml(path), overrides or [])
    try:
        return ttt_config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def dump_ttt_config(cfg: TTTTaskConfig) -> str:
    return yaml_dump(cfg.to_dict())


def methods_for(cfg: TTTTaskConfig, has_rotation_head: bool, has_bn: bool) -> list[str]:
    """The methods ``eval.methods`` names.

    ``'auto'``: source; TTT and TTT-Online with a rotation head or another self-supervised branch; norm_adapt and
    Tent with BatchNorm.  An explicit list is taken as it is (Tent also on GroupNorm when asked explicitly).

    Args:
        cfg: The TTT task config.
        has_rotation_head: The model has a rotation head or another self-supervised branch.
        has_bn: The model has BatchNorm layers.
    """
    if cfg.eval.methods != "auto":
        return [x.strip() for x in cfg.eval.methods.split(",")]
    out = ["source"]
    if has_rotation_head:
        out += ["ttt", "ttt_online"]
    if has_bn:
        out += ["norm_adapt", "tent"]
    return out
