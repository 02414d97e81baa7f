"""What every learner provides: a loss on an episode for training, and logits for evaluation."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metalearn.types import Episode


class Learner(nn.Module):
    """Base class of episodic learners.

    ``loss(episode) -> (loss, logits)`` is what the trainer minimises (through ``backward``); ``predict(episode) -> logits`` is what
    the evaluator calls (query logits of shape ([B,] N*Q, N)).  Learners see only :class:`Episode` tensors,
    never a dataset.
    """

    def loss(self, episode: Episode) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Accumulate the gradient of ``loss(episode)`` into ``.grad``; returns (detached loss, logits).

        The trainer calls this; a learner may override it to back-propagate in chunks of tasks, bounding memory.
        """
        loss, logits = self.loss(episode)
        loss.backward()
        return loss.detach(), logits

    def predict(self, episode: Episode) -> Tensor:
        with torch.no_grad():
            return self.loss(episode)[1]
