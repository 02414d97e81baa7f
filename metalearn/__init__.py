"""metalearn: meta-learning and test-time adaptation on PyTorch."""
__version__ = "0.1.0"
