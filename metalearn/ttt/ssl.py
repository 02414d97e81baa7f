"""Self-supervised tasks for Test-Time Training: what the self-supervised branch learns, at joint training and at
test time.

A [`SelfSupervisedTask`][metalearn.ttt.ssl.SelfSupervisedTask] says three things:

* **inputs and targets** from unlabeled images: ``draws`` (the random numbers of one test image, for every step
  and copy, from a generator), ``make_inputs`` (a chunk of images and one step's draws -> the inputs each
  image's adaptation step sees, and the targets) and ``joint_batch`` (a training batch -> one trunk pass whose
  rows feed the main head and the self-supervised branch);
* **the head**: ``head``, the name of the [`ResNetCIFAR`][metalearn.nn.resnet_cifar.ResNetCIFAR] branch it trains
  (``ResNetCIFAR(ssl_head=task.head)``; new branches via
  [`register_ssl_head`][metalearn.nn.resnet_cifar.register_ssl_head]);
* **the loss**: ``loss`` of the branch's output for the inputs of *one* image (it runs inside
  ``torch.func.vmap`` over images) or of one training batch.

Joint training, standard TTT (batched and loop) and TTT-Online take any task (``task=``) and are otherwise
unchanged.  Implemented:

* [`RotationTask`][metalearn.ttt.ssl.RotationTask]: which of four rotations (Sun et al. 2020, Gidaris et al. 2018).
* [`ContrastiveTask`][metalearn.ttt.ssl.ContrastiveTask]: SimCLR's NT-Xent on pairs of augmented views (Chen et al.
  2020), the self-supervised task of TTT++ (Liu et al. 2021).
* [`MaskedReconstructionTask`][metalearn.ttt.ssl.MaskedReconstructionTask]: reconstruct randomly masked patches
  (He et al. 2022), the task of TTT-MAE (Gandelsman et al. 2022), here with a convolutional trunk and decoder.

All augmentation runs on tensors from explicit draws, so the batched and the sequential code see the same pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from metalearn.ttt.rotation import all_rotations, crop_flip, rotate

Targets = tuple  # a tuple of tensors (possibly empty): what the loss compares the branch's output with


class JointBatch(NamedTuple):
    """One trunk pass of joint training: ``inputs`` (M, C, H, W); the main head takes ``inputs[main]`` (the batch
    itself, in order), the self-supervised branch ``inputs[ssl]`` with ``targets``."""
    inputs: Tensor
    main: slice
    ssl: slice
    targets: Targets


class SelfSupervisedTask:
    """The interface of a self-supervised task (see the module docstring).  Subclasses are frozen dataclasses of
    their settings; ``name`` is the task's name in task files (``ssl.task``), ``head`` the model branch it trains.
    """
    name: str = ""
    head: str = ""
    weight: float = 1.0

    def draws(self, generator: torch.Generator, steps: int, copies: int,
              size: tuple[int, int, int]) -> tuple[Tensor, ...]:
        """Random draws of one test image, drawn on the CPU.

        Args:
            generator: The CPU generator the draws come from.
            steps: The number of adaptation steps.
            copies: The number of augmented copies per step.
            size: (C, H, W) of the images.

        Returns:
            Tensors whose first two dimensions are (steps, copies).
        """
        raise NotImplementedError

    def make_inputs(self, x: Tensor, draws: tuple[Tensor, ...]) -> tuple[Tensor, Targets]:
        """Inputs of one adaptation step for each image.

        Args:
            x: (B, C, H, W) float images.
            draws: One step's draws of each image (each (B, copies, ...)).

        Returns:
            Inputs (B, M, C, H, W) and targets (each (B, ...)).
        """
        raise NotImplementedError

    def loss(self, out: Tensor, targets: Targets) -> Tensor:
        """Scalar loss of the branch's output for one image's inputs (or one training batch's self-supervised rows).

        Args:
            out: (M, ...) output of the self-supervised branch.
            targets: The targets, each without the image dimension.
        """
        raise NotImplementedError

    def joint_batch(self, x: Tensor, generator: torch.Generator) -> JointBatch:
        """Joint training: the trunk's inputs for the augmented batch x (B, C, H, W) in [0, 1]."""
        raise NotImplementedError

    def check(self, copies: int | None = None, size: tuple[int, ...] | None = None) -> None:
        """Raise ``ValueError`` naming the argument if ``copies`` or the image ``size`` (C, H, W) cannot work."""
        if copies is not None and copies < 1:
            raise ValueError(f"copies: expected >= 1, got {copies}")

    def settings(self) -> dict:
        """The task's settings (its dataclass fields), for results files."""
        return {f.name: getattr(self, f.name) for f in fields(self)} if hasattr(self, "__dataclass_fields__") else {}


# ------------------------------------------------------------------------------------------------ rotation

@dataclass(frozen=True)
class RotationTask(SelfSupervisedTask):
    """Rotation prediction: each copy is crop + flip augmented and turned by a random multiple of 90 degrees; the
    loss is the cross-entropy of the 4-way rotation head.  In joint training every image of the batch is seen at
    all four rotations (the main head takes the unrotated quarter).  Sun et al. 2020."""
    weight: float = 1.0
    pad: int = 4
    name = "rotation"
    head = "rotation"

    def draws(self, generator, steps, copies, size):
        off = torch.randint(0, 2 * self.pad + 1, (steps, copies, 2), generator=generator)
        flip = torch.randint(0, 2, (steps, copies), generator=generator).bool()
        rot = torch.randint(0, 4, (steps, copies), generator=generator)
        return off, flip, rot

    def make_inputs(self, x, draws):
        off, flip, rot = draws
        xs, ys = rotation_inputs(x, off, flip, rot, self.pad)
        return xs, (ys,)

    def loss(self, out, targets):
        return F.cross_entropy(out, targets[0])

    def joint_batch(self, x, generator):
        xr, yr = all_rotations(x)                          # (4B, C, H, W), the first B unrotated
        return JointBatch(xr, slice(0, x.shape[0]), slice(None), (yr,))


def rotation_inputs(x: Tensor, off: Tensor, flip: Tensor, rot: Tensor, pad: int = 4) -> tuple[Tensor, Tensor]:
    """Augmented, rotated copies of images and their labels.

    Args:
        x: (B, C, H, W) images.
        off: (B, K, 2) crop offsets.
        flip: (B, K) horizontal flips.
        rot: (B, K) rotation labels (multiples of 90 degrees).
        pad: The zero padding of the random crop.

    Returns:
        (B, K, C, H, W) inputs and (B, K) labels.
    """
    b, k = rot.shape
    xs = x[:, None].expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
    xs = crop_flip(xs, off.reshape(b * k, 2).to(x.device), flip.reshape(b * k).to(x.device), pad)
    labels = rot.reshape(b * k).to(x.device)
    xs = rotate(xs, labels)
    return xs.view(b, k, *x.shape[1:]), labels.view(b, k)


# ------------------------------------------------------------------------------------------------ contrastive

def nt_xent(z: Tensor, temperature: float) -> Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1) of 2n embeddings.

    The mean over all 2n anchors of ``-log exp(sim(i, pos) / t) / sum_{k != i} exp(sim(i, k) / t)`` with cosine
    similarity ``sim``.

    Args:
        z: (2n, D) embeddings whose rows ``i`` and ``i + n`` are the two views of one example.
        temperature: ``t``, the temperature.

    Returns:
        The scalar loss.
    """
    m = z.shape[0]
    z = F.normalize(z, dim=-1)
    sim = z @ z.transpose(-1, -2) / temperature                      # (2n, 2n)
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    pos = (torch.arange(m, device=z.device) + m // 2) % m
    return F.cross_entropy(sim, pos)


_GRAY = (0.299, 0.587, 0.114)


def _luma(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, 1, H, W): ITU-R 601 luma of RGB images (the image itself for one channel)."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device)
    return (x * w[:, None, None]).sum(1, keepdim=True)


#: number of uniform draws per view: scale, log-ratio, x, y, flip, jitter on, brightness, contrast, saturation, gray
VIEW_DRAWS = 10


def simclr_views(x: Tensor, u: Tensor, crop_scale: float = 0.2, jitter: float = 0.4, jitter_p: float = 0.8,
                 gray_p: float = 0.2) -> Tensor:
    """SimCLR's augmentation from explicit uniform draws.

    Random resized crop (area in [crop_scale, 1] of the image, aspect ratio in [3/4, 4/3], bilinear), horizontal
    flip (p 0.5), colour jitter with probability ``jitter_p`` (brightness, contrast, saturation each by a factor in
    [1 - jitter, 1 + jitter], in that order; hue is not jittered) and grayscale (p ``gray_p``).

    Args:
        x: (N, C, H, W) images in [0, 1].
        u: (N, 10) uniform draws in [0, 1), one row per view.
        crop_scale: The smallest crop area, as a fraction of the image.
        jitter: The strength of the colour jitter.
        jitter_p: The probability of the colour jitter.
        gray_p: The probability of grayscale.

    Returns:
        (N, C, H, W) views.

    Raises:
        ValueError: ``u`` is not of shape (N, 10).
    """
    n, c, h, w = x.shape
    if u.shape != (n, VIEW_DRAWS):
        raise ValueError(f"u: expected shape ({n}, {VIEW_DRAWS}), got {tuple(u.shape)}")
    u = u.to(x.device, x.dtype)
    area = crop_scale + (1 - crop_scale) * u[:, 0]
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    cw = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)          # crop width / image width
    ch = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    tx = (1 - cw) * (2 * u[:, 2] - 1)                                # crop centre in [-1, 1] coordinates
    ty = (1 - ch) * (2 * u[:, 3] - 1)
    sx = torch.where(u[:, 4] < 0.5, -cw, cw)                          # a negative x scale flips the view
    zero = torch.zeros_like(cw)
    theta = torch.stack([torch.stack([sx, zero, tx], -1), torch.stack([zero, ch, ty], -1)], 1)   # (N, 2, 3)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    on = (u[:, 5] < jitter_p)[:, None, None, None]
    b, ct, sat = (1 + jitter * (2 * u[:, k] - 1)[:, None, None, None] for k in (6, 7, 8))
    j = (v * b).clamp(0, 1)
    m = _luma(j).mean((2, 3), keepdim=True)
    j = ((j - m) * ct + m).clamp(0, 1)
    g = _luma(j)
    j = ((j - g) * sat + g).clamp(0, 1)
    v = torch.where(on, j, v)
    gray = (u[:, 9] < gray_p)[:, None, None, None]
    return torch.where(gray, _luma(v).expand_as(v), v)


@dataclass(frozen=True)
class ContrastiveTask(SelfSupervisedTask):
    """SimCLR's contrastive task: two augmented views per example
    ([`simclr_views`][metalearn.ttt.ssl.simclr_views]), the branch's projections compared by NT-Xent with
    temperature ``temperature`` ([`nt_xent`][metalearn.ttt.ssl.nt_xent]).

    At test time one image's ``copies`` inputs are ``copies / 2`` pairs of views of that image (copies must be
    even), so each step sees as many trunk inputs as a rotation step with the same ``copies``; the negatives of
    a view are the other pairs' views of the same image.  In joint training the batch's own augmented images go
    to the main head and two views of each to the branch (3 B trunk inputs).  TTT++ (Liu et al. 2021) adapts
    with this loss (it also aligns feature statistics, which is not done here)."""
    temperature: float = 0.5
    weight: float = 1.0
    crop_scale: float = 0.2
    jitter: float = 0.4
    jitter_p: float = 0.8
    gray_p: float = 0.2
    name = "contrastive"
    head = "contrastive"

    def check(self, copies=None, size=None):
        super().check(copies, size)
        if copies is not None and copies % 2:
            raise ValueError(f"copies: the contrastive task makes pairs of views, so copies must be even (>= 2), "
                             f"got {copies}")

    def _views(self, x: Tensor, u: Tensor) -> Tensor:
        return simclr_views(x, u, self.crop_scale, self.jitter, self.jitter_p, self.gray_p)

    def draws(self, generator, steps, copies, size):
        return (torch.rand(steps, copies, VIEW_DRAWS, generator=generator, dtype=torch.float64),)

    def make_inputs(self, x, draws):
        (u,) = draws                                                 # (B, K, 10)
        b, k = u.shape[:2]
        xs = x[:, None].expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
        return self._views(xs, u.reshape(b * k, VIEW_DRAWS)).view(b, k, *x.shape[1:]), ()

    def loss(self, out, targets):
        return nt_xent(out, self.temperature)

    def joint_batch(self, x, generator):
        b = x.shape[0]
        u = torch.rand(2 * b, VIEW_DRAWS, generator=generator, dtype=torch.float64)
        views = self._views(torch.cat([x, x]), u)                    # rows i and b + i: two views of image i
        return JointBatch(torch.cat([x, views]), slice(0, b), slice(b, 3 * b), ())


# ------------------------------------------------------------------------------------------------ masked patches

def patch_mask(scores: Tensor, ratio: float, patch: int, size: tuple[int, int]) -> Tensor:
    """Masks from random scores: the ``round(ratio * P)`` patches with the lowest scores are masked.

    Args:
        scores: (..., P) random scores, one per patch of an (H/patch, W/patch) grid (row-major).
        ratio: The fraction of the patches to mask.
        patch: The side of a square patch, in pixels.
        size: (H, W) of the images.

    Returns:
        (..., 1, H, W) float, 1 on masked pixels.

    Raises:
        ValueError: The last dimension of ``scores`` is not the number of patches.
    """
    h, w = size
    gh, gw = h // patch, w // patch
    if scores.shape[-1] != gh * gw:
        raise ValueError(f"scores: expected {gh * gw} patches in the last dimension, got {scores.shape[-1]}")
    k = masked_patches(ratio, gh * gw)
    rank = scores.argsort(-1).argsort(-1)
    m = (rank < k).to(torch.get_default_dtype() if not scores.is_floating_point() else scores.dtype)
    m = m.view(*scores.shape[:-1], 1, gh, 1, gw, 1).expand(*scores.shape[:-1], 1, gh, patch, gw, patch)
    return m.reshape(*scores.shape[:-1], 1, h, w)


def masked_patches(ratio: float, patches: int) -> int:
    """How many patches a mask covers: ``round(ratio * patches)``, at least 1 and at most ``patches - 1``.

    Args:
        ratio: The fraction of the patches to mask.
        patches: The number of patches of an image.
    """
    return min(max(1, round(ratio * patches)), patches - 1)


def masked_mse(out: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the masked pixels only: ``sum(mask (out - image)^2) / (C sum(mask))``.

    Args:
        out: (..., C, H, W) reconstruction.
        image: (..., C, H, W) target image.
        mask: (..., 1, H, W), 1 on masked pixels.
    """
    c = image.shape[-3]
    return ((out - image) ** 2 * mask).sum() / (mask.sum() * c)


