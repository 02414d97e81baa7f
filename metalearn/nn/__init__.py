"""Backbones and layers."""
from metalearn.nn.conv4 import Conv4 as Conv4
from metalearn.nn.koch import KochNet as KochNet
from metalearn.nn.maml_conv4 import MamlConv4 as MamlConv4
from metalearn.nn.norm import BatchNorm2d as BatchNorm2d
from metalearn.nn.resnet_cifar import ResNetCIFAR as ResNetCIFAR
from metalearn.nn.ttt_layers import TTTLinear as TTTLinear
from metalearn.nn.ttt_layers import TTTMLP as TTTMLP

__all__ = ["BatchNorm2d", "Conv4", "KochNet", "MamlConv4", "ResNetCIFAR", "TTTLinear", "TTTMLP"]
