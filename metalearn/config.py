"""Task configuration: frozen dataclasses, built from YAML only at the edges (CLI), validated strictly.

A task file (``tasks/*.yaml``) has the sections below; every key is optional except ``dataset``.  Unknown
keys and wrong types are errors that name the key.  ``--set train.steps=100`` overrides one value.

Numbers are read as a user types them: besides YAML 1.1's forms (``0.001``, ``.5``, ``1_000``), a float in
exponent notation without a dot (``1e-3``, ``3E-4``, ``1e3``) is a float, as in YAML 1.2 and Python.  Floats must
be finite; ranges are checked by [`validate`][metalearn.config.validate].
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration problem: names the key (and file/line where known)."""


# exponent floats without a dot (1e-3, 3E-4, 1_0e3): YAML 1.1 (PyYAML) would read them as strings
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class YAMLLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` / ``3E-4`` as floats (every config file and ``--set``)."""


class YAMLDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes strings [`YAMLLoader`][metalearn.config.YAMLLoader] would read as floats
    (``'1e5'``)."""


for _cls in (YAMLLoader, YAMLDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text with [`YAMLLoader`][metalearn.config.YAMLLoader]."""
    return yaml.load(text, Loader=YAMLLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_dump(data: Any) -> str:
    """Dump plain data with [`YAMLDumper`][metalearn.config.YAMLDumper] (what
    [`yaml_load`][metalearn.config.yaml_load] reads back unchanged)."""
    return yaml.dump(data, Dumper=YAMLDumper, sort_keys=False)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and where episodes are drawn (section ``data`` of a task file).

    Attributes:
        root: Data root holding ``omniglot/`` or ``miniimagenet/``; None reads ``$METALEARN_DATA``.
        cache_dir: Folder of the decoded uint8 caches; None reads ``$METALEARN_CACHE``, else ``~/.cache/metalearn``.
        image_size: Omniglot image side after resizing from 105 px (28 in the benchmarks).
        rotations: Omniglot rotation classes: each character is one class per angle (degrees, multiples of 90).
        source: The on-disk form to read. Omniglot: ``auto``, ``npz``, ``zip``, ``folder`` or ``hf``;
            miniImageNet: ``auto``, ``tar``, ``folder``, ``hf``, ``l2l`` or ``h5``.
        device: Where the split lives and episodes are sampled: ``auto`` (CUDA when available), ``cpu``, ``cuda``
            or ``cuda:N``.
    """
    root: str | None = None          # data root; None -> $METALEARN_DATA
    cache_dir: str | None = None     # decoded-uint8 cache; None -> $METALEARN_CACHE or ~/.cache/metalearn
    image_size: int = 28             # Omniglot resize (105 -> image_size)
    rotations: tuple = (0, 90, 180, 270)   # Omniglot rotation classes
    source: str = "auto"             # omniglot: auto|npz|zip|folder|hf; miniimagenet: auto|tar|folder|hf|l2l|h5
    device: str = "auto"             # where the split lives and episodes are sampled: auto | cpu | cuda


@dataclass(frozen=True)
class ModelConfig:
    """The network (section ``model``).

    Attributes:
        backbone: ``conv4`` (the embedding of ProtoNet, Matching Networks and Siamese), ``maml_conv4`` (Conv4
            with a linear head: the MAML family) or ``koch`` (Koch et al.'s convnet, Siamese only).
        hidden: Channels of every conv block (32 for MAML on miniImageNet); for ``koch``, its first width.
        pool: ``maml_conv4`` only: ``max`` (a 2x2 max-pool per block) or ``stride`` (stride-2 convs, as Finn et
            al.'s Omniglot network).
    """
    backbone: str = "conv4"          # conv4 (ProtoNet embedding) | maml_conv4 (Conv4 + linear head, MAML family)
    hidden: int = 64
    pool: str = "max"                # maml_conv4: max (2x2 max-pool per block) | stride (stride-2 convs, Finn's Omniglot)


@dataclass(frozen=True)
class MamlConfig:
    """Inner loop of the MAML family (section ``maml``, used by ``learner: maml``).

    ``first_order: true`` gives first-order MAML, ``learn_lr: true`` Meta-SGD, ``adapt: head`` ANIL.

    Attributes:
        inner_lr: Step size of the inner SGD steps (Meta-SGD: the initial value of every learned step size).
        inner_steps: Inner steps per task while meta-training.
        eval_inner_steps: Inner steps per task at validation and test time.
        first_order: Treat the inner gradients as constants in the meta-gradient (first-order MAML).
        learn_lr: Meta-SGD: a learned step size per parameter entry, initialised to ``inner_lr``.
        adapt: Which parameters adapt: ``all`` (MAML) or ``head`` (ANIL: only the linear head).
        vmap: Batch the tasks of a meta-batch with ``torch.func.vmap``; false runs them in a Python loop.
        chunk_size: Tasks per vmap chunk (bounds the memory); 0 runs the whole meta-batch at once.
        check_finite: Raise on a non-finite support loss, naming the task and the step (one host sync per
            meta-batch).
    """
    inner_lr: float = 0.4
    inner_steps: int = 1             # inner steps while meta-training
    eval_inner_steps: int = 3        # inner steps at validation / test time
    first_order: bool = False
    learn_lr: bool = False           # Meta-SGD: a learned step size per parameter entry, initialised to inner_lr
    adapt: str = "all"               # all (MAML) | head (ANIL: only the linear head adapts)
    vmap: bool = True                # batch the tasks of a meta-batch with torch.func.vmap (False: a loop)
    chunk_size: int = 0              # tasks per vmap chunk; 0: all at once
    check_finite: bool = True        # raise on a non-finite support loss (one host sync per meta-batch)


@dataclass(frozen=True)
class MatchnetConfig:
    """Matching Networks (section ``matchnet``, used by ``learner: matchnet``; Vinyals et al. 2016).

    Attributes:
        fce: Full context embeddings: a bidirectional LSTM over the support set and an attention LSTM for each
            query; off, both embeddings (f and g) are the backbone's.
        process_steps: K, the attention LSTM's processing steps (``fce`` only).
        lstm_hidden: Width of the LSTMs; 0 uses the embedding size (the paper), otherwise a linear projection to
            this size comes first (``fce`` only).
        scale: Multiplier of the cosine similarities (or of the distances) before the softmax (1 in the paper).
        distance: The attention kernel: ``cosine`` (the paper) or ``l2`` (negative squared Euclidean distances;
            not in the paper).
        support_score: How a K-shot support scores a query at test time: ``attention`` (the paper's eq. 1, the
            attention summed over each class's support images) or ``class_mean`` (softmax over classes of the
            mean of each class's scaled similarities; not in the paper). Training always uses the attention.
    """
    fce: bool = False
    process_steps: int = 5           # K, the attention LSTM's processing steps (fce only)
    lstm_hidden: int = 0             # 0: LSTMs at the embedding size (paper); else a linear projection first
    scale: float = 1.0               # cosines x scale before the softmax (1: the paper)
    distance: str = "cosine"         # cosine (the paper) | l2 (negative squared Euclidean distances)
    support_score: str = "attention"  # test time, K-shot: attention (the paper) | class_mean


@dataclass(frozen=True)
class TrainConfig:
    """Meta-training (section ``train``): the training episodes, the optimiser, validation and checkpoints.

    Attributes:
        split: The classes trained on: ``train``, or ``trainval`` (the train and validation classes together,
            the last stage of Snell et al.'s protocol: retrain on both for the number of steps validation picked
            on ``train``). ``trainval`` needs ``val_every: 0``, since the validation classes are then trained on.
        ways: N, classes per training episode (ProtoNet trains with more ways than it is tested on).
        shots: K, support images per class.
        queries: Q, query images per class.
        batch_size: Tasks per optimiser step (MAML's meta-batch).
        steps: Optimiser steps in all (episodes when ``batch_size`` is 1).
        lr: Adam's learning rate (for MAML, the meta learning rate).
        lr_step: StepLR period: every ``lr_step`` steps the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: StepLR factor (> 0).
        weight_decay: Adam's weight decay (>= 0).
        val_every: Validate every this many steps and keep the best model as ``best.pt``; 0 disables
            validation (the last model is kept).
        val_episodes: Validation episodes, drawn from the ``val`` split with the ``eval`` section's ways, shots
            and queries.
        checkpoint_every: Write ``last.pt`` (everything needed to resume) every this many steps.
        log_every: Append a line to ``metrics.jsonl`` every this many steps.
        seed: Seed of the model initialisation and of the training episodes.
        threads: torch CPU threads; 0 keeps torch's default (one per core).
        precision: Encoder precision: ``auto`` (bf16 where the device runs it natively and the learner keeps
            its accuracy; fp32 for the MAML family), ``bf16`` or ``fp32``.
    """
    split: str = "train"             # train | trainval (train + val classes; needs val_every: 0)
    ways: int = 60
    shots: int = 1
    queries: int = 5
    batch_size: int = 1              # tasks per optimiser step
    steps: int = 20000               # optimiser steps (episodes when batch_size = 1)
    lr: float = 1e-3
    lr_step: int = 2000              # StepLR period in steps
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    val_every: int = 500             # 0 disables validation (last checkpoint is kept)
    val_episodes: int = 200
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    threads: int = 0                 # torch CPU threads; 0 leaves the default (one per core)
    precision: str = "auto"          # encoder precision: auto (bf16 where native and safe) | bf16 | fp32


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation (section ``eval``): the test episodes of ``metalearn eval`` and the end of ``metalearn train``.

    Validation during training uses the same ways, shots and queries.

    Attributes:
        ways: N, classes per test episode.
        shots: K, support images per class.
        queries: Q, query images per class.
        episodes: Test episodes; the accuracy is their mean, with a 95% confidence interval.
        batch_size: Test episodes per forward pass.
        seed: Seed of the test episodes (the same seed draws the same episodes).
        split: The split evaluated: ``train``, ``val`` or ``test``.
    """
    ways: int = 5
    shots: int = 1
    queries: int = 15
    episodes: int = 1000
    batch_size: int = 10             # test episodes per forward pass
    seed: int = 1234
    split: str = "test"


@dataclass(frozen=True)
class SiameseConfig:
    """Siamese networks (section ``siamese``, used by ``learner: siamese``; Koch et al. 2015).

    The twin network is ``model.backbone``: ``conv4`` (28 px) or ``koch`` (Koch's convnet, 105 px;
    ``model.hidden`` is its first width, 64 in the paper).

    Attributes:
        fc: Width of a Linear + sigmoid embedding layer after the backbone; 0: none for ``conv4``, 4096 for
            ``koch``.
        distort: Koch's random affine distortions of the training images.
        distort_p: Probability of each component (rotation, shear, scale, translation) of a distortion.
        rotation: Rotation range in degrees, uniform in [-rotation, rotation].
        shear: Shear range, uniform in [-shear, shear].
        scale_min: Smallest scale factor.
        scale_max: Largest scale factor.
        translate: Translation range in pixels at 105 px (scaled with the image size).
        fill: Value outside a distorted image (Omniglot's background: 1.0); null repeats the border pixels.
        support_score: How a class's K support images score a query: ``mean_prob`` (log of the mean p(same))
            or ``mean_logit`` (the mean verification logit); the same for 1-shot.
    """
    fc: int = 0                      # Linear + sigmoid embedding layer; 0: none for conv4, 4096 for koch
    distort: bool = True             # Koch's random affine distortions of the training images
    distort_p: float = 0.5           # probability of each component (rotation, shear, scale, translation)
    rotation: float = 10.0           # degrees, uniform in [-rotation, rotation]
    shear: float = 0.3               # uniform in [-shear, shear]
    scale_min: float = 0.8
    scale_max: float = 1.2
    translate: float = 2.0           # pixels at 105 px (scaled with the image size)
    fill: float | None = None        # value outside a distorted image (Omniglot background: 1.0); null: border
    support_score: str = "mean_prob"  # K-shot: mean_prob (log mean p(same)) | mean_logit (mean verification logit)

    def __post_init__(self) -> None:
        if self.fc < 0:
            raise ConfigError(f"siamese.fc: expected >= 0, got {self.fc}")
        if not 0.0 <= self.distort_p <= 1.0:
            raise ConfigError(f"siamese.distort_p: expected a probability in [0, 1], got {self.distort_p}")
        if min(self.rotation, self.shear, self.translate) < 0:
            raise ConfigError("siamese.rotation / shear / translate: expected >= 0, got "
                              f"{self.rotation} / {self.shear} / {self.translate}")
        if self.support_score not in ("mean_prob", "mean_logit"):
            raise ConfigError(f"siamese.support_score: expected mean_prob or mean_logit, got {self.support_score!r}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"siamese.scale_min / scale_max: expected 0 < min <= max, got {self.scale_min} / "
                              f"{self.scale_max}")


@dataclass(frozen=True)
class Reference:
    """The published number a task reproduces (section ``reference``); reports set ours beside it.

    Attributes:
        accuracy: Published accuracy, %; null when there is none.
        ci95: Its published 95% confidence interval, %; null when not published.
        source: Where it comes from (paper and table).
    """
    accuracy: float | None = None    # published accuracy, %
    ci95: float | None = None
    source: str = ""


@dataclass(frozen=True)
class TaskConfig:
    """One task file (``tasks/*.yaml``) resolved: the dataset, the learner and one dataclass per section.

    Build it with [`load_config`][metalearn.config.load_config] (YAML and ``--set`` overrides, validated) or
    directly: ``TaskConfig(dataset="omniglot", train=TrainConfig(steps=500))``.

    Attributes:
        dataset: ``omniglot``, ``miniimagenet`` or ``digits`` (the only required key).
        name: Name of the task in result files and reports; empty: the task file's name.
        learner: ``protonet``, ``matchnet``, ``siamese`` or ``maml``.
        data: Where the images come from.
        model: The network.
        maml: The MAML family's inner loop.
        matchnet: Matching Networks' options.
        train: Meta-training.
        eval: Evaluation.
        siamese: Siamese networks' options.
        reference: The published number this task reproduces.
    """
    dataset: str
    name: str = ""
    learner: str = "protonet"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    maml: MamlConfig = field(default_factory=MamlConfig)
    matchnet: MatchnetConfig = field(default_factory=MatchnetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    siamese: SiameseConfig = field(default_factory=SiameseConfig)
    reference: Reference = field(default_factory=Reference)

    def to_dict(self) -> dict:
        """The config as plain data (dicts, lists, numbers, strings), as written to ``config.yaml``."""
        return _plain(dataclasses.asdict(self))

    def hash(self) -> str:
        """Stable hash of the resolved config (independent of key order)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert ``value`` to annotation ``tp``; ConfigError naming ``key`` otherwise."""
    args = get_args(tp)
    if type(None) in args:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is tuple or get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise ConfigError(f"{key}: expected a list of integers, got {value!r}")
        return tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"{key}: expected a finite number, got {value}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover
        raise ConfigError(f"{key}: unsupported type {tp}")
    raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; expected one of {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], key + ".")
        else:
            kwargs[f.name] = _coerce(key, data[f.name], tp)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def config_from_dict(data: dict) -> TaskConfig:
    """Build and validate a [`TaskConfig`][metalearn.config.TaskConfig] from plain data (a parsed task file).

    Raises:
        ConfigError: An unknown key, a wrong type or a value out of range; the message names the key.
    """
    cfg = _build(TaskConfig, data, "")
    validate(cfg)
    return cfg


def validate(cfg: TaskConfig) -> None:
    """Range checks that types alone do not catch."""
    positive = {"train.ways": cfg.train.ways, "train.shots": cfg.train.shots, "train.queries": cfg.train.queries,
                "train.batch_size": cfg.train.batch_size, "train.steps": cfg.train.steps,
                "train.lr_step": cfg.train.lr_step, "eval.ways": cfg.eval.ways, "eval.shots": cfg.eval.shots,
                "eval.queries": cfg.eval.queries, "eval.episodes": cfg.eval.episodes,
                "eval.batch_size": cfg.eval.batch_size, "train.log_every": cfg.train.log_every,
                "train.checkpoint_every": cfg.train.checkpoint_every, "model.hidden": cfg.model.hidden}
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{key}: expected >= 1, got {v}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr: expected > 0, got {cfg.train.lr}")
    if cfg.train.weight_decay < 0:
        raise ConfigError(f"train.weight_decay: expected >= 0, got {cfg.train.weight_decay}")
    if cfg.train.lr_gamma <= 0:
        raise ConfigError(f"train.lr_gamma: expected > 0 (the lr is multiplied by it every train.lr_step steps), "
                          f"got {cfg.train.lr_gamma}")
    if cfg.data.image_size < 1:
        raise ConfigError(f"data.image_size: expected >= 1, got {cfg.data.image_size}")
    if cfg.train.val_every < 0 or cfg.train.val_episodes < 1:
        raise ConfigError("train.val_every: expected >= 0 and train.val_episodes >= 1")
    if cfg.train.split not in ("train", "trainval"):
        raise ConfigError(f"train.split: expected train or trainval, got {cfg.train.split!r}")
    if cfg.train.split == "trainval" and cfg.train.val_every:
        raise ConfigError(f"train.split: trainval trains on the validation classes, so validating on them measures "
                          f"nothing; set train.split: train to validate (train.val_every={cfg.train.val_every}), or "
                          f"train.val_every: 0 to train on train + val")
    if cfg.eval.split not in ("train", "val", "test"):
        raise ConfigError(f"eval.split: expected train, val or test, got {cfg.eval.split!r}")
    m = cfg.maml
    if m.inner_steps < 1 or m.eval_inner_steps < 1:
        raise ConfigError(f"maml.inner_steps / maml.eval_inner_steps: expected >= 1, got {m.inner_steps} / "
                          f"{m.eval_inner_steps}")
    if m.inner_lr <= 0:
        raise ConfigError(f"maml.inner_lr: expected > 0, got {m.inner_lr}")
    if m.adapt not in ("all", "head"):
        raise ConfigError(f"maml.adapt: expected all or head, got {m.adapt!r}")
    if m.chunk_size < 0:
        raise ConfigError(f"maml.chunk_size: expected >= 0, got {m.chunk_size}")
    if cfg.matchnet.process_steps < 1:
        raise ConfigError(f"matchnet.process_steps: expected >= 1, got {cfg.matchnet.process_steps}")
    if cfg.matchnet.lstm_hidden < 0:
        raise ConfigError(f"matchnet.lstm_hidden: expected >= 0, got {cfg.matchnet.lstm_hidden}")
    if cfg.matchnet.lstm_hidden and not cfg.matchnet.fce:
        raise ConfigError("matchnet.lstm_hidden: only used with matchnet.fce: true")
    if not cfg.matchnet.scale > 0:   # also catches nan
        raise ConfigError(f"matchnet.scale: expected > 0, got {cfg.matchnet.scale}")
    if cfg.matchnet.distance not in ("cosine", "l2"):
        raise ConfigError(f"matchnet.distance: expected cosine or l2, got {cfg.matchnet.distance!r}")
    if cfg.matchnet.support_score not in ("attention", "class_mean"):
        raise ConfigError(f"matchnet.support_score: expected attention or class_mean, got "
                          f"{cfg.matchnet.support_score!r}")
    if cfg.train.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision: expected auto, bf16 or fp32, got {cfg.train.precision!r}")
    if cfg.train.precision == "bf16" and cfg.learner == "maml":
        raise ConfigError("train.precision: bf16 is not offered for learner 'maml' (it moves the second-order "
                          "meta-gradient by ~30%); use auto or fp32")
    if cfg.train.threads < 0:
        raise ConfigError(f"train.threads: expected >= 0 (0: one per core), got {cfg.train.threads}")
    if cfg.model.pool not in ("max", "stride"):
        raise ConfigError(f"model.pool: expected max or stride, got {cfg.model.pool!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", cfg.data.device):
        raise ConfigError(f"data.device: expected auto, cpu, cuda or cuda:N, got {cfg.data.device!r}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.steps=100"`` -> (["train", "steps"], 100); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.steps=100")
    key, raw = item.split("=", 1)
    try:
        value = yaml_load(raw)
    except yaml.YAMLError:
        # not a YAML value ('[1', 'a: b: c'): keep the text; the key's type check then says what it expects
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of ``data`` with each ``key=value`` of ``overrides`` set.

    Args:
        data: The config as plain data (not modified).
        overrides: ``key=value`` items (see [`parse_override`][metalearn.config.parse_override]).

    Raises:
        ConfigError: An item is not ``key=value``, or a key runs through a value that is not a section.
    """
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a syntax error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# task files of the test-time-training pipeline (metalearn ttt), which has its own schema (metalearn/ttt/config.py)
TTT_DATASETS = ("cifar10",)


def is_ttt_task(data: dict) -> bool:
    """True for a test-time-training task (``dataset: cifar10``): not an episodic task."""
    return isinstance(data, dict) and data.get("dataset") in TTT_DATASETS


def load_config(path: str | Path, overrides: list[str] | None = None) -> TaskConfig:
    """Read a task file, apply ``--set``-style overrides and validate it.

    Args:
        path: A task file (``tasks/*.yaml``).
        overrides: ``key=value`` strings, applied in order, e.g. ``["train.steps=500"]``; each value is parsed
            as YAML.

    Returns:
        The resolved task config.

    Raises:
        ConfigError: A missing file, malformed YAML, an unknown key, a wrong type or a value out of range (the
            message names the file and the key), or a test-time-training task file (``metalearn ttt`` reads
            those).

    Examples:
        ```python
        from metalearn import load_config
        cfg = load_config("tasks/protonet_omniglot_5w1s.yaml", ["train.steps=500"])
        cfg.train.ways, cfg.eval.ways        # (60, 5)
        ```
    """
    raw = load_yaml(path)
    if is_ttt_task(raw):
        raise ConfigError(f"{path}: dataset {raw['dataset']!r} is a test-time-training task; run it with "
                          f"`metalearn ttt train --config {path}` (docs/ttt.md), not the episodic train/eval/bench")
    data = apply_overrides(raw, overrides or [])
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def dump_config(cfg: TaskConfig) -> str:
    """The YAML text of ``cfg`` (what a run writes to ``config.yaml``; [`load_yaml`][metalearn.config.load_yaml] reads
    it back)."""
    return yaml_dump(cfg.to_dict())
