"""Non-learned reference classifiers for episodes."""
from __future__ import annotations

import torch
from torch import Tensor

from metalearn.types import Episode


def nearest_neighbour_logits(episode: Episode) -> Tensor:
    """1-nearest-neighbour on raw pixels: each query takes the label of its closest support image (Euclidean).

    Returned as logits ([B,] NQ, N): minus the distance to the closest support image of each class.
    """
    s = episode.support_x.flatten(-3)                 # ([B,] NK, P)
    q = episode.query_x.flatten(-3)                   # ([B,] NQ, P)
    d = torch.cdist(q, s)                             # ([B,] NQ, NK)
    onehot = torch.nn.functional.one_hot(episode.support_y, episode.ways).bool()   # ([B,] NK, N)
    big = torch.finfo(d.dtype).max
    masked = torch.where(onehot.unsqueeze(-3), d.unsqueeze(-1), torch.full_like(d.unsqueeze(-1), big))
    return -masked.amin(dim=-2)                       # ([B,] NQ, N)
