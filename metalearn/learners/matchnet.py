"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016), with full context embeddings.

A query ``x̂`` is labelled by attention over the support set ``S = {(x_i, y_i)}`` (eq. 1):
``P(y | x̂, S) = Σ_i a(x̂, x_i) y_i`` with one-hot ``y_i`` and ``a(x̂, x_i) = softmax_i(cos(f(x̂), g(x_i)))``
(eq. 2).  Training minimises the query cross-entropy ``-log P(y | x̂, S)`` over episodes.

Without full context embeddings (FCE) ``f = g`` is the encoder (Conv4).  With FCE (paper, appendix A.2):

* ``g``: a bidirectional LSTM reads the support embeddings ``g'(x_i)`` as a sequence and
  ``g(x_i) = h→_i + h←_i + g'(x_i)`` (a skip connection);
* ``f``: an attention LSTM reads the support for K processing steps; with ``f'(x̂)`` the query embedding,
  ``ĥ_k, c_k = LSTM(f'(x̂), [h_{k-1}, r_{k-1}], c_{k-1})``, ``h_k = ĥ_k + f'(x̂)``,
  ``r_{k-1} = Σ_i softmax_i(h_{k-1}ᵀ g(x_i)) g(x_i)`` and ``f(x̂) = h_K``.

The attention of eq. 2 is the cosine similarity normalised on both sides, as in the paper (some
reimplementations leave the support side unnormalised).  Because the cosine lies in [-1, 1], the softmax is
never sharper than ``e^2`` between two support items, so ``P(y | x̂, S)`` never underflows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.learners.base import Learner
from metalearn.types import Episode


def cosine_attention(query: Tensor, support: Tensor, eps: float = 1e-8, scale: float = 1.0) -> Tensor:
    """Attention of each query over the support: softmax over the support of cosine similarities.

    Vinyals et al. 2016, eq. 2.

    Args:
        query: ([B,] Q, D) query embeddings.
        support: ([B,] S, D) support embeddings.
        eps: Bounds the norms away from zero (an all-zero embedding gets cosine 0 with everything).
        scale: Multiplies the cosines before the softmax (an inverse temperature; 1 is the paper).

    Returns:
        ([B,] Q, S) attention, each row sums to one.

    Examples:
        >>> a = cosine_attention(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
        >>> a  # softmax([1, 0])
        tensor([[0.7311, 0.2689]])
    """
    return torch.softmax(similarities(query, support, "cosine", scale, eps), dim=-1)


def l2_attention(query: Tensor, support: Tensor, scale: float = 1.0) -> Tensor:
    """Attention of each query over the support: softmax over the support of negative squared Euclidean distances.

    Not in the paper (its eq. 2 is the cosine): the ``distance: l2`` variant of Matching Networks that
    reimplementations report closer to the paper's Omniglot numbers than the cosine, and the distance of
    Prototypical Networks (with one support item per prototype).

    Args:
        query: ([B,] Q, D) query embeddings.
        support: ([B,] S, D) support embeddings.
        scale: Multiplies the distances before the softmax (an inverse temperature).

    Returns:
        ([B,] Q, S) attention, each row sums to one.

    Examples:
        >>> l2_attention(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # softmax([-1, -4])
        tensor([[0.9526, 0.0474]])
    """
    return torch.softmax(similarities(query, support, "l2", scale), dim=-1)


#: the attention kernels of ``MatchingNet(distance=...)``
DISTANCES = ("cosine", "l2")


#: how a K-shot support scores a query at test time (``MatchingNet(support_score=...)``)
SUPPORT_SCORES = ("attention", "class_mean")


def similarities(query: Tensor, support: Tensor, distance: str, scale: float, eps: float = 1e-8) -> Tensor:
    """The scaled similarities the attention softmaxes: ``scale`` x cosine, or -``scale`` x squared Euclidean
    distance.

    Args:
        query: ([B,] Q, D) query embeddings.
        support: ([B,] S, D) support embeddings.
        distance: ``cosine`` or ``l2``.
        scale: The multiplier (an inverse temperature).
        eps: Floor of the norms (``cosine`` only).

    Returns:
        ([B,] Q, S) similarities.
    """
    if distance == "l2":
        from metalearn.learners.protonet import squared_euclidean
        return -scale * squared_euclidean(query, support)
    q = query / query.norm(dim=-1, keepdim=True).clamp_min(eps)
    s = support / support.norm(dim=-1, keepdim=True).clamp_min(eps)
    return scale * (q @ s.transpose(-1, -2))


def class_mean_logits(scores: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """Log-softmax over classes of each class's mean similarity to the query: ``log softmax_c(mean_{i: y_i=c}
    s(x̂, x_i))``.  With one support image per class it equals
    [`matching_logits`][metalearn.learners.matchnet.matching_logits] of the attention over the same scores;
    with K > 1 it scores a class by its typical support image rather than by its nearest ones (the attention's
    sum of exponentials).  Not in the paper.

    Args:
        scores: ([B,] Q, S) similarities (`similarities`).
        support_y: ([B,] S) support labels in [0, ways), every class present.
        ways: N.

    Returns:
        ([B,] Q, ways) logits (log-probabilities).
    """
    onehot = F.one_hot(support_y, ways).to(scores.dtype)              # ([B,] S, N)
    mean = (scores @ onehot) / onehot.sum(dim=-2).unsqueeze(-2)        # ([B,] Q, N)
    return torch.log_softmax(mean, dim=-1)


def check_support_labels(support_y: Tensor, ways: int) -> None:
    """ValueError naming ``support_y`` if a label lies outside [0, ways) or a class has no support example.

    Reads values back from the device (a host sync), so hot loops fed by EpisodeSampler skip it.

    Args:
        support_y: ([B,] S) support labels.
        ways: N, the number of classes.

    Raises:
        ValueError: A label outside [0, ways), or a class without a support example.
    """
    if bool(((support_y < 0) | (support_y >= ways)).any()):
        bad = support_y[(support_y < 0) | (support_y >= ways)].flatten()[0].item()
        raise ValueError(f"support_y: label {bad} is outside [0, ways={ways})")
    counts = F.one_hot(support_y, ways).sum(dim=-2)                    # ([B,] N)
    if bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0, -1])
        raise ValueError(f"support_y: class {missing} has no support example (ways={ways})")


