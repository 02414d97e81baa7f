"""Pre-activation ResNet for CIFAR with a Y-shaped rotation head (Test-Time Training, Sun et al. 2020).

The network of the TTT paper (their ``ResNetCifar`` + ``head_on_layer2``): a 3x3 stem convolution, three stages
of pre-activation basic blocks with 16/32/64 channels (``(depth - 2) / 6`` blocks each; depth 26 -> 4), stride 2
at the start of stages 2 and 3, parameter-free shortcuts (average pooling + zero channels), a final
norm + ReLU + global average pool + linear classifier.  GroupNorm (8 groups) by default, BatchNorm as an option.

The network is split after stage 2:

```text
trunk = stem + stage1 + stage2                     (shared; what TTT adapts)
head = stage3 + norm + ReLU + pool + fc(classes)   (object recognition)
rotation = copy of stage3 + norm + ReLU + pool + fc(4)   (self-supervised: which of 0/90/180/270 degrees)
```

The self-supervised branch is one of `SSL_HEADS` (``ssl_head``): ``rotation`` (above), ``contrastive``
(a copy of stage 3 + norm + ReLU + pool + a 2-layer MLP projection to 128 dimensions, SimCLR's head) or
``reconstruction`` (a pixel decoder on the trunk's output: norm, ReLU, 3x3 conv, norm, ReLU, 1x1 conv to
``4 in_channels`` channels, pixel shuffle x2 -> an image of the input's size).  The branch's parameters are named
after it (``rotation.*``, ``contrastive.*``, ``reconstruction.*``);
[`register_ssl_head`][metalearn.nn.resnet_cifar.register_ssl_head] adds another.

Parameter names follow the split (``trunk.*``, ``head.*``, ``rotation.*``), so a name prefix selects what an
inner loop adapts ([`metalearn.functional.select`][metalearn.functional.select]).  Inputs are float images in [0, 1];
the per-channel
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


class PixelDecoder(nn.Module):
    """Trunk features (N, in_ch, H/2, W/2) -> an image (N, out_ch, H, W): norm, ReLU, 3x3 conv, norm, ReLU,
    1x1 conv to ``out_ch * scale**2`` channels, pixel shuffle by ``scale`` (the decoder of the reconstruction
    branch; no output activation: the loss compares it with pixels in [0, 1])."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, groups: int, scale: int = 2) -> None:
        super().__init__()
        self.norm1 = norm_layer(norm, in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, in_ch, groups)
        self.conv2 = nn.Conv2d(in_ch, out_ch * scale * scale, 1)
        self.scale = scale
        nn.init.normal_(self.conv1.weight, 0.0, math.sqrt(2.0 / (9 * in_ch)))

    def forward(self, z: Tensor) -> Tensor:
        r = self.conv1(F.relu(self.norm1(z)))
        return F.pixel_shuffle(self.conv2(F.relu(self.norm2(r))), self.scale)


def _rotation_branch(net: "ResNetCIFAR") -> nn.Module:
    rot = copy.deepcopy(net.head)          # its own stage 3, initialised as a copy of the main head's (TTT code)
    rot.fc = nn.Linear(rot.fc.in_features, 4)
    return rot


def _contrastive_branch(net: "ResNetCIFAR") -> nn.Module:
    c3 = net.head.fc.in_features
    branch = copy.deepcopy(net.head)
    branch.fc = nn.Sequential(nn.Linear(c3, c3), nn.ReLU(), nn.Linear(c3, 128))   # SimCLR projection head
    return branch


def _reconstruction_branch(net: "ResNetCIFAR") -> nn.Module:
    return PixelDecoder(32 * net.width, net.in_channels, net.norm, net.groups)


#: Self-supervised branches by name: ``build(net) -> nn.Module`` mapping the trunk's output
#: (N, 32 width, H/2, W/2) to what the task's loss takes (called after the rest of the network is built).
SSL_HEADS: dict = {"rotation": _rotation_branch, "contrastive": _contrastive_branch,
                   "reconstruction": _reconstruction_branch}
_RESERVED = ("trunk", "head", "ssl", "main", "both")


