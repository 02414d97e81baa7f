"""Pre-activation ResNet for CIFAR with a Y-shaped rotation head (Test-Time Training, Sun et al. 2020).

The network of the TTT paper (their ``ResNetCifar`` + ``head_on_layer2``): a 3x3 stem convolution, three stages
of pre-activation basic blocks with 16/32/64 channels (``(depth - 2) / 6`` blocks each; depth 26 -> 4), stride 2
at the start of stages 2 and 3, parameter-free shortcuts (average pooling + zero channels), a final
norm + ReLU + global average pool + linear classifier.  GroupNorm (8 groups) by default, BatchNorm as an option.

The network is split after stage 2::

    trunk = stem + stage1 + stage2                     (shared; what TTT adapts)
    head = stage3 + norm + ReLU + pool + fc(classes)   (object recognition)
    rotation = copy of stage3 + norm + ReLU + pool + fc(4)   (self-supervised: which of 0/90/180/270 degrees)

Parameter names follow the split (``trunk.*``, ``head.*``, ``rotation.*``), so a name prefix selects what an
inner loop adapts (:func:`metalearn.functional.select`).  Inputs are float images in [0, 1]; the per-channel
normalisation is part of the model (no buffer, so it never travels in a checkpoint or a vmap).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Per-channel mean and std the inputs are normalised with (the ImageNet values; the released TTT code uses 0.5 / 0.5
#: for every channel: a fixed affine map of the input, kept as it is so that trained checkpoints stay valid).
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


def norm_layer(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """``"gn"``: ``nn.GroupNorm(groups, channels)``; ``"bn"``: ``nn.BatchNorm2d(channels)`` (running statistics)."""
    if kind == "gn":
        if channels % groups:
            raise ValueError(f"groups: {channels} channels are not divisible into {groups} groups")
        return nn.GroupNorm(groups, channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm: expected 'gn' or 'bn', got {kind!r}")


class Shortcut(nn.Module):
    """Parameter-free shortcut: ``stride`` x ``stride`` average pooling, then zero channels up to ``out_ch``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"out_ch: expected >= in_ch={in_ch}, got {out_ch}")
        self.extra, self.stride = out_ch - in_ch, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        if self.extra:
            x = torch.cat([x, x.new_zeros(x.shape[0], self.extra, *x.shape[2:])], 1)
        return x


