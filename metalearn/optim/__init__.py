"""Learned optimizers: the coordinatewise LSTM optimizer of Andrychowicz et al. 2016, optimisee families,
meta-training, and tuned hand-designed baselines."""
from metalearn.optim.lstm import LearnedOptimizer as LearnedOptimizer
from metalearn.optim.lstm import LSTMOptimizer as LSTMOptimizer
from metalearn.optim.lstm import LSTMOptimizerConfig as LSTMOptimizerConfig
from metalearn.optim.lstm import LSTMState as LSTMState
from metalearn.optim.lstm import apply_updates as apply_updates
from metalearn.optim.lstm import preprocess_gradients as preprocess_gradients
from metalearn.optim.meta import BASELINES as BASELINES
from metalearn.optim.meta import MetaTrainConfig as MetaTrainConfig
from metalearn.optim.meta import MetaTrainResult as MetaTrainResult
from metalearn.optim.meta import meta_train as meta_train
from metalearn.optim.meta import run_optimizer as run_optimizer
from metalearn.optim.meta import tune_lr as tune_lr
from metalearn.optim.meta import unroll as unroll
from metalearn.optim.optimisees import MLP as MLP
from metalearn.optim.optimisees import MLPFamily as MLPFamily
from metalearn.optim.optimisees import OptimiseeFamily as OptimiseeFamily
from metalearn.optim.optimisees import Problem as Problem
from metalearn.optim.optimisees import ProblemBatch as ProblemBatch
from metalearn.optim.optimisees import QuadraticFamily as QuadraticFamily
from metalearn.optim.optimisees import sample_problems as sample_problems

__all__ = ["BASELINES", "LSTMOptimizer", "LSTMOptimizerConfig", "LSTMState", "LearnedOptimizer", "MLP",
           "MLPFamily", "MetaTrainConfig", "MetaTrainResult", "OptimiseeFamily", "Problem", "ProblemBatch",
           "QuadraticFamily", "apply_updates", "meta_train", "preprocess_gradients", "run_optimizer",
           "sample_problems", "tune_lr", "unroll"]