def register_ssl_head(name: str, build) -> None:
    """Make ``ResNetCIFAR(ssl_head=name)`` build its self-supervised branch with ``build``.

    Register it before a checkpoint of such a model is loaded.

    Args:
        name: The branch's name, an identifier; its parameters are named ``name.*``.
        build (Callable[[nn.Module], nn.Module]): ``build(net) -> nn.Module``; the module takes the trunk's output.

    Raises:
        ValueError: ``name`` is not an identifier, or a reserved name.
        TypeError: ``build`` is not callable.
    """
    if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED:
        raise ValueError(f"name: expected an identifier other than {list(_RESERVED)}, got {name!r}")
    if not callable(build):
        raise TypeError(f"build: expected a callable net -> nn.Module, got {type(build).__name__}")
    SSL_HEADS[name] = build


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
        rotation_head: add a self-supervised branch (by default the 4-way rotation head: its own copy of
            stage 3, initialised as a copy of the main head's, as in the TTT code); ``False`` is the
            object-recognition-only baseline.
        in_channels: image channels.
        ssl_head: which self-supervised branch (a name of `SSL_HEADS`; default ``"rotation"``);
            needs ``rotation_head=True``.

    ``forward(x, head="main")``: x (N, C, H, W) float in [0, 1], H and W multiples of 4 ->
    (N, classes) logits; ``head="ssl"`` -> the self-supervised branch's output (rotation: (N, 4) logits;
    contrastive: (N, 128) projections; reconstruction: (N, C, H, W) pixels); ``head="rotation"`` the same for
    a rotation model; ``head="both"`` -> (class logits, self-supervised output).

    Examples:
        >>> net = ResNetCIFAR(26, norm="gn")
        >>> net(torch.rand(2, 3, 32, 32)).shape, net(torch.rand(2, 3, 32, 32), head="rotation").shape
        (torch.Size([2, 10]), torch.Size([2, 4]))
    """

    def __init__(self, depth: int = 26, classes: int = 10, norm: str = "gn", groups: int = 8, width: int = 1,
                 rotation_head: bool = True, in_channels: int = 3, ssl_head: str | None = None) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth: expected 6n+2 >= 8 (26 for ResNet-26), got {depth}")
        for key, v in (("classes", classes), ("width", width), ("in_channels", in_channels), ("groups", groups)):
            if v < 1:
                raise ValueError(f"{key}: expected >= 1, got {v}")
        norm_layer(norm, 16 * width, groups)  # validates norm / groups early
        if ssl_head is not None and ssl_head not in SSL_HEADS:
            raise ValueError(f"ssl_head: expected one of {sorted(SSL_HEADS)}, got {ssl_head!r}")
        if ssl_head is not None and not rotation_head:
            raise ValueError(f"ssl_head: {ssl_head!r} needs rotation_head=True (False builds no self-supervised "
                             "branch)")
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
        self.ssl_head: str | None = (ssl_head or "rotation") if rotation_head else None
        self.rotation: nn.Module | None = None
        if self.ssl_head is not None:
            setattr(self, self.ssl_head, SSL_HEADS[self.ssl_head](self))   # registered as a submodule

    @property
    def has_rotation_head(self) -> bool:
        """True for a model whose self-supervised branch is the rotation head."""
        return self.ssl_head == "rotation"

    @property
    def has_ssl_head(self) -> bool:
        """True for a model with a self-supervised branch (any of `SSL_HEADS`)."""
        return self.ssl_head is not None

    @property
    def ssl_module(self) -> nn.Module:
        """The self-supervised branch (``ValueError`` for an object-recognition-only model)."""
        if self.ssl_head is None:
            raise ValueError("head: 'ssl' needs a self-supervised branch, but the model was built with "
                             "rotation_head=False (object-recognition only)")
        return getattr(self, self.ssl_head)

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
        if head in ("rotation", "both", "ssl"):
            if self.ssl_head is None:
                raise ValueError(f"head: {head!r} needs the rotation head, but the model was built with "
                                 "rotation_head=False (object-recognition only)")
            if head == "rotation" and self.ssl_head != "rotation":
                raise ValueError(f"head: 'rotation' needs the rotation head, but this model's self-supervised "
                                 f"branch is {self.ssl_head!r} (use head='ssl')")
            r = self.ssl_module(z)
            return (self.head(z), r) if head == "both" else r
        raise ValueError(f"head: expected 'main', 'ssl', 'rotation' or 'both', got {head!r}")

    def config(self) -> dict:
        """The constructor arguments (stored in checkpoints, to rebuild the model; ``ssl_head`` only when it is
        not the rotation head, so a rotation model's config is what it always was)."""
        cfg = {"depth": self.depth, "classes": self.classes, "norm": self.norm, "groups": self.groups,
               "width": self.width, "rotation_head": self.has_ssl_head, "in_channels": self.in_channels}
        if self.ssl_head not in (None, "rotation"):
            cfg["ssl_head"] = self.ssl_head
        return cfg

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())
