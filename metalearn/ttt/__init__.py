"""Test-time adaptation: Test-Time Training (standard, batched per image, online), Tent, norm adaptation,
and joint training of the Y-shaped ResNet.  See docs/ttt.md."""
from metalearn.ttt.adapt import TTTResult as TTTResult
from metalearn.ttt.adapt import ttt as ttt
from metalearn.ttt.adapt import ttt_loop as ttt_loop
from metalearn.ttt.adapt import ttt_online as ttt_online
from metalearn.ttt.rotation import all_rotations as all_rotations
from metalearn.ttt.rotation import crop_flip as crop_flip
from metalearn.ttt.rotation import rotate as rotate
from metalearn.ttt.tent import TentResult as TentResult
from metalearn.ttt.tent import norm_adapt as norm_adapt
from metalearn.ttt.tent import norm_affine_names as norm_affine_names
from metalearn.ttt.tent import predict as predict
from metalearn.ttt.tent import tent as tent
from metalearn.ttt.train import JointTrainConfig as JointTrainConfig
from metalearn.ttt.train import joint_loss as joint_loss
from metalearn.ttt.train import load_model as load_model
from metalearn.ttt.train import train_joint as train_joint

__all__ = ["JointTrainConfig", "TTTResult", "TentResult", "all_rotations", "crop_flip", "joint_loss", "load_model",
           "norm_adapt", "norm_affine_names", "predict", "rotate", "tent", "train_joint", "ttt", "ttt_loop",
           "ttt_online"]
