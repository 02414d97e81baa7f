"""Joint training of the Y-shaped ResNet (Test-Time Training, Sun et al. 2020), and the object-only baseline.

Loss per batch: ``CE(main head, labels) + CE(rotation head, rotation labels)`` with every image of the batch at
all four rotations (no rotation term for a model without a rotation head); another self-supervised task
([`metalearn.ttt.ssl`][metalearn.ttt.ssl]) replaces the second term by its own loss on the rows it adds to the
trunk's batch.  The trunk runs once on the 4 B
rotated images; the main head sees the unrotated quarter (identical to a separate pass for GroupNorm; for
BatchNorm the trunk's batch statistics come from all four rotations).  SGD (lr 0.1, momentum 0.9, weight decay
5e-4), batch 128, lr x0.1 at epochs 75 and 125 of 150; random crop (zero padding 4) and horizontal flip done on
the device.

Determinism and exact resume: the epoch's shuffle is seeded by ``(seed, epoch)`` and a step's augmentation by
``(seed, step)``, so a run resumed from ``last.pt`` (model, optimiser, step) makes the same updates as an
uninterrupted one.  Checkpoints are written atomically
([`metalearn.train.checkpoint.atomic_save`][metalearn.train.checkpoint.atomic_save]).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from metalearn.engine import autocast, resolve_precision
from metalearn.nn.resnet_cifar import ResNetCIFAR
from metalearn.train.checkpoint import FORMAT, atomic_save, load_checkpoint
from metalearn.train.logging import truncate_metrics
from metalearn.ttt.rotation import crop_flip, random_draws
from metalearn.ttt.ssl import RotationTask, SelfSupervisedTask, task_for

KIND = "ttt-resnet-cifar"


@dataclass(frozen=True)
class JointTrainConfig:
    """Joint-training recipe (section ``train`` of a TTT task file; defaults: the paper's).

    Attributes:
        epochs: Training epochs over the CIFAR-10 training set (the lr schedule follows them).
        batch_size: Images per SGD step (each also at its four rotations).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        milestones: Epochs at which the learning rate is multiplied by ``gamma``.
        gamma: Learning-rate factor at each milestone.
        max_steps: Stop after this many optimiser steps (the schedule still follows ``epochs``); 0 trains all
            epochs.
        checkpoint_every: Write ``last.pt`` every this many optimiser steps.
        log_every: Append to ``metrics.jsonl`` every this many optimiser steps.
        seed: Seed of the initialisation, the shuffles and the augmentations.
        precision: ``auto`` (bf16 where the device runs it natively, else fp32), ``bf16`` or ``fp32``: the
            ResNet's convolutions and linear layers under bf16 autocast; weights, gradients, SGD state, the
            GroupNorm/BatchNorm statistics and every loss stay fp32 (`joint_loss`). Measured to keep accuracy
            (``benchmarks/ttt_precision.py``); test-time adaptation runs in fp32 whatever this says.
    """
    epochs: int = 150
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple = (75, 125)    # epochs at which lr is multiplied by gamma
    gamma: float = 0.1
    max_steps: int = 0               # 0: train all epochs
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    precision: str = "auto"          # auto (bf16 where native) | bf16 | fp32


def joint_loss(model: ResNetCIFAR, x: Tensor, y: Tensor, task: SelfSupervisedTask | None = None,
               generator: torch.Generator | None = None, precision: str = "fp32") -> tuple[Tensor, dict]:
    """Joint loss ``CE(main) + weight * SSL``, SSL the self-supervised loss of ``task``.

    Rotation: CE over all 4 rotations; just ``CE(main)`` without a branch.

    Args:
        model: The model.
        x: (B, C, H, W) float images in [0, 1].
        y: (B,) labels.
        task: The self-supervised task (default: the task of the model's branch).
        generator: The task's random draws (contrastive views, masks).
        precision: ``fp32`` or ``bf16``: the network's forward under bf16 autocast, its outputs cast back to
            fp32 before the losses (``resolve`` ``auto`` first, with `metalearn.engine.resolve_precision`).

    Returns:
        (loss, metrics tensors: loss, main, ssl, acc; rotation and rot_acc for a rotation model or none).
    """
    if model.has_ssl_head:
        task = task_for(model, task)
        jb = task.joint_batch(x, generator if generator is not None else torch.Generator().manual_seed(0))
        with autocast(x.device, precision):
            z = model.features(jb.inputs)                 # rotation: (4B, ...), the first B unrotated
            logits = model.head(z[jb.main])
            out = model.ssl_module(z[jb.ssl])
        if precision == "bf16":                           # the losses in the input's precision
            logits, out = logits.to(x.dtype), out.to(x.dtype)
        main, ssl = F.cross_entropy(logits, y), task.loss(out, jb.targets)
        loss = main + ssl if task.weight == 1 else main + task.weight * ssl
        extra = {}
        if task.name == "rotation":
            extra = {"rotation": ssl.detach(), "rot_acc": (out.argmax(-1) == jb.targets[0]).float().mean()}
    else:
        with autocast(x.device, precision):
            logits = model(x)
        if precision == "bf16":
            logits = logits.to(x.dtype)
        main = F.cross_entropy(logits, y)
        ssl = torch.zeros((), device=x.device)
        extra = {"rotation": ssl, "rot_acc": ssl}
        loss = main
    acc = (logits.argmax(-1) == y).float().mean()
    return loss, {"loss": loss.detach(), "main": main.detach(), "ssl": ssl.detach(), "acc": acc, **extra}


def ssl_generator(seed: int, step: int) -> torch.Generator:
    """The generator of a training step's self-supervised draws (contrastive views, masks).

    Seeded by ``(seed, step)``, apart from the augmentation's, so a resumed run draws the same.

    Args:
        seed: The run's seed.
        step: The global step.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 7_000_000_000_000)


def lr_at(cfg: JointTrainConfig, step: int, steps_per_epoch: int) -> float:
    passed = sum(1 for m in cfg.milestones if step >= m * steps_per_epoch)
    return cfg.lr * cfg.gamma ** passed


def _permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_at(images: Tensor, labels: Tensor, cfg: JointTrainConfig, step: int,
             dtype: torch.dtype = torch.float32, part: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """The augmented float batch of global step ``step`` (deterministic in (seed, step)).

    Args:
        images: (N, C, H, W) uint8 training images on the device.
        labels: (N,) their labels.
        cfg: The training settings (batch size, seed).
        step: The global step.
        dtype: The float dtype of the batch.
        part: ``(lo, hi)``: only images lo:hi of that batch, with the draws they get in the whole batch (the share
            of one process of a distributed run).

    Returns:
        The images and their labels.
    """
    n = images.shape[0]
    spe = math.ceil(n / cfg.batch_size)
    epoch, i = divmod(step, spe)
    idx = _permutation(n, cfg.seed, epoch)[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(images.device)
    off, flip = random_draws(idx.shape[0], generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step),
                             device=images.device)
    if part is not None:
        idx, off, flip = idx[part[0]:part[1]], off[part[0]:part[1]], flip[part[0]:part[1]]
    x = images[idx].to(dtype) / 255.0
    return crop_flip(x, off, flip), labels[idx]


@dataclass
class JointTrainState:
    step: int
    total_steps: int
    wall_s: float
    last: dict
    resumed_from: int | None = None


def check_training_data(images: Tensor, labels: Tensor, model: ResNetCIFAR) -> None:
    if images.dim() != 4 or images.shape[1] != model.in_channels or images.dtype != torch.uint8:
        raise ValueError(f"images: expected uint8 (N, {model.in_channels}, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images: the training set is empty")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels: expected shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= model.classes:
        raise ValueError(f"labels: expected values in [0, {model.classes}), got [{int(labels.min())}, "
                         f"{int(labels.max())}]")


def train_joint(model: ResNetCIFAR, images: Tensor, labels: Tensor, cfg: JointTrainConfig,
                out: str | Path | None = None, *, resume: bool = False, meta: dict | None = None,
                progress: Callable[[dict], None] | None = None,
                task: SelfSupervisedTask | None = None) -> JointTrainState:
    """Train ``model`` in place on uint8 ``images`` and their ``labels``, both on the model's device.

    Args:
        model: The model.
        images: (N, C, H, W) uint8 training images.
        labels: (N,) their labels.
        cfg: The training settings.
        out: Run directory for ``last.pt`` (atomic, every ``checkpoint_every`` steps and at the end) and
            ``metrics.jsonl``.
        resume: Continue from ``out/last.pt`` (same model config required).
        meta: Stored in the checkpoint (e.g. the task config).
        progress: Gets each logged metrics dict.
        task: The self-supervised task (default: the one of the model's branch, rotation for a rotation model).
    """
    check_training_data(images, labels, model)
    if model.has_ssl_head:
        task = task_for(model, task)
        task.check(None, tuple(images.shape[1:]))
    default_task = task is None or task == RotationTask()     # rotation draws nothing: the plain call
    if cfg.batch_size < 1 or cfg.epochs < 1 or cfg.max_steps < 0:
        raise ValueError(f"cfg: batch_size and epochs must be >= 1 and max_steps >= 0, got {cfg}")
    precision = resolve_precision(cfg.precision, images.device)
    spe = math.ceil(images.shape[0] / cfg.batch_size)
    total = spe * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, spe * cfg.epochs)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    out = Path(out) if out is not None else None
    step, resumed = 0, None
    from metalearn import distributed as D
    dist_on, main = D.active(), D.is_main()
    if out is not None:
        ck_path = out / "last.pt"
        if resume:   # rank 0 alone reads the run directory
            where = "cpu" if dist_on else next(model.parameters()).device
            ck = D.on_main(lambda: load_checkpoint(ck_path, map_location=where))
            if ck.get("kind") != KIND or ck.get("model_config") != model.config():
                raise ValueError(f"checkpoint {str(ck_path)!r} holds another model ({ck.get('model_config')}; "
                                 f"this one is {model.config()})")
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            step = resumed = int(ck["step"])
            if main:
                _truncate_metrics(out / "metrics.jsonl", step)
        elif D.on_main(ck_path.exists):
            raise FileExistsError(f"{str(out)!r} already holds a run (last.pt); resume it or choose another out")
        if main:
            out.mkdir(parents=True, exist_ok=True)

    # distributed: each step's batch (the same whatever the number of processes) split by rank, the gradients
    # averaged by DistributedDataParallel, BatchNorm statistics over the whole batch
    net = None
    if dist_on:
        last_batch = images.shape[0] - (spe - 1) * cfg.batch_size
        if last_batch < D.world_size():
            raise ValueError(f"batch_size={cfg.batch_size}: the last batch of an epoch has {last_batch} images, "
                             f"fewer than the {D.world_size()} processes that share it")
        net = D.ddp(model, lambda m, x, y, g: joint_loss(m, x, y, precision=precision) if g is None
                    else joint_loss(m, x, y, task, g, precision))

    def save(at: int) -> None:
        if out is not None and main:
            atomic_save({"format": FORMAT, "kind": KIND, "model_config": model.config(), "model": model.state_dict(),
                         "optimizer": opt.state_dict(), "step": at, "train_config": dataclasses.asdict(cfg),
                         "meta": meta or {}}, out / "last.pt")

    model.train()
    t0, last = time.perf_counter(), {}
    dtype = next(model.parameters()).dtype
    # the first step whose loss was not finite, kept on the device (no host sync per step)
    bad_step = bad_loss = None

    def check_finite() -> None:
        """Stop before anything is written if a loss since the last check was NaN or infinite."""
        nonlocal bad_step
        if dist_on:   # every rank stops together, naming the first rank(s) whose loss was not finite
            found, bad_step = D.first_failure(bad_step, bad_loss), None
            if found is not None:
                from metalearn.train.trainer import NonFiniteLossError
                raise NonFiniteLossError(f"joint training loss of {type(model).__name__} became {found[1]} at step "
                                         f"{found[0]} on {D.ranks_text(found[2])}; no checkpoint was written after "
                                         "it (last.pt holds the last finite state). Lower train.lr or check the data")
            return
        if bad_step is not None and int(bad_step) != 0:
            from metalearn.train.trainer import NonFiniteLossError
            raise NonFiniteLossError(f"joint training loss of {type(model).__name__} became {float(bad_loss)} at "
                                     f"step {int(bad_step)}; no checkpoint was written after it (last.pt holds "
                                     "the last finite state). Lower train.lr or check the data")
        bad_step = None

    while step < total:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, spe)
        if dist_on:
            b = min(cfg.batch_size, images.shape[0] - (step % spe) * cfg.batch_size)
            lo, hi = D.shard_range(b)
            x, y = batch_at(images, labels, cfg, step, dtype, part=(lo, hi))
            share = (hi - lo) / b
            with D.sync_batchnorm(model):
                loss, metrics = net(x, y, None if default_task else ssl_generator(cfg.seed, step))
                opt.zero_grad(set_to_none=True)
                (loss * (share * D.world_size())).backward()   # DDP divides by the number of processes
        else:
            x, y = batch_at(images, labels, cfg, step, dtype)
            if default_task:
                loss, metrics = joint_loss(model, x, y, precision=precision)
            else:
                loss, metrics = joint_loss(model, x, y, task, ssl_generator(cfg.seed, step), precision)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        step += 1
        lv = metrics["loss"]
        if bad_step is None:
            bad_step, bad_loss = torch.zeros((), dtype=torch.long, device=lv.device), torch.zeros_like(lv)
        first = ~torch.isfinite(lv) & (bad_step == 0)
        bad_step, bad_loss = torch.where(first, step, bad_step), torch.where(first, lv, bad_loss)
        if step % cfg.log_every == 0 or step == total:
            check_finite()
            if dist_on:   # the whole batch's means: each rank's weighted by its share of the images
                metrics = dict(zip(metrics, D.all_reduce_sum(torch.stack([v.detach().to(torch.float64) * share
                                                                          for v in metrics.values()]))))
            last = {k: float(v) for k, v in metrics.items()}   # one host sync per logged step
            last.update(step=step, epoch=step / spe, lr=opt.param_groups[0]["lr"], wall_s=time.perf_counter() - t0)
            if out is not None and main:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(last) + "\n")
            if progress is not None:
                progress(last)
        if step % cfg.checkpoint_every == 0 or step == total:
            check_finite()
            save(step)
    return JointTrainState(step, total, time.perf_counter() - t0, last, resumed)


def _truncate_metrics(path: Path, step: int) -> None:
    truncate_metrics(path, step)   # the tolerant reader of the few-shot trainer (a cut-off last line is dropped)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ResNetCIFAR, dict]:
    """Rebuild a [`ResNetCIFAR`][metalearn.nn.resnet_cifar.ResNetCIFAR] from a checkpoint.

    Args:
        path: A checkpoint written by [`train_joint`][metalearn.ttt.train.train_joint].
        map_location: Where the model goes.

    Returns:
        (model in eval mode, checkpoint dict).

    Raises:
        ValueError: Not a TTT ResNet checkpoint, or its weights do not fit its model config.
    """
    ck = load_checkpoint(path, map_location=map_location)
    if ck.get("kind") != KIND:
        raise ValueError(f"checkpoint {str(path)!r} is not a TTT ResNet checkpoint (kind {ck.get('kind')!r})")
    model = ResNetCIFAR(**ck["model_config"])
    dtype = next((t.dtype for t in ck["model"].values() if t.is_floating_point()), torch.float32)
    model.to(dtype)  # load float64 weights as float64
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {str(path)!r} does not fit its model config: {err}") from None
    return model.to(map_location).eval(), ck
