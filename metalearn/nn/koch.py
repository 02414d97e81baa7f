"""The twin convnet of Koch, Zemel & Salakhutdinov 2015 (Siamese Neural Networks for One-shot Image
Recognition, figure 4), for 105x105 Omniglot.

conv 64@10x10 -> ReLU -> max-pool 2 -> conv 128@7x7 -> ReLU -> max-pool 2 -> conv 128@4x4 -> ReLU -> max-pool 2
-> conv 256@4x4 -> ReLU -> flatten (256x6x6 = 9216 at 105 px) -> FC 4096 -> sigmoid.  No normalisation layers.
Spatial sizes at 105 px: 105 -> 96 -> 48 -> 42 -> 21 -> 18 -> 9 -> 6.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def koch_flat_size(image_size: int, hidden: int = 64) -> int:
    """Features entering the FC layer for square images of side ``image_size`` (9216 at 105 px)."""
    s = image_size
    for k, pool in ((10, True), (7, True), (4, True), (4, False)):
        s = s - k + 1
        if s < 1:
            raise ValueError(f"image_size: {image_size} px is too small for the Koch net (needs >= 65)")
        if pool:
            s //= 2
    if s < 1:
        raise ValueError(f"image_size: {image_size} px is too small for the Koch net (needs >= 65)")
    return 4 * hidden * s * s


class KochNet(nn.Module):
    """Koch's embedding network.  x: (..., C, H, W) -> (..., fc) in (0, 1); leading dims flattened and restored.

    Args:
        in_channels: C of the input images.
        image_size: H = W of the inputs (105 in the paper).
        hidden: Scales the widths: 64, 128, 128, 256 at ``hidden=64`` (Koch's).
        fc: The embedding size (4096 in the paper).
        koch_init: The paper's initialisation: conv weights N(0, 1e-2), FC weights N(0, 0.2^2), biases
            N(0.5, 1e-2). The default keeps PyTorch's (fan-in scaled) initialisation, which suits Adam (the
            paper's FC std of 0.2 over 9216 inputs starts the sigmoid saturated).

    Examples:
        >>> net = KochNet(in_channels=1, image_size=105)
        >>> net(torch.zeros(2, 1, 105, 105)).shape
        torch.Size([2, 4096])
    """

    def __init__(self, in_channels: int = 1, image_size: int = 105, hidden: int = 64, fc: int = 4096,
                 koch_init: bool = False) -> None:
        super().__init__()
        if fc < 1:
            raise ValueError(f"fc: expected >= 1, got {fc}")
        h = hidden
        self.in_channels, self.image_size = in_channels, image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, h, 10), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(h, 2 * h, 7), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * h, 2 * h, 4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * h, 4 * h, 4), nn.ReLU(), nn.Flatten())
        self.fc = nn.Linear(koch_flat_size(image_size, hidden), fc)
        if koch_init:
            with torch.no_grad():
                for m in self.modules():
                    if isinstance(m, (nn.Conv2d, nn.Linear)):
                        m.weight.normal_(0.0, 0.2 if isinstance(m, nn.Linear) else 1e-2)
                        m.bias.normal_(0.5, 1e-2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 4 or x.shape[-3:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"x: expected (..., {self.in_channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        lead = x.shape[:-3]
        z = self.features(x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last))
        return torch.sigmoid(self.fc(z)).reshape(*lead, -1)
