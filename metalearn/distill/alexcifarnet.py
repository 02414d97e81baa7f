"""AlexCifarNet: the CIFAR-10 network of dataset distillation (Wang et al. 2018), a small AlexNet-style network
after Krizhevsky's ``cuda-convnet`` CIFAR-10 model.

conv 5x5 3->64 (pad 2) -> ReLU -> max-pool 3 (stride 2, pad 1) -> LRN -> conv 5x5 64->64 (pad 2) -> ReLU -> LRN
-> max-pool 3 (stride 2, pad 1) -> fc 4096->384 -> ReLU -> fc 384->192 -> ReLU -> fc 192->classes, with
``LocalResponseNorm(size 4, alpha 0.001 / 9, beta 0.75, k 1)``. On 32x32 inputs each pooling halves the side,
so the features are 64 x 8 x 8 = 4096. No batch norm and no buffers: the network is a function of its
parameters only, as the functional inner loop of `metalearn.distill.core` needs; its convolutions and linear
layers are initialised by [`init_params`][metalearn.distill.lenet.init_params] like LeNet's.
"""
from __future__ import annotations

from torch import Tensor, nn

from metalearn.checks import ArgumentError, check_int

#: ``LocalResponseNorm`` settings of both normalisation layers
LRN = {"size": 4, "alpha": 0.001 / 9.0, "beta": 0.75, "k": 1.0}


class AlexCifarNet(nn.Module):
    """The dataset-distillation CIFAR-10 network for 3 x 32 x 32 images.  x: (N, 3, 32, 32) -> (N, classes).

    Args:
        channels: Input channels (3 for CIFAR-10).
        size: Input side; only 32 (the 4096 features of the first linear layer assume it).
        classes: Output classes.

    Raises:
        ArgumentError: ``size`` other than 32, or a bad ``channels`` / ``classes``.
    """

    #: features entering the classifier: 64 channels x 8 x 8 after the two stride-2 poolings
    FEATURES = 64 * 8 * 8

    def __init__(self, channels: int = 3, size: int = 32, classes: int = 10) -> None:
        super().__init__()
        channels = check_int("channels", channels, 1)
        classes = check_int("classes", classes, 2)
        if size != 32:
            raise ArgumentError(f"size: expected 32 (AlexCifarNet's input size), got {size!r}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, kernel_size=5, stride=1, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.LocalResponseNorm(**LRN),
            nn.Conv2d(64, 64, kernel_size=5, stride=1, padding=2),
            nn.ReLU(),
            nn.LocalResponseNorm(**LRN),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.classifier = nn.Sequential(
            nn.Linear(self.FEATURES, 384),
            nn.ReLU(),
            nn.Linear(384, 192),
            nn.ReLU(),
            nn.Linear(192, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))          # (N, 4096) -> (N, classes)