@dataclass(frozen=True)
class MaskedReconstructionTask(SelfSupervisedTask):
    """Masked-image reconstruction (TTT-MAE, Gandelsman et al. 2022; MAE, He et al. 2022): ``patch`` x ``patch``
    patches of each crop + flip augmented copy are masked at random (``round(mask_ratio * P)`` of the P patches,
    set to ``fill``), the branch (a pixel decoder on the trunk) reconstructs the image, and the loss is the mean
    squared error on the masked pixels only.  In joint training the batch goes to the main head and a masked
    copy of it to the branch (2 B trunk inputs).  TTT-MAE uses a ViT encoder that drops the masked patches;
    here the masked pixels are filled in and the convolutional trunk sees the whole image."""
    mask_ratio: float = 0.5
    patch: int = 4
    weight: float = 1.0
    pad: int = 4
    fill: float = 0.0
    name = "reconstruction"
    head = "reconstruction"

    def check(self, copies=None, size=None):
        super().check(copies, size)
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio: expected a value in (0, 1), got {self.mask_ratio}")
        if self.patch < 1:
            raise ValueError(f"patch: expected >= 1, got {self.patch}")
        if size is not None and (size[-1] % self.patch or size[-2] % self.patch):
            raise ValueError(f"patch: {self.patch} does not divide the image size {tuple(size[-2:])}")

    def patches(self, size: tuple[int, ...]) -> int:
        return (size[-2] // self.patch) * (size[-1] // self.patch)

    def draws(self, generator, steps, copies, size):
        self.check(copies, size)
        off = torch.randint(0, 2 * self.pad + 1, (steps, copies, 2), generator=generator)
        flip = torch.randint(0, 2, (steps, copies), generator=generator).bool()
        scores = torch.rand(steps, copies, self.patches(size), generator=generator, dtype=torch.float64)
        return off, flip, scores

    def _mask(self, x: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        mask = patch_mask(scores.to(x.device), self.mask_ratio, self.patch, tuple(x.shape[-2:])).to(x.dtype)
        return x * (1 - mask) + self.fill * mask, mask

    def make_inputs(self, x, draws):
        off, flip, scores = draws
        b, k = flip.shape
        xs = x[:, None].expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
        xs = crop_flip(xs, off.reshape(b * k, 2).to(x.device), flip.reshape(b * k).to(x.device), self.pad)
        masked, mask = self._mask(xs, scores.reshape(b * k, -1))
        shape = (b, k, *x.shape[1:])
        return masked.view(shape), (xs.view(shape), mask.view(b, k, 1, *x.shape[2:]))

    def loss(self, out, targets):
        image, mask = targets
        return masked_mse(out, image, mask)

    def joint_batch(self, x, generator):
        self.check(None, tuple(x.shape[1:]))
        b = x.shape[0]
        scores = torch.rand(b, self.patches(tuple(x.shape[1:])), generator=generator, dtype=torch.float64)
        masked, mask = self._mask(x, scores)
        return JointBatch(torch.cat([x, masked]), slice(0, b), slice(b, 2 * b), (x, mask))


# ------------------------------------------------------------------------------------------------ registry

#: Tasks by name (``ssl.task`` in TTT task files, ``--ssl-task`` at the command line).
SSL_TASKS: dict = {"rotation": RotationTask, "contrastive": ContrastiveTask,
                   "reconstruction": MaskedReconstructionTask}


def make_task(name: str, **settings) -> SelfSupervisedTask:
    """The task ``name`` with ``settings``.

    Args:
        name: The task's name, a key of ``SSL_TASKS``.
        **settings (object): Its dataclass fields; others are ignored, so one config section serves every task.

    Raises:
        ValueError: An unknown ``name``, or settings the task cannot work with.
    """
    if name not in SSL_TASKS:
        raise ValueError(f"task: expected one of {sorted(SSL_TASKS)}, got {name!r}")
    cls = SSL_TASKS[name]
    known = {f.name for f in fields(cls)}
    task = cls(**{k: v for k, v in settings.items() if k in known})
    task.check()
    return task


def task_for(model, task: SelfSupervisedTask | None = None) -> SelfSupervisedTask:
    """``task``, checked against the model's self-supervised branch.

    Args:
        model (nn.Module): The model whose self-supervised branch the task trains.
        task: The task; by default the task of that branch with its default settings (the rotation task for a
            rotation model).

    Raises:
        ValueError: The model has no self-supervised branch, no registered task trains it, or ``task`` trains
            another branch.
        TypeError: ``task`` is not a ``SelfSupervisedTask``.
    """
    head = getattr(model, "ssl_head", "rotation" if getattr(model, "has_rotation_head", False) else None)
    if head is None:
        raise ValueError("model: TTT needs a model with a rotation head or another self-supervised branch "
                         "(ResNetCIFAR(rotation_head=True, ssl_head=...)); this one is object-recognition only")
    if task is None:
        match = [c for c in SSL_TASKS.values() if c.head == head]
        if not match:
            raise ValueError(f"task: the model's self-supervised branch {head!r} has no registered task; pass "
                             "task=")
        return match[0]()
    if not isinstance(task, SelfSupervisedTask):
        raise TypeError(f"task: expected a SelfSupervisedTask, got {type(task).__name__}")
    if task.head != head:
        raise ValueError(f"task: {task.name!r} trains the {task.head!r} branch, but the model's self-supervised "
                         f"branch is {head!r} (build the model with ResNetCIFAR(ssl_head={task.head!r}))")
    return task
