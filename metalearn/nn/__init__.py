"""Backbones and layers."""
from metalearn.nn.conv4 import Conv4 as Conv4
from metalearn.nn.koch import KochNet as KochNet
from metalearn.nn.maml_conv4 import MamlConv4 as MamlConv4
from metalearn.nn.norm import BatchNorm2d as BatchNorm2d

__all__ = ["BatchNorm2d", "Conv4", "KochNet", "MamlConv4"]
