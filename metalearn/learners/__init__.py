"""Learners: one file per algorithm."""
from metalearn.learners.base import Learner as Learner
from metalearn.learners.maml import MAML as MAML
from metalearn.learners.matchnet import MatchingNet as MatchingNet
from metalearn.learners.protonet import ProtoNet as ProtoNet
from metalearn.learners.siamese import Siamese as Siamese

__all__ = ["Learner", "MAML", "MatchingNet", "ProtoNet", "Siamese"]
