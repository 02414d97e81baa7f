"""Baselines on the same test stream: source prediction, norm-statistics adaptation, Tent.

* [`predict`][metalearn.ttt.tent.predict]: the trained model in eval mode, no adaptation.
* [`norm_adapt`][metalearn.ttt.tent.norm_adapt]: every BatchNorm layer normalises with the statistics of the current
  test batch instead of
  its running statistics (Schneider et al. 2020; Tent's "BN adapt" baseline); no weight changes.  GroupNorm
  (and LayerNorm) already normalise each image by its own statistics and keep no running statistics, so for a
  model without BatchNorm layers norm adaptation *is* the source prediction (a no-op, returned as such).
* [`tent`][metalearn.ttt.tent.tent]: Tent (Wang et al. 2021): minimise the mean entropy of the predictions on each
  test batch with
  Adam, updating only the norm layers' affine parameters
  ([`norm_affine_names`][metalearn.ttt.tent.norm_affine_names]); BatchNorm layers use the
  test batch statistics.  The stream is consumed in order, one step per batch, the parameters carried along;
  each batch is predicted by the forward pass before its update (as in Tent's code).

The model itself is never modified: the adapted affine parameters are returned.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from metalearn.functional import call, check_trainable, partition
from metalearn.ttt.adapt import as_float_images
from metalearn.types import Params

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def norm_affine_names(model: nn.Module) -> list[str]:
    """Names of the affine parameters (weight, bias) of every normalisation layer (BatchNorm, GroupNorm,
    LayerNorm, InstanceNorm): what Tent adapts."""
    names = []
    for mod_name, m in model.named_modules():
        if isinstance(m, _NORMS):
            for p_name, p in m.named_parameters(recurse=False):
                names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Everything in eval mode except the BatchNorm layers, which use the batch statistics (training mode);
    the previous modes are restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _batches(x: Tensor, batch_size: int, what: str = "batch_size") -> Iterator[Tensor]:
    if batch_size < 1:
        raise ValueError(f"{what}: expected >= 1, got {batch_size}")
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size]


def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Logits (N, classes) of the unadapted model in eval mode."""
    x = as_float_images(images, model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([call(model, params, buffers, xb) for xb in _batches(x, batch_size)])
    finally:
        for m, mode in modes:
            m.training = mode


def norm_adapt(model: nn.Module, images: Tensor, batch_size: int = 128) -> Tensor:
    """Logits (N, classes) with each test batch of ``batch_size`` normalised by its own BatchNorm statistics.

    No parameter changes, and the model's running statistics are not touched (updates go to a copy).  For a
    model without BatchNorm (GroupNorm ResNet) this equals [`predict`][metalearn.ttt.tent.predict]: there are no
    statistics to replace.

    Args:
        model: The trained model.
        images: (N, C, H, W) test stream, uint8 in [0, 255] or float in [0, 1].
        batch_size: Images per test batch.
    """
    if not has_batchnorm(model):
        return predict(model, images, batch_size)
    x = as_float_images(images, model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    out = []
    with torch.no_grad(), batch_statistics(model):
        for xb in _batches(x, batch_size):
            buffers = {n: b.clone() for n, b in model.named_buffers()}  # train-mode BN writes into a copy
            out.append(call(model, params, buffers, xb))
    return torch.cat(out)


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of softmax(logits) per row.  (N, K) -> (N,)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass
class TentResult:
    """``logits`` (N, classes) (each batch predicted before its update), ``losses`` (batches,) mean entropies,
    ``params`` the final adapted affine parameters."""
    logits: Tensor
    losses: Tensor
    params: Params

    @property
    def predictions(self) -> Tensor:
        return self.logits.argmax(-1)


def tent(model: nn.Module, images: Tensor, *, lr: float = 1e-3, batch_size: int = 128, steps: int = 1,
         betas: tuple[float, float] = (0.9, 0.999), params: Params | None = None) -> TentResult:
    """Tent on the stream ``images``: per batch, ``steps`` Adam steps on the mean prediction entropy.

    Only the norm layers' affine parameters are updated.  Wang et al. 2021, Sec. 3.  The model is not modified;
    Adam's state starts fresh on every call.

    Args:
        model: The trained model.
        images: (N, C, H, W) test stream, uint8 in [0, 255] or float in [0, 1].
        lr: Adam's learning rate.
        batch_size: Images per test batch.
        steps: Adam steps per batch.
        betas: Adam's betas.
        params: Affine parameters to start from (a previous result's, to continue a stream).

    Returns:
        The logits (each batch predicted before its update), the mean entropies and the final affine parameters.

    Raises:
        ValueError: ``lr`` <= 0, ``steps`` < 1, images the model cannot take, or ``params`` not holding exactly the
            norm affine parameters.
    """
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr}")
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    x = as_float_images(images, model)
    all_params = {n: p.detach() for n, p in model.named_parameters()}
    names = norm_affine_names(model)
    check_trainable(dict(model.named_parameters()), names, "Tent (norm affine parameters)")
    start, slow = partition(all_params, names)
    if params is not None:
        if set(params) != set(names):
            raise ValueError(f"params: expected the norm affine parameters {names}, got {sorted(params)}")
        start = params
    fast = {n: p.detach().clone().requires_grad_(True) for n, p in start.items()}
    opt = torch.optim.Adam(list(fast.values()), lr=lr, betas=betas)
    out, losses = [], []
    with batch_statistics(model):
        for xb in _batches(x, batch_size):
            for s in range(steps):
                buffers = {n: b.clone() for n, b in model.named_buffers()}
                logits = call(model, {**slow, **fast}, buffers, xb)
                loss = entropy(logits).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if s == 0:
                    out.append(logits.detach())
                    losses.append(loss.detach())
    return TentResult(torch.cat(out), torch.stack(losses), {n: p.detach() for n, p in fast.items()})
