"""Prototypical Networks (Snell, Swersky & Zemel 2017).

A class is represented by the mean of its support embeddings (eq. 1); a query is classified by a softmax over
negative squared Euclidean distances to the prototypes (eq. 2); training minimises the query cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.learners.base import Learner
from metalearn.types import Episode


def prototypes(z: Tensor, y: Tensor, ways: int, check: bool = True) -> Tensor:
    """Class means of support embeddings.  z: ([B,] N*K, D), y: ([B,] N*K) in [0, ways) -> ([B,] ways, D).

    Snell et al. 2017, eq. 1.

    Args:
        z: ([B,] N*K, D) support embeddings.
        y: ([B,] N*K) int64 support labels in [0, ways).
        ways: N, the number of classes.
        check: Raise if a class has no support example; the check reads a value back from the device, so hot
            loops fed by [`EpisodeSampler`][metalearn.episodes.EpisodeSampler] turn it off.

    Returns:
        ([B,] ways, D) prototypes.

    Raises:
        ValueError: A class without a support example (with ``check``).

    Examples:
        >>> prototypes(torch.tensor([[0., 0.], [2., 0.], [0., 4.]]), torch.tensor([0, 0, 1]), ways=2)
        tensor([[1., 0.],
                [0., 4.]])
    """
    onehot = F.one_hot(y, ways).to(z.dtype)                       # ([B,] NK, N)
    counts = onehot.sum(dim=-2)                                    # ([B,] N)
    if check and bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0, -1])
        raise ValueError(f"support_y: class {missing} has no support example (ways={ways})")
    return (onehot.transpose(-1, -2) @ z) / counts[..., None]


def squared_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared distances.  a: ([B,] P, D), b: ([B,] R, D) -> ([B,] P, R)."""
    d = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2.0 * (a @ b.transpose(-1, -2))
    return d.clamp_min(0.0)


def protonet_logits(support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int, check: bool = True) -> Tensor:
    """Query logits = -||f(x) - c_k||^2.  ([B,] NK, D), ([B,] NK), ([B,] NQ, D) -> ([B,] NQ, ways).

    Args:
        support_z: ([B,] N*K, D) support embeddings.
        support_y: ([B,] N*K) support labels in [0, ways).
        query_z: ([B,] N*Q, D) query embeddings.
        ways: N, the number of classes.
        check: Raise if a class has no support example (see [`prototypes`][metalearn.learners.protonet.prototypes]).
    """
    return -squared_euclidean(query_z, prototypes(support_z, support_y, ways, check))


class ProtoNet(Learner):
    """ProtoNet learner around any embedding network ``encoder: (..., C, H, W) -> (..., D)``.

    The support and query images of all tasks go through the encoder in one call (one BatchNorm batch, as in
    Snell et al.'s code); the logits are minus the squared Euclidean distances to the prototypes.

    Args:
        encoder: The embedding network, e.g. [`Conv4`][metalearn.nn.conv4.Conv4].
        check_support: Check that every class has a support example (a host sync per episode; episodes from
            [`EpisodeSampler`][metalearn.episodes.EpisodeSampler] always have them).

    Examples:
        ```python
        from metalearn.nn import Conv4
        learner = ProtoNet(Conv4(in_channels=1))
        loss, logits = learner.loss(episode)   # logits: ([B,] N*Q, N)
        ```
    """

    per_image_embedding = True

    def __init__(self, encoder: nn.Module, check_support: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.check_support = check_support  # False skips the missing-class check (a host sync per episode)

    def forward(self, episode: Episode) -> Tensor:
        sx, qx = episode.support_x, episode.query_x
        if sx.shape[-3:] != qx.shape[-3:]:
            raise ValueError(f"support_x and query_x image shapes differ: {tuple(sx.shape[-3:])} vs "
                             f"{tuple(qx.shape[-3:])}")
        # one encoder call for support and query of all tasks (one BatchNorm batch, as in Snell's code)
        n_s = sx.shape[-4]
        z = self.encode(torch.cat([sx, qx], dim=-4))               # ([B,] NK+NQ, D)
        return self.logits_from_embeddings(z[..., :n_s, :], episode.support_y, z[..., n_s:, :], episode.ways)

    def logits_from_embeddings(self, support_z: Tensor, support_y: Tensor, query_z: Tensor,
                               ways: int) -> Tensor:
        """Minus the squared distances of the query embeddings to the class means of the support ones."""
        return protonet_logits(support_z, support_y, query_z, ways, self.check_support)

    def loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Query cross-entropy (mean over every query of every task) and the logits ([B,] N*Q, N)."""
        logits = self(episode)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), episode.query_y.reshape(-1))
        return loss, logits
