"""Siamese networks for one-shot recognition (Koch, Zemel & Salakhutdinov 2015).

A twin embedding network phi and a weighted-L1 head give the probability that two images show the same class:

    p(same | x1, x2) = sigmoid( sum_j alpha_j |phi(x1)_j - phi(x2)_j| + b )              (Koch eq. 1-2)

Training is verification: binary cross-entropy on balanced same/different pairs, with random affine
distortions of the training images ([`metalearn.augment`][metalearn.augment]).  N-way K-shot classification scores every
query against every support image and picks the class with the highest mean p(same) over its K support
images (K = 1: Koch's one-shot rule, the support image that scores highest).

Pairs from an episode: the learner pools the episode's support and query images (M = N*(K+Q) images, labels
known), embeds each (distorted) image once and scores all M(M-1)/2 unordered pairs.  Same-class and
different-class pairs get equal total weight in the BCE (each same pair 1/(2 n_same), each different pair
1/(2 n_diff)): the expected loss of Koch's balanced pair sampling, with every pair of the episode used.
For Koch's pure pair stream over a dataset see [`metalearn.data.pairs.PairSampler`][metalearn.data.pairs.PairSampler].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.augment import KOCH, AffineRanges, affine_matrices, random_affine, warp
from metalearn.learners.base import Learner
from metalearn.types import Episode

_CHUNK_ELEMENTS = 1 << 24   # pair differences materialised at once by SiameseHead.pairwise (64 MiB in float32)


def embedding_dim(encoder: nn.Module, image_shape: tuple) -> int:
    """D, the size of ``encoder``'s output for one image.

    One forward pass of two zero images in eval mode (the encoder's mode is restored).

    Args:
        encoder: The embedding network.
        image_shape: (C, H, W) of an image.
    """
    was = encoder.training
    p = next(encoder.parameters(), None)
    x = torch.zeros(2, *image_shape, device=p.device if p is not None else None)
    try:
        encoder.eval()
        with torch.no_grad():
            return int(encoder(x).shape[-1])
    finally:
        encoder.train(was)


class SiameseHead(nn.Module):
    """Weighted L1 distance -> logit of p(same):  s(a, b) = sum_j alpha_j |a_j - b_j| + bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim: expected >= 1, got {dim}")
        self.dim = dim
        self.alpha = nn.Linear(dim, 1)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Logits of matched pairs.  a, b: (..., D) -> (...)."""
        return self.alpha((a - b).abs()).squeeze(-1)

    def pairwise(self, a: Tensor, b: Tensor) -> Tensor:
        """Logits of all pairs.  a: ([B,] P, D), b: ([B,] R, D) -> ([B,] P, R).

        Materialises |a_p - b_r| in chunks of rows of ``a`` (bounded memory for wide embeddings such as Koch's 4096-d).

        Args:
            a: ([B,] P, D) embeddings.
            b: ([B,] R, D) embeddings.

        Returns:
            ([B,] P, R) logits of p(same).

        Raises:
            ValueError: An embedding size other than the head's.
        """
        if a.shape[-1] != self.dim or b.shape[-1] != self.dim:
            raise ValueError(f"a, b: expected embeddings of size {self.dim}, got {a.shape[-1]} and {b.shape[-1]}")
        per_row = max(1, math.prod(b.shape[:-2]) * b.shape[-2] * self.dim)
        step = max(1, _CHUNK_ELEMENTS // per_row)
        rows = a.shape[-2]
        outs = [self(a[..., i:i + step, None, :], b[..., None, :, :]) for i in range(0, rows, step)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


#: how K support images of a class score a query: ``mean_prob``: log of the mean p(same) (Koch's rule for K = 1,
#: the support image that scores highest); ``mean_logit``: the mean verification logit (the geometric mean of the
#: odds). Both pick the same class for K = 1.
SUPPORT_SCORES = ("mean_prob", "mean_logit")


def class_log_scores(pair_logits: Tensor, support_y: Tensor, ways: int, check: bool = True,
                     rule: str = "mean_prob") -> Tensor:
    """log of the mean p(same) over each class's support images (``rule="mean_prob"``), or the mean
    verification logit over them (``rule="mean_logit"``).

    Args:
        pair_logits: ([B,] NQ, NK) logits of p(same) for every (query, support) pair.
        support_y: ([B,] NK) support labels in [0, ways).
        ways: N, the number of classes.
        check: Raise if a class has no support image (one host sync); without it such a class scores -inf.
        rule: One of `SUPPORT_SCORES`.

    Returns:
        ([B,] NQ, ways) log scores.

    Raises:
        ValueError: A class without a support image (with ``check``).
    """
    onehot = F.one_hot(support_y, ways).to(pair_logits.dtype)                      # ([B,] NK, N)
    counts = onehot.sum(-2)                                                         # ([B,] N)
    if check and bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0, -1])
        raise ValueError(f"support_y: class {missing} has no support example (ways={ways})")
    if rule == "mean_logit":
        mean = (pair_logits @ onehot) / counts[..., None, :]                          # ([B,] NQ, N)
        return mean.masked_fill(counts[..., None, :] == 0, float("-inf"))
    if rule != "mean_prob":
        raise ValueError(f"rule: expected one of {SUPPORT_SCORES}, got {rule!r}")
    log_mask = torch.log(onehot)                                                    # 0 or -inf
    logp = F.logsigmoid(pair_logits)[..., :, :, None] + log_mask[..., None, :, :]   # ([B,] NQ, NK, N)
    return torch.logsumexp(logp, dim=-2) - torch.log(counts)[..., None, :]


def balanced_pair_bce(pair_logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Class-balanced BCE over the unordered pairs (i < j) of M labelled items.

    Same pairs and different pairs weigh 1/2 each in total.

    Args:
        pair_logits: ([B,] M, M) symmetric logits.
        y: ([B,] M) labels.

    Returns:
        (loss, n_same, n_diff): the loss averaged over tasks; n_same/n_diff ([B]) count the pairs.
    """
    m = y.shape[-1]
    upper = torch.ones(m, m, dtype=torch.bool, device=y.device).triu(1)
    same = (y[..., :, None] == y[..., None, :])
    pos, neg = same & upper, ~same & upper
    n_pos = pos.sum((-1, -2))
    n_neg = neg.sum((-1, -2))
    w = (pos.to(pair_logits.dtype) / (2 * n_pos.clamp_min(1)[..., None, None])
         + neg.to(pair_logits.dtype) / (2 * n_neg.clamp_min(1)[..., None, None]))
    bce = F.binary_cross_entropy_with_logits(pair_logits, same.to(pair_logits.dtype), reduction="none")
    return (w * bce).sum((-1, -2)).mean(), n_pos, n_neg


class Siamese(Learner):
    """Koch's Siamese network learner around any embedding network ``encoder: (..., C, H, W) -> (..., D)``.

    Args:
        encoder: the twin network phi (e.g. [`metalearn.nn.KochNet`][metalearn.nn.koch.KochNet] at 105 px, ``Conv4``
            at 28 px).
        dim: D, the encoder's embedding size (the head has D weights alpha and a bias).
        distort: affine distortion ranges applied to training images in train mode (None: no distortion).
        fill: value outside the distorted image (Omniglot: 1.0, white); None repeats the border pixels.
        seed: seeds the learner's own CPU ``torch.Generator`` for the distortion parameters (saved with the
            state dict, so a resumed run draws the same distortions).
        check_support: raise on a class without support images / an episode without same-class pairs
            (one host sync per call); the CLI turns it off because its EpisodeSampler always completes them.
        support_score: how a class's K support images score a query (`SUPPORT_SCORES`): ``mean_prob``, the log
            of the mean p(same), or ``mean_logit``, the mean verification logit. Only K-shot classification
            (K > 1) differs; training (the pair BCE) does not depend on it.

    ``loss(episode)`` -> (balanced pair BCE, query logits ([B,] N*Q, N) = log mean p(same) per class).

    Examples:
        >>> from metalearn.nn import Conv4
        >>> learner = Siamese(Conv4(in_channels=1), dim=64, fill=1.0)
        >>> loss, logits = learner.loss(episode)
    """

    per_image_embedding = True

    def __init__(self, encoder: nn.Module, dim: int, distort: AffineRanges | None = KOCH,
                 fill: float | None = None, seed: int = 0, check_support: bool = True,
                 support_score: str = "mean_prob") -> None:
        super().__init__()
        if support_score not in SUPPORT_SCORES:
            raise ValueError(f"support_score: expected one of {SUPPORT_SCORES}, got {support_score!r}")
        self.support_score = support_score
        self.encoder = encoder
        self.head = SiameseHead(dim)
        self.distort = distort
        self.fill = fill
        self.check_support = check_support
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))

    # the distortion RNG travels with the weights (exact resume, deterministic evaluation of a checkpoint)
    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())

    def _check(self, episode: Episode) -> None:
        sx, qx = episode.support_x, episode.query_x
        if sx.dim() not in (4, 5):
            raise ValueError(f"support_x: expected ([B,] N*K, C, H, W), got {tuple(sx.shape)}")
        if sx.shape[-3:] != qx.shape[-3:]:
            raise ValueError(f"support_x and query_x image shapes differ: {tuple(sx.shape[-3:])} vs "
                             f"{tuple(qx.shape[-3:])}")
        if sx.shape[-4] == 0:
            raise ValueError("support_x: the support set is empty (shots=0); expected at least one image per class")
        if episode.support_y.shape != sx.shape[:-3] or episode.query_y.shape != qx.shape[:-3]:
            raise ValueError(f"support_y / query_y: expected shapes {tuple(sx.shape[:-3])} / {tuple(qx.shape[:-3])}, "
                             f"got {tuple(episode.support_y.shape)} / {tuple(episode.query_y.shape)}")

    def _embed(self, episode: Episode) -> tuple[Tensor, int]:
        x = torch.cat([episode.support_x, episode.query_x], dim=-4)                # ([B,] M, C, H, W)
        if self.training and self.distort is not None:
            x = self._distort(x)
        return self.encode(x), episode.support_x.shape[-4]                       # ([B,] M, D)

    def _distort(self, x: Tensor) -> Tensor:
        """Koch's distortions; with a ``task_shard`` (lo, hi, total) the parameters are drawn for all ``total``
        tasks of the meta-batch and tasks lo:hi keep theirs (the same draws as one process on the whole batch)."""
        shard = self.task_shard
        if shard is None or x.dim() != 5:
            return random_affine(x, self.distort, generator=self.generator, fill=self.fill)
        lo, hi, total = shard
        m, (c, h, w) = x.shape[1], x.shape[-3:]
        mats = affine_matrices(total * m, self.distort, (h, w), generator=self.generator)[lo * m:hi * m]
        return warp(x.reshape(-1, c, h, w), mats.to(x.device), self.fill).reshape(x.shape)

    def forward(self, episode: Episode) -> Tensor:
        """Query logits ([B,] N*Q, N): log of the mean p(same) with each class's support images."""
        self._check(episode)
        z, n_s = self._embed(episode)
        return self.logits_from_embeddings(z[..., :n_s, :], episode.support_y, z[..., n_s:, :], episode.ways)

    def logits_from_embeddings(self, support_z: Tensor, support_y: Tensor, query_z: Tensor,
                               ways: int) -> Tensor:
        """Per class, the log of the mean p(same) of each query with the class's support images."""
        s = self.head.pairwise(query_z, support_z)                                 # ([B,] NQ, NK)
        return class_log_scores(s, support_y, ways, self.check_support, self.support_score)

    def loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        self._check(episode)
        z, n_s = self._embed(episode)
        y = torch.cat([episode.support_y, episode.query_y], dim=-1)                # ([B,] M)
        s = self.head.pairwise(z, z)                                               # ([B,] M, M)
        loss, n_pos, n_neg = balanced_pair_bce(s, y)
        if self.check_support and bool(((n_pos == 0) | (n_neg == 0)).any()):
            raise ValueError("episode: verification training needs same-class and different-class pairs: at "
                             "least 2 images (shots + queries) of some class and at least 2 classes (ways)")
        logits = class_log_scores(s[..., n_s:, :n_s], episode.support_y, episode.ways, self.check_support,
                                  self.support_score)
        return loss, logits

    def predict(self, episode: Episode) -> Tensor:
        with torch.no_grad():
            return self(episode)
