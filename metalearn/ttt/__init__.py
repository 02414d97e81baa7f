"""Test-time adaptation: Test-Time Training (standard, batched per image, online) with a pluggable
self-supervised task (rotation, contrastive, masked reconstruction), Tent, norm adaptation, and joint training of
the Y-shaped ResNet.  See docs/ttt.md and docs/ttt_tasks.md."""
from metalearn.ttt.adapt import TTTResult as TTTResult
from metalearn.ttt.adapt import ttt as ttt
from metalearn.ttt.adapt import ttt_loop as ttt_loop
from metalearn.ttt.adapt import ttt_online as ttt_online
from metalearn.ttt.rotation import all_rotations as all_rotations
from metalearn.ttt.rotation import crop_flip as crop_flip
from metalearn.ttt.rotation import rotate as rotate
from metalearn.ttt.ssl import SSL_TASKS as SSL_TASKS
from metalearn.ttt.ssl import ContrastiveTask as ContrastiveTask
from metalearn.ttt.ssl import MaskedReconstructionTask as MaskedReconstructionTask
from metalearn.ttt.ssl import RotationTask as RotationTask
from metalearn.ttt.ssl import SelfSupervisedTask as SelfSupervisedTask
from metalearn.ttt.ssl import make_task as make_task
from metalearn.ttt.ssl import nt_xent as nt_xent
from metalearn.ttt.tent import TentResult as TentResult
from metalearn.ttt.tent import norm_adapt as norm_adapt
from metalearn.ttt.tent import norm_affine_names as norm_affine_names
from metalearn.ttt.tent import predict as predict
from metalearn.ttt.tent import tent as tent
from metalearn.ttt.train import JointTrainConfig as JointTrainConfig
from metalearn.ttt.train import joint_loss as joint_loss
from metalearn.ttt.train import load_model as load_model
from metalearn.ttt.train import train_joint as train_joint

__all__ = ["ContrastiveTask", "JointTrainConfig", "MaskedReconstructionTask", "RotationTask", "SSL_TASKS",
           "SelfSupervisedTask", "TTTResult", "TentResult", "all_rotations", "crop_flip", "joint_loss", "load_model",
           "make_task", "norm_adapt", "norm_affine_names", "nt_xent", "predict", "rotate", "tent", "train_joint",
           "ttt", "ttt_loop", "ttt_online"]
