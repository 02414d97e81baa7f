"""Datasets: class-indexed uint8 storage and the loaders that fill it."""
from metalearn.data.storage import ClassImages as ClassImages

__all__ = ["ClassImages"]
