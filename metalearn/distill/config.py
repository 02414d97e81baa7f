"""Distillation task files (``tasks/distill/*.yaml``): one flat frozen dataclass, parsed as strictly as
``metalearn.config`` (unknown keys and wrong types are errors that name the key; ``--set key=value``
overrides one value).

A task file (``tasks/distill/mnist_fixed_10.yaml``, shortened):

```yaml
dataset: mnist
init: fixed            # fixed | random (a fresh initialisation per outer step)
images_per_class: 1    # per distilled batch
steps: 1               # distilled batches = inner GD steps per epoch
epochs: 3              # passes over the batches (steps * epochs step sizes are learned)
outer_steps: 6000
```

``dataset: cifar10`` takes ``arch: alexcifarnet`` (the authors' CIFAR-10 network) or ``lenet``; ``mnist`` takes
``lenet`` only (`ARCHS`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from metalearn.config import ConfigError, _build, apply_overrides, load_yaml, yaml_dump
from metalearn.distill.lenet import INITS

DATASETS = ("mnist", "cifar10")
#: the architectures each dataset allows
ARCHS = {"mnist": ("lenet",), "cifar10": ("lenet", "alexcifarnet")}
SETTINGS = ("fixed", "random")
#: keys that may differ when a run is resumed (train longer, evaluate differently)
RESUME_FREE = ("outer_steps", "eval_every", "checkpoint_every", "eval_models", "baseline_draws", "baseline_lrs",
               "threads", "data_root")


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one distillation run (Wang et al. 2018; defaults follow the authors' code where it has one).

    Attributes:
        dataset: ``mnist`` (1x28x28 digits) or ``cifar10`` (3x32x32 RGB images).
        data_root: folder holding ``mnist/mnist.npz`` or ``cifar10/`` (default ``$METALEARN_DATA``).
        arch: ``lenet`` (either dataset) or ``alexcifarnet`` (cifar10 only).
        init: ``fixed`` (one known initialisation, drawn from ``seed``) or ``random`` (a fresh initialisation
            every outer step; scored on ``eval_models`` held-out ones).
        init_scheme: ``xavier`` (Glorot normal weights, zero biases) or ``default`` (PyTorch's).
        images_per_class: distilled images of each class in one batch.
        steps: distilled batches, i.e. inner GD steps per epoch.
        epochs: passes over the batches; ``steps * epochs`` step sizes are learned.
        distill_lr: initial value of every step size.
        outer_steps: Adam steps on the distilled set (may grow on ``--resume``).
        outer_lr: Adam's learning rate.
        outer_beta1: Adam's first beta (the second is 0.999).
        outer_lr_decay: factor applied to ``outer_lr`` every ``outer_lr_decay_every`` steps.
        outer_lr_decay_every: steps between decays (0: a constant outer lr).
        batch_size: real training images per outer step.
        augment: real batches of the outer loop get a random crop (reflection padding of 4) and a random
            horizontal flip, the training transform of the authors' CIFAR-10 loader; validation, test and the
            baselines' images are never augmented.
        inits_per_step: random init: initialisations averaged per outer step.
        eval_every: outer steps between validation scores (each writes ``last.pt``).
        checkpoint_every: extra ``last.pt`` writes every N steps (0: only at evaluations).
        eval_models: random init: held-out initialisations per evaluation.
        val_images: training images held out (from the end) for validation and the baselines' lr tuning.
        baseline_draws: independent draws of the random-real-image baseline.
        baseline_lrs: comma-separated constant step sizes tried for the baselines.
        seed: seeds the distilled images, the fixed initialisation, the batches and the random inits.
        threads: torch CPU threads (0: torch's default).
    """

    dataset: str = "mnist"
    data_root: str | None = None         # default $METALEARN_DATA
    arch: str = "lenet"
    init: str = "fixed"                  # fixed: one known initialisation; random: fresh per outer step
    init_scheme: str = "xavier"          # xavier (reference code) | default (PyTorch's)
    images_per_class: int = 1            # per distilled batch
    steps: int = 1                       # distilled batches (inner GD steps per epoch)
    epochs: int = 3                      # passes over the batches
    distill_lr: float = 0.02             # initial step size of every inner step
    outer_steps: int = 3000              # Adam steps on the distilled set
    outer_lr: float = 0.01
    outer_beta1: float = 0.5             # Adam betas (outer_beta1, 0.999), as the reference code
    outer_lr_decay: float = 0.5          # multiply outer_lr by this every outer_lr_decay_every steps
    outer_lr_decay_every: int = 0        # 0: constant outer lr
    batch_size: int = 1024               # real images per outer step
    augment: bool = False                # real batches: reflect-pad 4, random crop, random horizontal flip
    inits_per_step: int = 1              # random init: initialisations averaged per outer step
    eval_every: int = 250                # validation accuracy every N outer steps (and a checkpoint)
    checkpoint_every: int = 0            # extra checkpoints every N steps (0: at evaluations only)
    eval_models: int = 10                # random init: held-out initialisations scored per evaluation
    val_images: int = 5000               # held out from the end of the training split (baseline lr tuning)
    baseline_draws: int = 10             # random-real-image baseline: independent draws
    baseline_lrs: str = "0.001,0.003,0.01,0.03,0.1,0.3,1"   # constant step sizes tried for the baselines
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def total_images(self) -> int:
        return 10 * self.images_per_class * self.steps

    def lr_grid(self) -> tuple[float, ...]:
        try:
            grid = tuple(float(v) for v in str(self.baseline_lrs).split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"baseline_lrs: expected comma-separated numbers, got {self.baseline_lrs!r}") from None
        if not grid or any(not v > 0 for v in grid):
            raise ConfigError(f"baseline_lrs: expected one or more numbers > 0, got {self.baseline_lrs!r}")
        return grid


def validate(cfg: DistillConfig) -> None:
    """Range checks that the types alone do not catch; ConfigError naming the key."""
    choices = {"dataset": DATASETS, "init": SETTINGS, "init_scheme": INITS}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    if cfg.arch not in ARCHS[cfg.dataset]:
        raise ConfigError(f"arch: expected one of {', '.join(ARCHS[cfg.dataset])} for dataset {cfg.dataset}, "
                          f"got {cfg.arch!r}")
    for key in ("images_per_class", "steps", "epochs", "outer_steps", "batch_size", "inits_per_step", "eval_every",
                "eval_models", "val_images", "baseline_draws"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: expected an integer >= 1, got {getattr(cfg, key)}")
    for key in ("checkpoint_every", "outer_lr_decay_every", "threads", "seed"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}: expected an integer >= 0, got {getattr(cfg, key)}")
    for key in ("distill_lr", "outer_lr", "outer_lr_decay"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"{key}: expected a number > 0, got {getattr(cfg, key)}")
    if not 0 <= cfg.outer_beta1 < 1:
        raise ConfigError(f"outer_beta1: expected a number in [0, 1), got {cfg.outer_beta1}")
    cfg.lr_grid()


def distill_config_from_dict(data: dict) -> DistillConfig:
    cfg = _build(DistillConfig, data, "")
    validate(cfg)
    return cfg


def load_distill_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    """Read a distillation task file with ``--set`` style ``overrides`` (``["outer_steps=100"]``)."""
    return distill_config_from_dict(apply_overrides(load_yaml(path), overrides or []))


def dump_distill_config(cfg: DistillConfig) -> str:
    return yaml_dump(cfg.to_dict())
