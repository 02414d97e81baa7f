"""Batch normalisation written from primitive ops, so that ``torch.func.vmap`` differentiates it correctly.

``torch.func.vmap`` through ``F.batch_norm`` gives wrong second-order gradients (its batching rule for the
double backward is wrong; forward and first order are right).  The same arithmetic as mean / var / rsqrt is
differentiated op by op and is exact to any order under vmap.  Statistics always come from the batch (as in
MAML's reference code, where test-time adaptation also uses batch statistics); there are no running buffers,
which also keeps the module free of in-place state under vmap.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class BatchNorm2d(nn.Module):
    """Per-channel batch normalisation of (N, C, H, W) with batch statistics and an affine map.

    Same numbers as ``nn.BatchNorm2d(track_running_stats=False)`` (biased variance, ``eps`` inside the root).

    Args:
        num_features: C, the channels.
        eps: Added to the variance inside the square root.
        affine: Learn a per-channel scale and shift (``weight``, ``bias``).

    Examples:
        >>> bn = BatchNorm2d(64)
        >>> bn(torch.randn(10, 64, 7, 7)).shape
        torch.Size([10, 64, 7, 7])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features: expected >= 1, got {num_features}")
        self.num_features, self.eps = num_features, eps
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"x: expected (N, {self.num_features}, H, W), got {tuple(x.shape)}")
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=(0, 2, 3), keepdim=True)
        inv = torch.rsqrt(var + self.eps)
        if self.weight is None:
            return centred * inv
        # the scale folded into the per-channel factor and the shift fused (addcmul): one full-size op instead
        # of three, in the forward and in every backward through it. Second-order MAML under vmap spends much
        # of its step in these memory-bound ops. Not torch.var_mean, nor sum() * (1 / n) for the means: under
        # vmap their double backward moved the meta-gradient beyond 1e-4 of float64 (docs/speed.md).
        return torch.addcmul(self.bias[:, None, None], centred, inv * self.weight[:, None, None])

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"
