"""The four-block convolutional classifier of MAML (Finn et al. 2017), with a linear head for the inner loop.

Each block: conv 3x3 (padding 1) -> batch norm -> ReLU, then either a 2x2 max-pool (``pool="max"``, the
miniImageNet network) or a stride-2 convolution (``pool="stride"``, the Omniglot network, whose last feature map
is averaged over space).  ``features`` and ``head`` are separate submodules, so ANIL adapts ``"head"`` only.
"""
from __future__ import annotations

from torch import Tensor, nn

from metalearn.nn.norm import BatchNorm2d


class MamlConv4(nn.Module):
    """Conv4 + linear classifier.  x: (..., C, H, W) -> logits (..., ways).

    Args:
        in_channels: C of the input images.
        ways: N, the outputs of the linear head.
        hidden: Channels of every block (64 on Omniglot, 32 on miniImageNet in the paper).
        pool: ``max`` (2x2 max-pool per block, the miniImageNet network) or ``stride`` (stride-2 convs, the
            Omniglot network).
        image_size: H = W of the inputs (sets the head's input size).
        blocks: Number of conv blocks.
        norm: ``batch`` uses [`metalearn.nn.BatchNorm2d`][metalearn.nn.norm.BatchNorm2d] (batch statistics,
            correct under vmap); ``torch`` uses ``nn.BatchNorm2d(track_running_stats=False)`` (same numbers; for
            loop-only use and for tests); ``none`` drops normalisation.

    Raises:
        ValueError: An unknown ``pool`` or ``norm``, or a size below 1.

    Examples:
        >>> net = MamlConv4(in_channels=1, ways=5, pool="stride")     # Omniglot, 28x28
        >>> net(torch.zeros(5, 1, 28, 28)).shape
        torch.Size([5, 5])
    """

    def __init__(self, in_channels: int, ways: int, hidden: int = 64, pool: str = "max", image_size: int = 28,
                 blocks: int = 4, norm: str = "batch") -> None:
        super().__init__()
        if pool not in ("max", "stride"):
            raise ValueError(f"pool: expected 'max' or 'stride', got {pool!r}")
        if norm not in ("batch", "torch", "none"):
            raise ValueError(f"norm: expected 'batch', 'torch' or 'none', got {norm!r}")
        for key, v in (("in_channels", in_channels), ("ways", ways), ("hidden", hidden), ("blocks", blocks),
                       ("image_size", image_size)):
            if v < 1:
                raise ValueError(f"{key}: expected >= 1, got {v}")
        self.in_channels, self.pool = in_channels, pool
        layers: list[nn.Module] = []
        size, c = image_size, in_channels
        for _ in range(blocks):
            layers.append(nn.Conv2d(c, hidden, 3, stride=2 if pool == "stride" else 1, padding=1))
            if norm == "batch":
                layers.append(BatchNorm2d(hidden))
            elif norm == "torch":
                layers.append(nn.BatchNorm2d(hidden, track_running_stats=False))
            layers.append(nn.ReLU())
            if pool == "max":
                layers.append(nn.MaxPool2d(2))
            size = (size + 1) // 2 if pool == "stride" else size // 2
            c = hidden
        if size < 1:
            raise ValueError(f"image_size: {image_size} is too small for {blocks} blocks")
        self.features = nn.Sequential(*layers)
        self.feature_dim = hidden if pool == "stride" else hidden * size * size
        self.head = nn.Linear(self.feature_dim, ways)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 4 or x.shape[-3] != self.in_channels:
            raise ValueError(f"x: expected (..., {self.in_channels}, H, W), got {tuple(x.shape)}")
        lead = x.shape[:-3]
        z = self.features(x.reshape(-1, *x.shape[-3:]))
        z = z.mean(dim=(-2, -1)) if self.pool == "stride" else z.flatten(1)
        return self.head(z).reshape(*lead, -1)
