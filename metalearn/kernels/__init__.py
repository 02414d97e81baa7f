"""Fused CPU kernels, compiled for the machine on first use; PyTorch's own ops wherever they cannot be used.

One kernel so far: training-mode BatchNorm -> 2x2 max-pool -> ReLU on channels-last float32 / bfloat16 tensors,
the tail of every Conv4 block (``bn_pool_relu.cpp`` says why it is ours).  It is built with
``torch.utils.cpp_extension`` (a C++ compiler and ``ninja``; once per machine, torch installation and source, kept in ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``).  Where it cannot be
built, a warning says why once and the eager ops run.  ``METALEARN_KERNELS=off`` turns it off.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_SRC = Path(__file__).with_name("bn_pool_relu.cpp")
_lock = threading.Lock()
_state: dict = {"tried": False, "lib": None, "error": None}


def enabled() -> bool:
    """False when ``METALEARN_KERNELS`` is ``off`` (or ``0`` / ``false`` / ``eager``)."""
    return os.environ.get("METALEARN_KERNELS", "on").strip().lower() not in ("off", "0", "false", "eager", "no")


def _fingerprint() -> str:
    """What the compiled code depends on: the source, torch (version and place), Python, and the CPU (it is built
    with -march=native)."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line
                break
    except OSError:
        flags += platform.processor()
    # torch's own directory too: a build links against one installation's libraries (two virtual environments
    # with the same torch would otherwise rebuild each other's copy in turn)
    h = hashlib.sha256(_SRC.read_bytes() + torch.__version__.encode() + str(Path(torch.__file__).parent).encode()
                       + sys.version.encode() + flags.encode())
    return h.hexdigest()[:12]


#: A build lock older than this is left over from a build that was killed (a build takes well under this):
#: torch.utils.cpp_extension would otherwise wait for it forever.
STALE_LOCK_S = 600.0


def _clear_stale_lock(name: str) -> None:
    try:
        from torch.utils.cpp_extension import _get_build_directory
        lock = Path(_get_build_directory(name, False)) / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink(missing_ok=True)
    except Exception:     # a torch without that helper: its own locking, unchanged
        pass


def load() -> ModuleType | None:
    """The compiled module, building it on the first call; None when it is off or cannot be built.

    Returns:
        The extension module (``forward``, ``backward``), or None (then ``error()`` says why, unless it is off).
    """
    if not enabled():
        return None
    with _lock:
        if _state["tried"]:
            return _state["lib"]
        _state["tried"] = True
        if not sys.platform.startswith("linux"):
            _state["error"] = f"built only on Linux (this is {sys.platform})"
        else:
            try:
                from torch.utils.cpp_extension import load as _load
                name = f"metalearn_bn_pool_relu_{_fingerprint()}"
                _clear_stale_lock(name)
                _state["lib"] = _load(name=name, sources=[str(_SRC)],
                                      extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"],
                                      extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as e:   # no compiler, no ninja, a failed build: the eager ops, said once
                _state["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
        if _state["lib"] is None and _state["error"]:
            warnings.warn(f"metalearn: the fused BatchNorm/max-pool/ReLU kernel could not be built "
                          f"({_state['error']}); PyTorch's own ops run instead (slower). METALEARN_KERNELS=off "
                          "silences this.", RuntimeWarning, stacklevel=2)
        return _state["lib"]


def error() -> str | None:
    """Why the kernel could not be built, once ``load()`` has tried; None if it was built (or not tried)."""
    return _state["error"]


class _BNPoolReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        out, mean, invstd, var = _state["lib"].forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _gm, _gv):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        gx, gw, gb = _state["lib"].backward(grad.contiguous(memory_format=torch.channels_last), x, weight, bias,
                                             mean, invstd)
        need = ctx.needs_input_grad
        return (gx if need[0] else None), (gw if need[1] else None), (gb if need[2] else None), None


def _is(v, n: int) -> bool:
    """``v`` (an int or a pair, as nn.MaxPool2d stores it) is ``n`` in both dimensions."""
    return v == n if isinstance(v, int) else isinstance(v, (tuple, list)) and tuple(v) == (n, n)


def _pool_is_2x2(pool: nn.Module) -> bool:
    return (type(pool) is nn.MaxPool2d and _is(pool.kernel_size, 2) and _is(pool.stride, 2) and _is(pool.padding, 0)
            and _is(pool.dilation, 1) and not pool.ceil_mode and not pool.return_indices)


def fusable_tail(bn: nn.Module, pool: nn.Module, relu: nn.Module) -> bool:
    """The modules are exactly ``nn.BatchNorm2d`` (in training mode) -> ``nn.MaxPool2d(2)`` -> ``nn.ReLU``.

    Args:
        bn: The normalisation (a subclass, such as the distributed one, is not the same function).
        pool: The pool: kernel 2, stride 2, no padding, dilation 1, floor mode, no indices.
        relu: The activation.

    Returns:
        Whether [`bn_pool_relu`][metalearn.kernels.bn_pool_relu] computes what the three modules compute.
    """
    return (type(bn) is nn.BatchNorm2d and bn.training and _pool_is_2x2(pool) and type(relu) is nn.ReLU)


def _plain(t: Tensor) -> bool:
    from torch._C._functorch import is_batchedtensor, is_gradtrackingtensor
    return not (is_batchedtensor(t) or is_gradtrackingtensor(t))


def bn_pool_relu(x: Tensor, bn: nn.BatchNorm2d) -> Tensor | None:
    """``relu(max_pool2d(bn(x), 2))`` for ``bn`` in training mode, fused; None where the kernel does not apply.

    It applies to a CPU tensor in channels-last strides, float32 or bfloat16, with ``bn``'s parameters float32,
    outside ``torch.func`` transforms; the gradient is first-order only (no double backward).  The running
    statistics move as ``bn``'s own forward would move them (unbiased variance, ``momentum``, or the cumulative
    average when ``momentum`` is None).

    Args:
        x: The conv output, (N, C, H, W).
        bn: The batch norm, in training mode.

    Returns:
        (N, C, H // 2, W // 2) in channels-last strides and ``x``'s dtype, or None (then run the modules).
    """
    if (not enabled() or x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.bfloat16)
            or not x.is_contiguous(memory_format=torch.channels_last) or x.shape[2] < 2 or x.shape[3] < 2
            or x.numel() == 0 or not _plain(x)):
        return None
    c = x.shape[1]
    if bn.affine:
        w, b = bn.weight, bn.bias
        if w.dtype != torch.float32 or b.dtype != torch.float32 or not (_plain(w) and _plain(b)):
            return None
    else:
        w, b = torch.ones(c), torch.zeros(c)
    if load() is None:
        return None
    out, mean, var = _BNPoolReLU.apply(x, w, b, float(bn.eps))
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else float(bn.momentum)
            n = x.numel() // c
            bn.running_mean.mul_(1 - f).add_(mean, alpha=f)
            bn.running_var.mul_(1 - f).add_(var * (n / max(n - 1, 1)), alpha=f)
    return out
