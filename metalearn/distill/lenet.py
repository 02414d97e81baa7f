"""LeNet (LeCun et al. 1998) as used by dataset distillation (Wang et al. 2018), and seeded initialisations.

conv 5x5 (6) -> ReLU -> max-pool 2 -> conv 5x5 (16) -> ReLU -> max-pool 2 -> fc 120 -> ReLU -> fc 84 -> ReLU ->
fc classes. On 28x28 inputs (MNIST) the first convolution pads by 2 so that both input sizes reach 16x5x5
features; on 32x32 (CIFAR-10) it does not pad.

`init_params` draws the initialisations of every distillation network (LeNet and
[`AlexCifarNet`][metalearn.distill.alexcifarnet.AlexCifarNet]): it handles Conv2d and Linear layers and skips
parameter-free ones (ReLU, pooling, LocalResponseNorm).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.checks import ArgumentError, check_choice, check_int
from metalearn.types import Params

#: initialisation schemes of `init_params`
INITS = ("xavier", "default")
#: the layers `init_params` draws (parameter-free layers such as pooling or LocalResponseNorm are skipped)
INIT_LAYERS = (nn.Conv2d, nn.Linear)


class LeNet(nn.Module):
    """LeNet-5 for ``channels`` x ``size`` x ``size`` images (``size`` 28 or 32).  x: (N, C, H, W) -> (N, classes)."""

    def __init__(self, channels: int = 1, size: int = 28, classes: int = 10) -> None:
        super().__init__()
        channels = check_int("channels", channels, 1)
        classes = check_int("classes", classes, 2)
        if size not in (28, 32):
            raise ArgumentError(f"size: expected 28 or 32 (LeNet's input sizes), got {size!r}")
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2 if size == 28 else 0)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)                                    # (N, 400)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def init_params(model: nn.Module, scheme: str = "xavier", generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Params:
    """Fresh parameters for ``model`` (a new dict; the module's own tensors are not touched).

    Args:
        model: The network whose parameters are drawn.
        scheme: ``xavier``: weights ``N(0, 2 / (fan_in + fan_out))`` (Glorot normal, gain 1), biases 0 (the
            initialisation of the dataset-distillation reference code); ``default``: PyTorch's default for
            Linear/Conv: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
        generator: The draws come from it, so that a run is reproducible and resumable.
        dtype: The dtype of the parameters.
        device: Their device.

    Returns:
        Parameter name -> tensor, for every parameter of ``model``, in its order.

    Raises:
        ArgumentError: An unknown ``scheme``, or a layer with parameters that is not a Conv2d or Linear (a
            batch norm, say).
    """
    scheme = check_choice("scheme", scheme, INITS)
    out: Params = {}
    for prefix, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue                                  # ReLU, pooling, LocalResponseNorm, containers
        if not isinstance(module, INIT_LAYERS):
            raise ArgumentError(f"model: {prefix or 'the model'} is a {type(module).__name__} with parameters; "
                                "init_params draws Conv/Linear layers only")
        weight = module.weight
        for local, p in own:                          # registration order: weight, then bias
            name = f"{prefix}.{local}" if prefix else local
            out[name] = _draw(tuple(p.shape), tuple(weight.shape), local == "bias", scheme, generator, dtype,
                              device)
    return out


def _draw(shape: tuple, weight_shape: tuple, bias: bool, scheme: str, generator: torch.Generator | None,
          dtype: torch.dtype, device: str | torch.device) -> Tensor:
    """One tensor of `init_params` (drawn in float64, then cast).

    Args:
        shape: The tensor's shape.
        weight_shape: The shape of its layer's weight (the fans come from it).
        bias: Whether the tensor is the layer's bias.
        scheme: ``xavier`` or ``default``.
        generator: The draws come from it.
        dtype: The result's dtype.
        device: The result's device.

    Returns:
        The drawn tensor.
    """
    receptive = math.prod(weight_shape[2:]) if len(weight_shape) > 2 else 1
    fan_in, fan_out = weight_shape[1] * receptive, weight_shape[0] * receptive
    if scheme == "xavier":
        if bias:
            return torch.zeros(shape, dtype=dtype, device=device)
        std = math.sqrt(2.0 / (fan_in + fan_out))
        t = torch.randn(shape, generator=generator, dtype=torch.float64) * std
    else:
        bound = 1.0 / math.sqrt(fan_in)
        t = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return t.to(dtype=dtype, device=device)