def matching_logits(attention: Tensor, support_y: Tensor, ways: int) -> Tensor:
    """Log of the attention-weighted one-hot labels, ``log Σ_i a(x̂, x_i) y_i``.  Vinyals et al. 2016, eq. 1.

    The rows of ``exp(logits)`` are the predicted class distributions, so ``cross_entropy(logits, y)`` is
    ``-log P(y | x̂, S)``.  A class without support examples has probability 0, clamped to the dtype's smallest
    normal number before the log (logit about -87 in float32) so that the loss stays finite.

    Args:
        attention: ([B,] Q, S) attention, rows summing to one.
        support_y: ([B,] S) support labels in [0, ways).
        ways: N, the number of classes.

    Returns:
        ([B,] Q, ways) logits.
    """
    onehot = F.one_hot(support_y, ways).to(attention.dtype)          # ([B,] S, N)
    p = attention @ onehot                                             # ([B,] Q, N)
    return p.clamp_min(torch.finfo(p.dtype).tiny).log()


class SupportContext(nn.Module):
    """FCE ``g``: a bidirectional LSTM over the support sequence plus a skip connection.

    z: (B, S, D) -> (B, S, D), ``g(x_i) = h→_i + h←_i + g'(x_i)`` (Vinyals et al. 2016, appendix A.2).  The
    sequence is the support in the order of the episode (EpisodeSampler groups it by label, and labels are a
    fresh random assignment of classes in every episode).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)

    def forward(self, z: Tensor) -> Tensor:
        h, _ = self.lstm(z)                                            # (B, S, 2D): forward then backward
        return h[..., :self.dim] + h[..., self.dim:] + z


class AttentionLSTM(nn.Module):
    """FCE ``f``: an LSTM that reads the (context-embedded) support for ``steps`` processing steps.

    query: (B, Q, D), support: (B, S, D) = g(x_i) -> (B, Q, D).  Every query of every task is one row of the
    LSTM cell's batch; only the K steps are a Python loop.  The cell's recurrent input is ``[h_{k-1}, r_{k-1}]``:
    an ``LSTMCell`` whose input is ``[f'(x̂), r_{k-1}]`` and whose hidden state is ``h_{k-1}`` computes the same
    gates (the input and recurrent weight matrices are one linear map of the concatenation).  ``h_0 = c_0 = 0``.
    """

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"process_steps: expected >= 1, got {steps}")
        self.dim, self.steps = dim, steps
        self.cell = nn.LSTMCell(2 * dim, dim)

    def forward(self, query: Tensor, support: Tensor) -> Tensor:
        B, Q, D = query.shape
        x = query.reshape(B * Q, D)                                    # f'(x̂), one row per query
        h = torch.zeros_like(x)
        c = torch.zeros_like(x)
        for _ in range(self.steps):
            read = torch.softmax(h.view(B, Q, D) @ support.transpose(-1, -2), dim=-1)   # (B, Q, S)
            r = (read @ support).reshape(B * Q, D)                     # r_{k-1}
            h_hat, c = self.cell(torch.cat([x, r], dim=-1), (h, c))
            h = h_hat + x                                              # skip connection
        return h.view(B, Q, D)


class MatchingNet(Learner):
    """Matching Networks learner around any embedding network ``encoder: (..., C, H, W) -> (..., D)``.

    Args:
        encoder: the embedding ``f' = g'`` (Conv4 in the paper), called once on the support and query images.
        embed_dim: the encoder's output size D; needed only with ``fce``.
        fce: full context embeddings (a bidirectional LSTM ``g`` over the support, an attention LSTM ``f``
            over the queries); off, ``f = g = encoder``.
        process_steps: K, the attention LSTM's processing steps (``fce`` only).
        lstm_hidden: 0 (the paper) runs the LSTMs at the embedding size D; otherwise a linear map projects the
            embeddings to this size first (``fce`` only), which shrinks the LSTMs for 1600-d miniImageNet
            features.
        scale: multiplies the cosines (or the distances) before the softmax (1, the paper's attention, keeps the
            logits of two support items within e^2 of each other; a larger value sharpens it — not in the paper).
        distance: ``cosine`` (the paper's eq. 2, [`cosine_attention`][metalearn.learners.matchnet.cosine_attention])
            or ``l2`` (negative squared Euclidean distances,
            [`l2_attention`][metalearn.learners.matchnet.l2_attention]; not in the paper).
        check_support: check that every class has a support example and labels lie in [0, ways) (a host sync
            per episode); the CLI turns it off because EpisodeSampler always fills every class.
        support_score: how a K-shot support scores a query in eval mode (`SUPPORT_SCORES`): ``attention``, the
            paper's eq. 1, or ``class_mean``
            ([`class_mean_logits`][metalearn.learners.matchnet.class_mean_logits]; not in the paper).  The
            same for one shot; training (train mode) always uses the attention.

    Examples:
        >>> from metalearn.nn import Conv4
        >>> learner = MatchingNet(Conv4(in_channels=1), embed_dim=64, fce=True, process_steps=5)
        >>> loss, logits = learner.loss(episode)   # logits: ([B,] N*Q, N), log-probabilities
    """

    per_image_embedding = True

    def __init__(self, encoder: nn.Module, embed_dim: int | None = None, *, fce: bool = False,
                 process_steps: int = 5, lstm_hidden: int = 0, scale: float = 1.0,
                 check_support: bool = True, distance: str = "cosine", support_score: str = "attention") -> None:
        super().__init__()
        if support_score not in SUPPORT_SCORES:
            raise ValueError(f"support_score: expected one of {', '.join(SUPPORT_SCORES)}, got {support_score!r}")
        self.support_score = support_score
        self.encoder = encoder
        self.fce = fce
        self.check_support = check_support
        if not scale > 0:
            raise ValueError(f"scale: expected > 0, got {scale}")
        if distance not in DISTANCES:
            raise ValueError(f"distance: expected one of {', '.join(DISTANCES)}, got {distance!r}")
        self.scale, self.distance = float(scale), distance
        if lstm_hidden < 0:
            raise ValueError(f"lstm_hidden: expected >= 0, got {lstm_hidden}")
        if fce:
            if embed_dim is None or embed_dim < 1:
                raise ValueError(f"embed_dim: full context embeddings need the encoder's output size, got "
                                 f"{embed_dim!r}")
            dim = lstm_hidden or embed_dim
            self.project = nn.Linear(embed_dim, dim) if lstm_hidden else None
            self.g = SupportContext(dim)
            self.f = AttentionLSTM(dim, process_steps)
        elif lstm_hidden:
            raise ValueError("lstm_hidden: only used with fce=True")

    def _validate(self, episode: Episode) -> None:
        sx, qx, sy, qy = episode.support_x, episode.query_x, episode.support_y, episode.query_y
        if sx.dim() not in (4, 5) or qx.dim() != sx.dim():
            raise ValueError(f"support_x and query_x: expected ([B,] N*K, C, H, W) and ([B,] N*Q, C, H, W) with "
                             f"the same number of dims, got {tuple(sx.shape)} and {tuple(qx.shape)}")
        if sx.shape[-3:] != qx.shape[-3:]:
            raise ValueError(f"support_x and query_x image shapes differ: {tuple(sx.shape[-3:])} vs "
                             f"{tuple(qx.shape[-3:])}")
        if sx.dim() == 5 and sx.shape[0] != qx.shape[0]:
            raise ValueError(f"support_x and query_x: different numbers of tasks, {sx.shape[0]} vs {qx.shape[0]}")
        if episode.ways < 1:
            raise ValueError(f"ways: expected >= 1, got {episode.ways}")
        if sx.shape[-4] == 0:
            raise ValueError(f"support_x: the support set is empty (shots=0); Matching Networks need at least one "
                             f"support example per class, got support_x of shape {tuple(sx.shape)}")
        if qx.shape[-4] == 0:
            raise ValueError(f"query_x: no query examples (queries=0), got query_x of shape {tuple(qx.shape)}")
        if sy.shape != sx.shape[:-3]:
            raise ValueError(f"support_y: expected shape {tuple(sx.shape[:-3])} (one label per support image), "
                             f"got {tuple(sy.shape)}")
        if qy.shape != qx.shape[:-3]:
            raise ValueError(f"query_y: expected shape {tuple(qx.shape[:-3])} (one label per query image), "
                             f"got {tuple(qy.shape)}")

    def embed(self, support_z: Tensor, query_z: Tensor) -> tuple[Tensor, Tensor]:
        """(g(x_i), f(x̂)) from encoder outputs: the FCE when on, else unchanged.  (B, S, D), (B, Q, D) in."""
        if not self.fce:
            return support_z, query_z
        if self.project is not None:
            support_z, query_z = self.project(support_z), self.project(query_z)
        support_g = self.g(support_z)
        return support_g, self.f(query_z, support_g)

    def forward(self, episode: Episode) -> Tensor:
        self._validate(episode)
        if self.check_support:
            check_support_labels(episode.support_y, episode.ways)
        # one encoder call for support and query of all tasks (one BatchNorm batch, as in ProtoNet)
        n_s = episode.support_x.shape[-4]
        z = self.encode(torch.cat([episode.support_x, episode.query_x], dim=-4))   # ([B,] NK+NQ, D)
        return self.logits_from_embeddings(z[..., :n_s, :], episode.support_y, z[..., n_s:, :], episode.ways)

    def logits_from_embeddings(self, support_z: Tensor, support_y: Tensor, query_z: Tensor,
                               ways: int) -> Tensor:
        """The full context embeddings (when on) of the encoder outputs, then attention over the support set
        (training, or ``support_score="attention"``) or the class-mean similarity.

        Args:
            support_z: ([B,] N*K, D) encoder outputs of the support images.
            support_y: ([B,] N*K) support labels in [0, ways).
            query_z: ([B,] N*Q, D) encoder outputs of the query images.
            ways: N, the number of classes.
        """
        batched = support_z.dim() == 3
        if not batched:
            support_z, query_z, support_y = support_z[None], query_z[None], support_y[None]
        support, query = self.embed(support_z, query_z)
        if self.training or self.support_score == "attention":
            attend = cosine_attention if self.distance == "cosine" else l2_attention
            logits = matching_logits(attend(query, support, scale=self.scale), support_y, ways)   # (B, NQ, N)
        else:
            logits = class_mean_logits(similarities(query, support, self.distance, self.scale), support_y, ways)
        return logits if batched else logits[0]

    def loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        logits = self(episode)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), episode.query_y.reshape(-1))
        return loss, logits


@torch.no_grad()
def embedding_dim(encoder: nn.Module, image_shape: tuple) -> int:
    """The output size D of ``encoder`` on images of ``image_shape``.

    One forward pass of two zero images in eval mode (the encoder's train/eval mode is restored).

    Args:
        encoder: The embedding network.
        image_shape: (C, H, W) of an image.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        p = next(encoder.parameters(), None)
        x = torch.zeros(2, *image_shape, device=None if p is None else p.device)
        return int(encoder(x).shape[-1])
    finally:
        encoder.train(was_training)
