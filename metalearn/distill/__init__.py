"""Dataset distillation (Wang, Zhu, Torralba & Efros 2018): learn a few synthetic training images and the step
sizes of the gradient-descent steps that train a network on them, by back-propagating through those steps.

* ``metalearn.distill.core``: the math (``train_on_distilled``, ``distill_loss``, ``step_lrs``), pure functions.
* ``metalearn.distill.run``: the outer loop with checkpoints and exact resume, evaluation, the baselines
  (random real images, k-means centres), the PNG grid.
* ``metalearn.distill.lenet`` / ``metalearn.distill.alexcifarnet``: the networks (LeNet for MNIST or CIFAR-10,
  AlexCifarNet for CIFAR-10) and their seeded initialisations.
* ``metalearn distill --config tasks/distill/mnist_fixed_10.yaml --out DIR``: the command (``dataset: mnist`` or
  ``cifar10``).
"""
from metalearn.distill.alexcifarnet import AlexCifarNet as AlexCifarNet
from metalearn.distill.config import DistillConfig as DistillConfig
from metalearn.distill.config import load_distill_config as load_distill_config
from metalearn.distill.core import distill_loss as distill_loss
from metalearn.distill.core import distilled_labels as distilled_labels
from metalearn.distill.core import step_lrs as step_lrs
from metalearn.distill.core import train_on_distilled as train_on_distilled
from metalearn.distill.lenet import LeNet as LeNet
from metalearn.distill.lenet import init_params as init_params
from metalearn.distill.run import baselines as baselines
from metalearn.distill.run import distill as distill

__all__ = ["AlexCifarNet", "DistillConfig", "LeNet", "baselines", "distill", "distill_loss", "distilled_labels",
           "init_params", "load_distill_config", "step_lrs", "train_on_distilled"]
