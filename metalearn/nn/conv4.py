"""Conv4: the four-block convolutional backbone of Vinyals 2016 / Snell 2017 / Finn 2017.

Each block: conv 3x3 (padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool.  With 64 filters the embedding of a
28x28 Omniglot image is 64-d (28 -> 14 -> 7 -> 3 -> 1) and of an 84x84 miniImageNet image 1600-d (5x5x64).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBlock(nn.Sequential):
    """conv -> BatchNorm -> max-pool -> ReLU, an ``nn.Sequential`` (same modules, same state dict).

    With ``fused = True`` (set by [`metalearn.engine.fused_kernels`][metalearn.engine.fused_kernels], which the
    CLI applies to the metric learners), a training-mode forward on the CPU runs the BatchNorm -> pool -> ReLU tail
    in one kernel ([`metalearn.kernels.bn_pool_relu`][metalearn.kernels.bn_pool_relu]); everywhere else (eval
    mode, other modules in the block, a GPU, ``torch.func`` transforms, float64) the modules run one by one.
    On the fused path, forward hooks registered on the BatchNorm, pool or ReLU module do not run (hooks on the
    block itself do); ``fused = False`` or ``METALEARN_KERNELS=off`` restores them.
    """

    fused = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fused and len(self) == 4 and type(self[0]) is nn.Conv2d:
            from metalearn.kernels import bn_pool_relu, fusable_tail
            if fusable_tail(self[1], self[2], self[3]):
                h = self[0](x)
                out = bn_pool_relu(h, self[1])
                return out if out is not None else self[3](self[2](self[1](h)))
        return super().forward(x)


def conv_block(in_channels: int, out_channels: int, pool: bool = True) -> nn.Sequential:
    # max-pool before the ReLU: the same function and gradient (ReLU is monotonic, so it commutes with max),
    # with the ReLU on a 4x smaller tensor (about 10% of a CPU training step)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.ReLU())
    return ConvBlock(*layers)


class Conv4(nn.Module):
    """Four conv blocks then flatten.  x: (..., C, H, W) -> (..., D); leading dims are flattened and restored.

    Args:
        in_channels: C of the input images (1 for Omniglot, 3 for miniImageNet).
        hidden: Channels of every block but the last.
        out_channels: Channels of the last block (default ``hidden``).
        blocks: Number of conv blocks (each halves H and W).

    Examples:
        >>> net = Conv4(in_channels=1)
        >>> net(torch.zeros(10, 1, 28, 28)).shape
        torch.Size([10, 64])
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, out_channels: int | None = None,
                 blocks: int = 4) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks: expected >= 1, got {blocks}")
        out_channels = hidden if out_channels is None else out_channels
        chans = [in_channels] + [hidden] * (blocks - 1) + [out_channels]
        self.in_channels = in_channels
        self.encoder = nn.Sequential(*[conv_block(chans[i], chans[i + 1]) for i in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 4 or x.shape[-3] != self.in_channels:
            raise ValueError(f"x: expected (..., {self.in_channels}, H, W), got {tuple(x.shape)}")
        lead = x.shape[:-3]
        # channels-last: 1.5x faster on CPU (oneDNN) and the layout cuDNN prefers
        z = self.encoder(x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last))
        return z.reshape(*lead, -1)
