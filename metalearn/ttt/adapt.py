"""Test-Time Training (Sun et al. 2020): standard TTT (batched per image, or the sequential reference) and online.

Per test image, standard TTT starts from the trained weights and takes ``steps`` SGD steps (lr ``lr``, no momentum)
on the rotation loss of ``copies`` augmented (crop + flip) copies of the image, each rotated by a random label;
then it predicts the unaugmented image in eval mode.  TTT-Online takes ``steps`` (1) such steps per image and
carries the weights along the stream.  What adapts is a `metalearn.functional.ParamFilter` over the
parameter names: ``"trunk"`` (stem + stage 1 + stage 2, the paper's shared feature extractor) by default.

* [`ttt`][metalearn.ttt.adapt.ttt] is the batched version: each image adapts its *own* copy of the selected
  parameters, all images
  of a chunk at once (``torch.func.vmap`` over images, the step loop outside), built on
  [`metalearn.inner.adapt`][metalearn.inner.adapt] and the functional core.  Nothing of the model is modified.
* [`ttt_loop`][metalearn.ttt.adapt.ttt_loop] is the per-image reference loop of the original code (reload the weights,
  ``torch.optim.SGD``,
  ``loss.backward()``), on a private copy of the model: the tests and the speed benchmark compare with it.
* [`ttt_online`][metalearn.ttt.adapt.ttt_online] is TTT-Online on the functional core.

The self-supervised task is a [`SelfSupervisedTask`][metalearn.ttt.ssl.SelfSupervisedTask] (``task=``; default: the
task of the model's branch, rotation for a rotation model): the same code adapts on rotation, contrastive or
masked-reconstruction losses.  Random draws (for rotation: crop offsets, flips, rotation labels) come from a
generator seeded by ``(seed, index of the image in the stream)``, so that the batched and the sequential code see
the same pixels, whatever the chunking.

BatchNorm models: adaptation runs the norm layers in training mode (statistics of the ``copies`` images, as the
paper's BN variant), and their running statistics move with momentum as in the original code; each image updates
its own copy of the buffers, so the vmapped path stays exact (first-order gradients only, which are right under
vmap; DESIGN.md's trap concerns second order).  Prediction uses eval mode with that image's buffers.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.func import vmap

from metalearn.functional import ParamFilter, call, check_trainable, partition, select
from metalearn.inner import adapt, check_finite, sgd
from metalearn.ttt.ssl import SelfSupervisedTask, task_for
from metalearn.ttt.ssl import rotation_inputs as rotation_inputs  # importable from here as before
from metalearn.types import Params


def as_float_images(images: Tensor, model: nn.Module, what: str = "images") -> Tensor:
    """Check a stream of images and return them as float in [0, 1], in the dtype of the model's parameters.

    Args:
        images: (N, C, H, W) uint8 in [0, 255] or float in [0, 1].
        model: The model the images are for (its channels and the dtype of its parameters).
        what: The name every error gives the images.

    Raises:
        TypeError: ``images`` is not a tensor.
        ValueError: Wrong rank, channels, size or dtype, or an empty stream.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{what}: expected a tensor, got {type(images).__name__}")
    channels = getattr(model, "in_channels", None)
    if images.dim() != 4:
        raise ValueError(f"{what}: expected a stream of images (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what}: the stream is empty (0 images)")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{what}: the model takes {channels}-channel images, got {images.shape[1]} channels "
                         f"(shape {tuple(images.shape)})")
    h, w = images.shape[-2:]
    if h != w or h % 4 or h < 8:
        raise ValueError(f"{what}: expected square images with a side that is a multiple of 4 (32 for CIFAR), "
                         f"got {h}x{w}")
    dtype = next(model.parameters()).dtype
    if images.dtype == torch.uint8:
        return images.to(dtype) / 255.0
    if not images.is_floating_point():
        raise ValueError(f"{what}: expected uint8 or float images, got {images.dtype}")
    return images.to(dtype)


@contextlib.contextmanager
def train_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Temporarily set ``model.train(training)``; the previous mode of every submodule is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def image_generator(index: int, seed: int = 0) -> torch.Generator:
    """The CPU generator of image ``index`` of the stream (seeded by ``(seed, index)``)."""
    return torch.Generator().manual_seed((seed % 1_000_003) * 1_000_000_007 + index)


