"""The CPU/GPU engine: allocator, threads, precision and layout policy, inference-time BatchNorm folding.

Measured on a 2-core AVX-512-BF16 machine (``benchmarks/cpu_throughput.py``; the speed page of the docs
describes the policy and its switches):

* **allocator** -- glibc returns every large block to the kernel with ``munmap`` and trims the heap, so every
  training step page-faults its activations back in (a third to a half of the CPU time).
  [`tune_allocator`][metalearn.engine.tune_allocator] tells it to keep large blocks on the heap and never trim
  (``mallopt``): 1.9-2x.
  The CLI applies it once at start-up; ``METALEARN_MALLOC=default`` turns it off.
* **layout** -- conv weights in channels-last ([`channels_last`][metalearn.engine.channels_last]); a 1-channel input
  is already both
  layouts, so converting only the input leaves every conv in NCHW with reorders around it: 1.2-1.4x.
* **precision** -- bf16 autocast on the encoder only, with fp32 embeddings, distances, softmax, losses and
  optimizer state ([`autocast`][metalearn.engine.autocast] and
  [`metalearn.Learner.encode`][metalearn.learners.base.Learner.encode]): 1.6-1.9x on AVX-512-BF16.
  Second-order MAML stays fp32: bf16 moves its meta-gradient by ~30%.
* **evaluation** -- BatchNorm folded into the convs ([`fold_batchnorm`][metalearn.engine.fold_batchnorm]) and the
  conv chain run on oneDNN's blocked tensors ([`onednn_inference`][metalearn.engine.onednn_inference]): with
  bf16, 18x the levers-off evaluation at one thread on an AMX Xeon (12x on an AVX-512-BF16 EPYC).
* **threads** -- on a quiet machine idle OpenMP threads spin briefly (``GOMP_SPINCOUNT=30000``), next to a
  busy process they sleep at once (``OMP_WAIT_POLICY=PASSIVE``: plain 2 threads were 4-5x slower than 1 thread
  next to another busy process); chosen when ``metalearn`` is imported before torch (see
  ``metalearn._omp.omp_env_defaults``).

The allocator is process-wide state, so it is a function a program calls once, not a side effect of import.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import os
import sys

import torch
from torch import nn

from metalearn._omp import omp_env_defaults as omp_env_defaults  # re-exported: part of the engine's API

PRECISIONS = ("auto", "bf16", "fp32")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_allocator_state: dict = {"applied": None}


def tune_allocator(enable: bool | None = None) -> bool:
    """Keep large blocks on glibc's heap and never trim it (``mallopt(M_MMAP_MAX, 0)``,
    ``mallopt(M_TRIM_THRESHOLD, -1)``); applied at most once per process.

    The cost is memory: the heap keeps its high-water mark (the activations of the largest step) until the
    process exits. The ``metalearn`` command calls it at start-up; call it once in your own training script.

    Args:
        enable: None reads ``METALEARN_MALLOC`` (``default`` / ``0`` / ``off`` leave glibc's defaults).

    Returns:
        True when the setting is in force. On a platform without glibc it does nothing and returns False.
    """
    if enable is None:
        enable = os.environ.get("METALEARN_MALLOC", "").lower() not in ("default", "0", "off")
    if not enable:
        return bool(_allocator_state["applied"])
    if _allocator_state["applied"] is not None:
        return bool(_allocator_state["applied"])
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
        except (OSError, AttributeError):   # not glibc (musl, ...): nothing to tune
            ok = False
    _allocator_state["applied"] = ok
    return ok


def allocator_tuned() -> bool:
    """Whether [`tune_allocator`][metalearn.engine.tune_allocator] is in force in this process."""
    return bool(_allocator_state["applied"])


def set_threads(n: int) -> int:
    """``torch.set_num_threads(n)`` for n > 0 (0 keeps torch's default, one per core); returns the count."""
    if n < 0:
        raise ValueError(f"threads: expected >= 0, got {n}")
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matmul/conv at full speed: CUDA with bf16, or a CPU oneDNN reports native
    bf16 for (AVX-512-BF16 or AMX). Elsewhere bf16 is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device | str, bf16_safe: bool = True) -> str:
    """The precision a run uses: ``auto`` -> ``bf16`` where the device runs bf16 natively and the learner keeps
    its accuracy with it, else ``fp32``; ``bf16`` / ``fp32`` are returned as asked.

    Args:
        precision: ``auto``, ``bf16`` or ``fp32`` (``train.precision``).
        device: Where the learner runs.
        bf16_safe: Whether the learner keeps its accuracy in bf16 (the metric learners; not second-order MAML).

    Raises:
        ValueError: Another precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if bf16_safe and bf16_supported(device) else "fp32"


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 on the device's type for ``precision == "bf16"``; a no-op for fp32.

    Inside, convolutions and matmuls run in bf16 (their fp32 weights are cast per call; the weights, their
    gradients and the optimizer state stay fp32).

    Args:
        device: The device whose type autocast is for.
        precision: ``"bf16"`` or ``"fp32"`` (resolve ``"auto"`` first).

    Raises:
        ValueError: Another precision.

    Examples:
        ```python
        from metalearn.engine import autocast, resolve_precision
        precision = resolve_precision("auto", "cpu")
        with autocast("cpu", precision):
            z = encoder(x)
        z = z.float()            # distances, softmax and losses in fp32
        ```
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision: expected bf16 or fp32, got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def channels_last(module: nn.Module) -> nn.Module:
    """Put every 4-d parameter and buffer (conv weights) in channels-last, in place; returns the module.

    Values are unchanged (only the strides), so state dicts load either way. Models the CLI builds are
    converted already; call it on your own model before making its optimizer.

    Examples:
        ```python
        from metalearn.engine import channels_last
        learner = channels_last(ProtoNet(Conv4(in_channels=1)))
        ```
    """
    for t in list(module.parameters()) + list(module.buffers()):
        if t.dim() == 4:
            # clone, not .contiguous(): a (64, 1, 3, 3) weight counts as channels-last already, but only the
            # (9, 1, 3, 1) strides make oneDNN run the conv (and everything after it) in channels-last
            t.data = t.data.clone(memory_format=torch.channels_last)
    return module


def fused_kernels(module: nn.Module, enable: bool = True) -> nn.Module:
    """Let every Conv4 block of ``module`` run its BatchNorm -> max-pool -> ReLU tail in one CPU kernel when it
    trains (``metalearn.nn.conv4.ConvBlock``; the kernel is built on first use, see ``metalearn.kernels``); in place,
    returns the module.  Models the CLI builds for ProtoNet, Matching Networks and Siamese have it on; the MAML family
    does not (its blocks are ``MamlConv4``'s, and second-order gradients need the eager ops).
    ``METALEARN_KERNELS=off`` turns it off everywhere.

    Args:
        module: Any module; blocks other than Conv4's are left alone.
        enable: False turns it off again.

    Examples:
        ```python
        from metalearn.engine import channels_last, fused_kernels
        learner = fused_kernels(channels_last(ProtoNet(Conv4(in_channels=1))))
        ```
    """
    from metalearn.nn.conv4 import ConvBlock
    for m in module.modules():
        if isinstance(m, ConvBlock):
            m.fused = enable
    return module


def _fuse(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    fused = fuse_conv_bn_eval(conv, bn)
    if conv.weight.stride()[1] == 1:
        fused.weight.data = fused.weight.data.clone(memory_format=torch.channels_last)
    return fused


# the layers a oneDNN inference chain may hold (parameter-free ones run on oneDNN tensors as they are)
def _sequentials() -> tuple:
    """``nn.Sequential`` and Conv4's block, an ``nn.Sequential`` whose eval-mode forward is the plain one."""
    from metalearn.nn.conv4 import ConvBlock
    return (nn.Sequential, ConvBlock)


def _onednn_layers() -> tuple:
    return (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Identity, *_sequentials())


def _onednn_chain(seq: nn.Sequential) -> bool:
    mods = list(seq.modules())
    return (any(type(m) is nn.Conv2d for m in mods)
            and all(type(m) in _onednn_layers() for m in mods)
            and all(m.padding_mode == "zeros" and isinstance(m.padding, tuple) for m in mods if type(m) is nn.Conv2d)
            and all(not m.return_indices for m in mods if type(m) is nn.MaxPool2d))


class OneDNNChain(nn.Module):
    """A chain of convs, ReLUs and max-pools run on oneDNN's own (blocked) tensors for inference on the CPU.

    Eager PyTorch hands every op a strided tensor, so oneDNN converts to its blocked layout and back around
    each conv, and max-pool runs PyTorch's own kernel; inside one oneDNN chain the activations stay blocked
    from the first conv to the last pool (``torch.utils.mkldnn``). Measured in `benchmarks/cpu_throughput.py`
    (``protonet_eval``). Under bf16 autocast the chain runs in bf16 (fp32 accumulation), otherwise in fp32;
    with gradients enabled, off the CPU, for other dtypes than fp32 (float64, say) or without oneDNN bf16 it
    runs the original modules.
    """

    #: Images per oneDNN call: as many as keep the first conv's output under this many bytes (16 MiB: 160
    #: Omniglot images at 28 px, 17 miniImageNet images at 84 px, 64 channels in bf16), so that the max-pool
    #: reads it back from the cache rather than from memory.  Measured on Conv4 (Xeon with AMX, 1 and 2
    #: threads): 1.1x at 28 px and 1.3x at 84 px over one call for 800 / 400 images; chunks far below it lose
    #: to the per-call overhead.
    CHUNK_BYTES = 16 * 2 ** 20

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        self.seq = seq
        self._converted: dict = {}
        self._first_out_channels = next(m.out_channels for m in seq.modules() if type(m) is nn.Conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() != 4 or x.dtype != torch.float32
                or any(p.dtype != torch.float32 for p in self.seq.parameters())):
            return self.seq(x)                # oneDNN tensors are fp32 / bf16 only
        dtype = torch.float32
        if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
            if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                return self.seq(x)
            dtype = torch.bfloat16
        if dtype not in self._converted:
            import warnings
            with warnings.catch_warnings():      # its modules are TorchScript classes, deprecated as such
                warnings.simplefilter("ignore", DeprecationWarning)
                import torch.utils.mkldnn as mkldnn_utils
            self._converted[dtype] = mkldnn_utils.to_mkldnn(copy.deepcopy(self.seq), dtype)
        chain = self._converted[dtype]
        rows = max(1, self.CHUNK_BYTES // max(1, self._first_out_channels * x.shape[-2] * x.shape[-1]
                                               * torch.finfo(dtype).bits // 8))
        with torch.autocast("cpu", enabled=False):
            if x.shape[0] <= rows:
                return chain(x.to(dtype).to_mkldnn()).to_dense()
            return torch.cat([chain(c.to(dtype).to_mkldnn()).to_dense() for c in x.split(rows)])


def onednn_inference(module: nn.Module) -> nn.Module:
    """Wrap, in place, every outermost ``nn.Sequential`` made only of ``Conv2d`` / ``ReLU`` / ``MaxPool2d`` /
    ``Identity`` layers (Conv4's encoder once its BatchNorms are folded) in a [`OneDNNChain`][metalearn.engine.OneDNNChain];
    returns ``module``. For inference copies only (the chains hold converted copies of the weights, so later
    weight updates do not reach them). A no-op where PyTorch has no oneDNN.
    [`evaluate`][metalearn.train.evaluator.evaluate] applies it after folding the BatchNorms on the CPU.
    """
    if not torch.backends.mkldnn.is_available():
        return module

    def visit(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if type(child) in _sequentials() and _onednn_chain(child):
                setattr(parent, name, OneDNNChain(child))
            elif not isinstance(child, OneDNNChain):
                visit(child)
    visit(module)
    return module


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` for inference in which every ``Conv2d`` directly followed by a ``BatchNorm2d``
    with running statistics (inside an ``nn.Sequential``) is one conv: w' = w·γ/σ, b' = (b − μ)·γ/σ + β.

    Exact in eval mode up to float rounding. The copy is in eval mode and has no gradients; ``module`` is
    unchanged. BatchNorms that use batch statistics at test time (no running stats, e.g. MAML's) are kept.
    [`evaluate`][metalearn.train.evaluator.evaluate] does this by default (``fold_bn=True``).
    """
    folded = copy.deepcopy(module).eval()
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                    and bn.running_mean is not None and conv.out_channels == bn.num_features):
                seq._modules[a] = _fuse(conv, bn)
                seq._modules[b] = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
