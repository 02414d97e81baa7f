"""Backbones."""
from metalearn.nn.conv4 import Conv4 as Conv4

__all__ = ["Conv4"]
