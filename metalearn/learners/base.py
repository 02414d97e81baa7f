"""What every learner provides: a loss on an episode for training, and logits for evaluation."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metalearn.types import Episode


class Learner(nn.Module):
    """Base class of episodic learners.

    ``loss(episode) -> (loss, logits)`` is what the trainer minimises (through
    [`backward`][metalearn.learners.base.Learner.backward]); ``predict(episode) -> logits`` is what the evaluator
    calls (query logits of shape ([B,] N*Q, N)).  Learners see only [`Episode`][metalearn.types.Episode] tensors,
    never a dataset.

    Attributes:
        precision: ``"fp32"`` or ``"bf16"``: the precision [`encode`][metalearn.learners.base.Learner.encode] runs
            the encoder in (the trainer and evaluator set it from ``train.precision``; embeddings always come
            back fp32).
        inference_without_grad: False for learners whose prediction needs gradients (an inner loop): the
            evaluator then neither folds BatchNorm nor runs under ``torch.inference_mode``.
        bf16_safe: Whether ``precision: auto`` may pick bf16 for this learner (measured to keep accuracy).
    """

    #: ``"fp32"`` or ``"bf16"``: the precision `encode` runs the encoder in (the trainer and evaluator
    #: set it from ``train.precision``; embeddings always come back fp32).
    precision: str = "fp32"
    #: learners whose prediction needs gradients (an inner loop) set this False: the evaluator then neither
    #: folds BatchNorm nor runs under ``torch.inference_mode``.
    inference_without_grad: bool = True
    #: whether ``precision: auto`` may pick bf16 for this learner (measured to keep accuracy)
    bf16_safe: bool = True
    #: set by the trainer in a distributed step: this process holds tasks ``lo:hi`` of a meta-batch of ``total``
    #: (``(lo, hi, total)``; None in one process).  A learner that draws random numbers per task draws them for
    #: the whole meta-batch and keeps its share, so that the draws do not depend on the number of processes.
    task_shard: tuple[int, int, int] | None = None
    #: True for learners whose ``predict`` is ``logits_from_embeddings`` of per-image embeddings
    #: (``encode`` of each support and query image): the evaluator may then embed every distinct test image
    #: once and reuse it across episodes (it still checks on the model that one image's embedding does not
    #: depend on the rest of the batch).
    per_image_embedding: bool = False

    def encode(self, x: Tensor) -> Tensor:
        """``self.encoder(x)`` under the learner's precision: bf16 autocast for the convolutions, the embedding
        returned in fp32 so distances, softmax and losses stay fp32."""
        if self.precision == "fp32":
            return self.encoder(x)
        from metalearn.engine import autocast
        with autocast(x.device, self.precision):
            z = self.encoder(x)
        return z.float()

    def logits_from_embeddings(self, support_z: Tensor, support_y: Tensor, query_z: Tensor,
                               ways: int) -> Tensor:
        """Query logits ([B,] N*Q, N) from the ``encode`` outputs of the support ([B,] N*K, D) and query
        ([B,] N*Q, D) images, as ``predict`` computes them in eval mode (learners with
        ``per_image_embedding`` implement it).

        Args:
            support_z: ([B,] N*K, D) support embeddings.
            support_y: ([B,] N*K) support labels in [0, ways).
            query_z: ([B,] N*Q, D) query embeddings.
            ways: N, the number of classes.
        """
        raise NotImplementedError(f"{type(self).__name__} does not predict from per-image embeddings")

    def loss(self, episode: Episode) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """The training loss on ``episode`` and the query logits ([B,] N*Q, N) it was computed from."""
        raise NotImplementedError

    def backward(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Accumulate the gradient of ``loss(episode)`` into ``.grad``; returns (detached loss, logits).

        The trainer calls this; a learner may override it to back-propagate in chunks of tasks, bounding memory.
        """
        loss, logits = self.loss(episode)
        loss.backward()
        return loss.detach(), logits

    def predict(self, episode: Episode) -> Tensor:
        """Query logits ([B,] N*Q, N) for evaluation, without gradients (learners that adapt override it)."""
        with torch.no_grad():
            return self.loss(episode)[1]
