"""Learners: one file per algorithm."""
from metalearn.learners.base import Learner as Learner
from metalearn.learners.maml import MAML as MAML
from metalearn.learners.protonet import ProtoNet as ProtoNet

__all__ = ["Learner", "MAML", "ProtoNet"]
