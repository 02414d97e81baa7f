"""metalearn: meta-learning and test-time adaptation on PyTorch.

The flat public API; everything else is reachable through its submodule (test-time adaptation:
``metalearn.ttt``; torchmeta-style helpers: ``metalearn.data.helpers``).
"""
import os as _os
import sys as _sys

if "torch" not in _sys.modules:   # OpenMP reads its environment when torch loads (metalearn._omp)
    from metalearn._omp import omp_env_defaults as _omp_env_defaults
    _omp_env_defaults()
from metalearn.config import ConfigError as ConfigError
from metalearn.config import DataConfig as DataConfig
from metalearn.config import EvalConfig as EvalConfig
from metalearn.config import MamlConfig as MamlConfig
from metalearn.config import MatchnetConfig as MatchnetConfig
from metalearn.config import ModelConfig as ModelConfig
from metalearn.config import SiameseConfig as SiameseConfig
from metalearn.config import TaskConfig as TaskConfig
from metalearn.config import TrainConfig as TrainConfig
from metalearn.config import load_config as load_config
from metalearn.data.cifar10 import load_cifar10 as load_cifar10
from metalearn.data.miniimagenet import load_miniimagenet as load_miniimagenet
from metalearn.data.omniglot import load_omniglot as load_omniglot
from metalearn.data.storage import ClassImages as ClassImages
from metalearn.episodes import EpisodeSampler as EpisodeSampler
from metalearn.inner import UpdateRule as UpdateRule
from metalearn.inner import adapt as adapt
from metalearn.inner import meta_sgd as meta_sgd
from metalearn.inner import sgd as sgd
from metalearn.learners.base import Learner as Learner
from metalearn.learners.maml import MAML as MAML
from metalearn.learners.matchnet import MatchingNet as MatchingNet
from metalearn.learners.protonet import ProtoNet as ProtoNet
from metalearn.learners.protonet import prototypes as prototypes
from metalearn.learners.siamese import Siamese as Siamese
from metalearn.optim import LearnedOptimizer as LearnedOptimizer
from metalearn.optim import LSTMOptimizer as LSTMOptimizer
from metalearn.optim import LSTMOptimizerConfig as LSTMOptimizerConfig
from metalearn.optim import MetaTrainConfig as MetaTrainConfig
from metalearn.optim import MLPFamily as MLPFamily
from metalearn.optim import QuadraticFamily as QuadraticFamily
from metalearn.optim import apply_updates as apply_updates
from metalearn.optim import meta_train as meta_train
from metalearn.nn.conv4 import Conv4 as Conv4
from metalearn.nn.koch import KochNet as KochNet
from metalearn.nn.maml_conv4 import MamlConv4 as MamlConv4
from metalearn.nn.resnet_cifar import ResNetCIFAR as ResNetCIFAR
from metalearn.train.evaluator import EvalResult as EvalResult
from metalearn.train.evaluator import evaluate as evaluate
from metalearn.train.trainer import train as train
from metalearn.types import Episode as Episode
from metalearn.types import Params as Params
from metalearn.wrapper import Adaptable as Adaptable
from metalearn.wrapper import Adapted as Adapted
from metalearn.zoo import pretrained as pretrained

__version__ = "0.1.0"

__all__ = ["Adaptable", "Adapted", "ClassImages", "Conv4", "MAML", "MamlConv4", "UpdateRule", "adapt", "meta_sgd", "sgd", "Episode", "EpisodeSampler", "EvalResult", "Learner", "Params", "ProtoNet",
           "evaluate", "prototypes", "train", "__version__",
           "LSTMOptimizer", "LSTMOptimizerConfig", "LearnedOptimizer", "MLPFamily", "MetaTrainConfig",
           "QuadraticFamily", "apply_updates", "meta_train",
           "MatchingNet", "Siamese", "KochNet", "ResNetCIFAR",
           "ConfigError", "DataConfig", "EvalConfig", "MamlConfig", "MatchnetConfig", "ModelConfig",
           "SiameseConfig", "TaskConfig", "TrainConfig", "load_config",
           "load_cifar10", "load_miniimagenet", "load_omniglot", "pretrained"]