class PreActBlock(nn.Module):
    """``x + conv(relu(norm(conv(relu(norm(x))))))``, the shortcut parameter-free when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, groups: int) -> None:
        super().__init__()
        self.norm1 = norm_layer(norm, in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm2 = norm_layer(norm, out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = Shortcut(in_ch, out_ch, stride) if (stride != 1 or in_ch != out_ch) else None

    def forward(self, x: Tensor) -> Tensor:
        r = self.conv1(F.relu(self.norm1(x)))
        r = self.conv2(F.relu(self.norm2(r)))
        return (x if self.shortcut is None else self.shortcut(x)) + r


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int, norm: str, groups: int) -> nn.Sequential:
    return nn.Sequential(*[PreActBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, norm, groups)
                           for i in range(blocks)])


class ResNetCIFAR(nn.Module):
    """ResNet-``depth`` (pre-activation, 16/32/64 x ``width`` channels) with an optional rotation head.

    Args:
        depth: 6 n + 2 (26 in the TTT paper: 4 blocks per stage; 8 gives one block per stage, for tests).
        classes: outputs of the object-recognition head.
        norm: ``"gn"`` (GroupNorm, ``groups`` groups; the paper's main model) or ``"bn"`` (BatchNorm2d).
        groups: GroupNorm groups.
        width: channel multiplier.
        rotation_head: add the 4-way rotation head (its own copy of stage 3, initialised as a copy of the
            main head's, as in the TTT code); ``False`` is the object-recognition-only baseline.
        in_channels: image channels.

    ``forward(x, head="main")``: x (N, C, H, W) float in [0, 1], H and W multiples of 4 ->
    (N, classes) logits; ``head="rotation"`` -> (N, 4); ``head="both"`` -> (class logits, rotation logits).

    Example:
        >>> net = ResNetCIFAR(26, norm="gn")
        >>> net(torch.rand(2, 3, 32, 32)).shape, net(torch.rand(2, 3, 32, 32), head="rotation").shape
        (torch.Size([2, 10]), torch.Size([2, 4]))
    """

    def __init__(self, depth: int = 26, classes: int = 10, norm: str = "gn", groups: int = 8, width: int = 1,
                 rotation_head: bool = True, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth: expected 6n+2 >= 8 (26 for ResNet-26), got {depth}")
        for key, v in (("classes", classes), ("width", width), ("in_channels", in_channels), ("groups", groups)):
            if v < 1:
                raise ValueError(f"{key}: expected >= 1, got {v}")
        norm_layer(norm, 16 * width, groups)  # validates norm / groups early
        n = (depth - 2) // 6
        c1, c2, c3 = 16 * width, 32 * width, 64 * width
        self.depth, self.norm, self.groups, self.width = depth, norm, groups, width
        self.classes, self.in_channels = classes, in_channels
        self.trunk = nn.Sequential()
        self.trunk.add_module("stem", nn.Conv2d(in_channels, c1, 3, 1, 1, bias=False))
        self.trunk.add_module("stage1", _stage(c1, c1, n, 1, norm, groups))
        self.trunk.add_module("stage2", _stage(c1, c2, n, 2, norm, groups))
        self.head = nn.Sequential()
        self.head.add_module("stage3", _stage(c2, c3, n, 2, norm, groups))
        self.head.add_module("norm", norm_layer(norm, c3, groups))
        self.head.add_module("relu", nn.ReLU())
        self.head.add_module("pool", nn.AdaptiveAvgPool2d(1))
        self.head.add_module("flatten", nn.Flatten())
        self.head.add_module("fc", nn.Linear(c3, classes))
        for m in self.modules():  # He init of the TTT code (fan-out), unit/zero norm affine
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.rotation: nn.Sequential | None = None
        if rotation_head:
            rot = copy.deepcopy(self.head)
            rot.fc = nn.Linear(c3, 4)
            self.rotation = rot

    @property
    def has_rotation_head(self) -> bool:
        return self.rotation is not None

    def check_input(self, x: Tensor, what: str = "x") -> None:
        """Raise ``ValueError`` naming ``what`` unless x is float (N, in_channels, H, W) with H, W multiples of 4."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{what}: expected images (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[-1] % 4 or x.shape[-2] % 4 or min(x.shape[-2:]) < 4:
            raise ValueError(f"{what}: height and width must be multiples of 4 (two stride-2 stages), "
                             f"got {tuple(x.shape[-2:])}")
        if not x.is_floating_point():
            raise ValueError(f"{what}: expected float images in [0, 1], got {x.dtype} (divide uint8 by 255)")

    def normalise(self, x: Tensor) -> Tensor:
        mean = torch.tensor(CIFAR_MEAN[: x.shape[1]] if x.shape[1] == 3 else (0.5,) * x.shape[1],
                            dtype=x.dtype, device=x.device)
        std = torch.tensor(CIFAR_STD[: x.shape[1]] if x.shape[1] == 3 else (0.5,) * x.shape[1],
                           dtype=x.dtype, device=x.device)
        return (x - mean[:, None, None]) / std[:, None, None]

    def features(self, x: Tensor) -> Tensor:
        """The shared trunk's output (N, 32 width, H/2, W/2)."""
        self.check_input(x)
        return self.trunk(self.normalise(x))

    def forward(self, x: Tensor, head: str = "main"):
        z = self.features(x)
        if head == "main":
            return self.head(z)
        if head in ("rotation", "both"):
            if self.rotation is None:
                raise ValueError(f"head: {head!r} needs the rotation head, but the model was built with "
                                 "rotation_head=False (object-recognition only)")
            r = self.rotation(z)
            return (self.head(z), r) if head == "both" else r
        raise ValueError(f"head: expected 'main', 'rotation' or 'both', got {head!r}")

    def config(self) -> dict:
        """The constructor arguments (stored in checkpoints, to rebuild the model)."""
        return {"depth": self.depth, "classes": self.classes, "norm": self.norm, "groups": self.groups,
                "width": self.width, "rotation_head": self.has_rotation_head, "in_channels": self.in_channels}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())