def draws(index: int, steps: int, copies: int, seed: int = 0, pad: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """The rotation task's random draws of image ``index`` of the stream.

    Drawn from a CPU generator seeded by ``(seed, index)``.

    Args:
        index: The image's position in the stream.
        steps: The number of adaptation steps.
        copies: The number of augmented copies per step.
        seed: The seed of the stream's draws.
        pad: The zero padding of the random crop.

    Returns:
        Crop offsets (steps, copies, 2) in [0, 2 pad], flips (steps, copies) bool and rotation labels
        (steps, copies) in [0, 4).
    """
    from metalearn.ttt.ssl import RotationTask
    return RotationTask(pad=pad).draws(image_generator(index, seed), steps, copies, (0, 0, 0))


def task_draws(task: SelfSupervisedTask, index: int, steps: int, copies: int, seed: int,
               size: tuple[int, ...]) -> tuple[Tensor, ...]:
    """``task``'s draws of image ``index`` of the stream (each (steps, copies, ...)).

    Args:
        task: The self-supervised task.
        index: The image's position in the stream.
        steps: The number of adaptation steps.
        copies: The number of augmented copies per step.
        seed: The seed of the stream's draws (the generator is seeded by ``(seed, index)``).
        size: (C, H, W) of the images.
    """
    return task.draws(image_generator(index, seed), steps, copies, tuple(size))


def _check(model: nn.Module, steps: int, lr: float, copies: int, adapt_filter: ParamFilter,
           min_steps: int = 1, task: SelfSupervisedTask | None = None,
           size: tuple[int, ...] | None = None) -> tuple[list[str], SelfSupervisedTask]:
    task = task_for(model, task)
    if steps < min_steps:
        raise ValueError(f"steps: expected >= {min_steps}, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr}")
    if copies < 1:
        raise ValueError(f"copies: expected >= 1, got {copies}")
    task.check(copies, size)
    params = dict(model.named_parameters())
    names = select(params, adapt_filter)
    check_trainable(params, names, "adapt")
    return names, task


@dataclass
class TTTResult:
    """``logits`` (N, classes) of the adapted predictions; ``losses`` (N, steps) self-supervised (e.g. rotation)
    losses before each step;
    ``params``: the adapted parameters (standard TTT: one per image, each (N, ...); online: the final carried
    ones), ``buffers`` likewise (BatchNorm running statistics; empty for GroupNorm)."""
    logits: Tensor
    losses: Tensor
    params: Params
    buffers: Params

    @property
    def predictions(self) -> Tensor:
        return self.logits.argmax(-1)


def _one_step(model: nn.Module, slow: Params, rule, fast: Params, bufs: Params, xs: Tensor,
              ys: tuple, task: SelfSupervisedTask) -> tuple[Params, Params, Tensor]:
    """One SGD step of ``fast`` on the task's loss for one image; buffers updated in a copy.

    Args:
        model: The model, called functionally.
        slow: The parameters that are not adapted.
        rule: The update rule (SGD).
        fast: The adapted parameters.
        bufs: The buffers.
        xs: (M, C, H, W) inputs of the self-supervised task.
        ys: Their targets.
        task: The self-supervised task.

    Returns:
        The new ``fast``, the new buffers and the loss before the step.
    """
    bufs = {n: b.clone() for n, b in bufs.items()}

    def loss(p: Params, b: Params) -> Tensor:
        return task.loss(call(model, {**slow, **p}, b, xs, head="ssl"), ys)

    new, losses = adapt(loss, fast, 1, rule, first_order=True, buffers=bufs)
    return new, bufs, losses[0]


def _predict_one(model: nn.Module, slow: Params, fast: Params, bufs: Params, x: Tensor) -> Tensor:
    return call(model, {**slow, **fast}, bufs, x[None])[0]


def ttt(model: nn.Module, images: Tensor, *, steps: int = 10, lr: float = 1e-3, copies: int = 32,
        adapt: ParamFilter = "trunk", seed: int = 0, chunk_size: int = 64, first_index: int = 0,
        vmap_images: bool = True, keep_params: bool = False, task: SelfSupervisedTask | None = None) -> TTTResult:
    """Standard TTT on every image of ``images``, each image adapting its own copy of the weights.

    Sun et al. 2020, Sec. 2 (standard version).  The model is not modified.

    Args:
        model: The trained model, with a self-supervised branch.
        images: (N, C, H, W) test stream, uint8 in [0, 255] or float in [0, 1].
        steps: SGD steps per image.
        lr: The SGD step size.
        copies: Augmented copies of the image per step.
        adapt: The parameters adapted (see [`ParamFilter`][metalearn.functional.ParamFilter]).
        seed: The seed of the draws.
        chunk_size: How many images are adapted at once (vmapped).
        first_index: Position of ``images[0]`` in the stream (seeds the draws, so a stream split into parts gives
            the same result as in one call).
        vmap_images: False loops over the images of a chunk with the same functional code.
        keep_params: Return the adapted parameters and buffers of every image (memory: N copies of the adapted
            parameters).
        task: The self-supervised task (default: the one of the model's branch).

    Returns:
        The logits, the self-supervised losses before each step and (with ``keep_params``) the adapted parameters
        and buffers.

    Raises:
        ValueError: A setting out of range, or images the model cannot take.
        FloatingPointError: A non-finite self-supervised loss.

    Examples:
        >>> res = ttt(ResNetCIFAR(26), test_images_uint8[:100], chunk_size=50)
        >>> res.predictions.shape
        torch.Size([100])
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
    x = as_float_images(images, model)
    names, task = _check(model, steps, lr, copies, adapt, task=task, size=tuple(x.shape[1:]))
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    params = {n: p.detach() for n, p in params.items()}
    fast0, slow = partition(params, names)
    rule = sgd(lr)
    logits, losses, kept_p, kept_b = [], [], [], []
    step = vmap(lambda f, b, xs, ys: _one_step(model, slow, rule, f, b, xs, ys, task)) if vmap_images else None
    pred = vmap(lambda f, b, xi: _predict_one(model, slow, f, b, xi)) if vmap_images else None
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk_size):
            xc = x[start:start + chunk_size]
            bsz = xc.shape[0]
            d = [task_draws(task, first_index + start + i, steps, copies, seed, x.shape[1:]) for i in range(bsz)]
            dd = [torch.stack([t[j] for t in d]).to(x.device) for j in range(len(d[0]))]  # each (B, steps, K, ...)
            fast = {n: p.expand(bsz, *p.shape) for n, p in fast0.items()}
            bufs = {n: b.expand(bsz, *b.shape).clone() for n, b in buffers.items()}
            chunk_losses = []
            for s in range(steps):
                xs, ys = task.make_inputs(xc, tuple(t[:, s] for t in dd))  # (B, M, C, H, W), targets (B, ...)
                with train_mode(model, True):
                    if vmap_images:
                        fast, bufs, loss = step(fast, bufs, xs, ys)
                    else:
                        outs = [_one_step(model, slow, rule, {n: p[i] for n, p in fast.items()},
                                          {n: b[i] for n, b in bufs.items()}, xs[i], tuple(t[i] for t in ys), task)
                                for i in range(bsz)]
                        fast = {n: torch.stack([o[0][n] for o in outs]) for n in fast}
                        bufs = {n: torch.stack([o[1][n] for o in outs]) for n in bufs}
                        loss = torch.stack([o[2] for o in outs])
                chunk_losses.append(loss)
            with train_mode(model, False):
                if vmap_images:
                    lg = pred(fast, bufs, xc)
                else:
                    lg = torch.stack([_predict_one(model, slow, {n: p[i] for n, p in fast.items()},
                                                   {n: b[i] for n, b in bufs.items()}, xc[i]) for i in range(bsz)])
            logits.append(lg)
            losses.append(torch.stack(chunk_losses, 1))
            if keep_params:
                kept_p.append(fast)
                kept_b.append(bufs)
    losses_t = torch.cat(losses)
    check_finite(losses_t, f"TTT {task.name} loss", first_task=first_index)
    cat = (lambda parts: {n: torch.cat([p[n] for p in parts]) for n in parts[0]} if parts else {})
    return TTTResult(torch.cat(logits), losses_t, cat(kept_p), cat(kept_b))


def ttt_loop(model: nn.Module, images: Tensor, *, steps: int = 10, lr: float = 1e-3, copies: int = 32,
             adapt: ParamFilter = "trunk", seed: int = 0, first_index: int = 0,
             keep_params: bool = False, task: SelfSupervisedTask | None = None) -> TTTResult:
    """Standard TTT as a per-image loop over a module, the way the original code runs it.

    For each image: reload the trained weights, ``torch.optim.SGD`` on the selected parameters, ``backward()``,
    ``step()``; predict in eval mode.  Works on a private copy of ``model`` (the model is not modified).  The
    reference for [`ttt`][metalearn.ttt.adapt.ttt].

    Args:
        model: The trained model, with a self-supervised branch.
        images: (N, C, H, W) test stream, uint8 in [0, 255] or float in [0, 1].
        steps: SGD steps per image.
        lr: The SGD step size.
        copies: Augmented copies of the image per step.
        adapt: The parameters adapted (see [`ParamFilter`][metalearn.functional.ParamFilter]).
        seed: The seed of the draws.
        first_index: Position of ``images[0]`` in the stream (seeds the draws).
        keep_params: Return the adapted parameters and buffers of every image.
        task: The self-supervised task (default: the one of the model's branch).
    """
    x = as_float_images(images, model)
    names, task = _check(model, steps, lr, copies, adapt, task=task, size=tuple(x.shape[1:]))
    net = copy.deepcopy(model)
    state0 = copy.deepcopy(net.state_dict())
    chosen = set(names)
    logits, losses, kept_p, kept_b = [], [], [], []
    for i in range(x.shape[0]):
        net.load_state_dict(state0)
        opt = torch.optim.SGD([p for n, p in net.named_parameters() if n in chosen], lr=lr)
        d = task_draws(task, first_index + i, steps, copies, seed, x.shape[1:])
        net.train()
        img_losses = []
        for s in range(steps):
            xs, ys = task.make_inputs(x[i:i + 1], tuple(t[None, s].to(x.device) for t in d))
            opt.zero_grad(set_to_none=True)
            loss = task.loss(net(xs[0], head="ssl"), tuple(t[0] for t in ys))
            loss.backward()
            opt.step()
            img_losses.append(loss.detach())
        net.eval()
        with torch.no_grad():
            logits.append(net(x[i:i + 1])[0])
        losses.append(torch.stack(img_losses))
        if keep_params:
            kept_p.append({n: p.detach().clone() for n, p in net.named_parameters() if n in chosen})
            kept_b.append({n: b.clone() for n, b in net.named_buffers()})
    stack = (lambda parts: {n: torch.stack([p[n] for p in parts]) for n in parts[0]} if parts else {})
    return TTTResult(torch.stack(logits), torch.stack(losses), stack(kept_p), stack(kept_b))


def ttt_online(model: nn.Module, images: Tensor, *, steps: int = 1, lr: float = 1e-3, copies: int = 32,
               adapt: ParamFilter = "trunk", seed: int = 0, first_index: int = 0,
               params: Params | None = None, buffers: Params | None = None,
               task: SelfSupervisedTask | None = None) -> TTTResult:
    """TTT-Online: each image in stream order adapts the weights the previous image left, then is predicted.

    For each image, ``steps`` SGD steps on its self-supervised loss starting from the weights the previous image
    left, then a prediction in eval mode.  Sun et al. 2020, Sec. 2 (online version).  The model is not modified.

    Args:
        model: The trained model, with a self-supervised branch.
        images: (N, C, H, W) test stream, uint8 in [0, 255] or float in [0, 1].
        steps: SGD steps per image.
        lr: The SGD step size.
        copies: Augmented copies of the image per step.
        adapt: The parameters adapted (see [`ParamFilter`][metalearn.functional.ParamFilter]).
        seed: The seed of the draws.
        first_index: Position of ``images[0]`` in the stream (seeds the draws).
        params: The adapted parameters to start from (a previous call's ``result.params``, to continue a stream);
            default the model's own.
        buffers: The buffers to start from (a previous call's ``result.buffers``); default the model's own.
        task: The self-supervised task (default: the one of the model's branch).

    Returns:
        The logits, the losses and the final carried parameters and buffers.

    Raises:
        ValueError: A setting out of range, images the model cannot take, or ``params`` not holding exactly the
            adapted parameters.
        FloatingPointError: A non-finite self-supervised loss.
    """
    x = as_float_images(images, model)
    names, task = _check(model, steps, lr, copies, adapt, task=task, size=tuple(x.shape[1:]))
    all_params = {n: p.detach() for n, p in model.named_parameters()}
    fast, slow = partition(all_params, names)
    if params is not None:
        if set(params) != set(names):
            raise ValueError(f"params: expected the adapted parameters {names}, got {sorted(params)}")
        fast = dict(params)
    bufs = {n: b.clone() for n, b in (buffers if buffers is not None else dict(model.named_buffers())).items()}
    rule = sgd(lr)
    logits, losses = [], []
    with torch.no_grad():
        for i in range(x.shape[0]):
            d = task_draws(task, first_index + i, steps, copies, seed, x.shape[1:])
            img_losses = []
            for s in range(steps):
                xs, ys = task.make_inputs(x[i:i + 1], tuple(t[None, s].to(x.device) for t in d))
                with train_mode(model, True):
                    fast, bufs, loss = _one_step(model, slow, rule, fast, bufs, xs[0], tuple(t[0] for t in ys), task)
                img_losses.append(loss)
            with train_mode(model, False):
                logits.append(_predict_one(model, slow, fast, bufs, x[i]))
            losses.append(torch.stack(img_losses))
    losses_t = torch.stack(losses)
    check_finite(losses_t, f"TTT-Online {task.name} loss", first_task=first_index)
    return TTTResult(torch.stack(logits), losses_t, fast, bufs)
