"""metalearn: meta-learning and test-time adaptation on PyTorch.

The flat public API; everything else is reachable through its submodule.
"""
from metalearn.data.storage import ClassImages as ClassImages
from metalearn.episodes import EpisodeSampler as EpisodeSampler
from metalearn.learners.base import Learner as Learner
from metalearn.learners.protonet import ProtoNet as ProtoNet
from metalearn.learners.protonet import prototypes as prototypes
from metalearn.nn.conv4 import Conv4 as Conv4
from metalearn.train.evaluator import EvalResult as EvalResult
from metalearn.train.evaluator import evaluate as evaluate
from metalearn.train.trainer import train as train
from metalearn.types import Episode as Episode
from metalearn.types import Params as Params

__version__ = "0.1.0"

__all__ = ["ClassImages", "Conv4", "Episode", "EpisodeSampler", "EvalResult", "Learner", "Params", "ProtoNet",
           "evaluate", "prototypes", "train", "__version__"]
