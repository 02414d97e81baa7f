"""Evaluation: accuracy over many test episodes, mean ± 95% confidence interval (1.96·std/√n)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metalearn.episodes import EpisodeSampler
from metalearn.learners.base import Learner


@dataclass(frozen=True)
class EvalResult:
    """What [`evaluate`][metalearn.train.evaluator.evaluate] returns; ``str()`` reads
    ``"<accuracy> ± <ci95>% (<ways>-way <shots>-shot, <episodes> episodes)"``.

    Attributes:
        accuracy: Mean per-episode accuracy, %.
        ci95: Half-width of the 95% confidence interval, % (1.96 · sample std / √episodes).
        episodes: Number of test episodes.
        ways: N of the episodes.
        shots: K of the episodes.
        queries: Q of the episodes (query images per class).
        per_episode: The per-episode accuracies, %, in draw order.
    """

    accuracy: float      # mean per-episode accuracy, %
    ci95: float          # 1.96 * std / sqrt(n), %  (std with ddof=1)
    episodes: int
    ways: int
    shots: int
    queries: int
    per_episode: tuple   # per-episode accuracies, %

    def summary(self) -> dict:
        """The result without the per-episode accuracies, as a plain dict."""
        return {"accuracy": self.accuracy, "ci95": self.ci95, "episodes": self.episodes,
                "ways": self.ways, "shots": self.shots, "queries": self.queries}

    def __str__(self) -> str:
        return f"{self.accuracy:.2f} ± {self.ci95:.2f}% ({self.ways}-way {self.shots}-shot, {self.episodes} episodes)"


def mean_ci95(values: np.ndarray | list) -> tuple[float, float]:
    """(mean, 1.96 * sample std / sqrt(n)); the CI of a single value is 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci95: no values")
    ci = 1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else 0.0
    return float(v.mean()), float(ci)


def episode_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-task accuracy in %.  logits ([B,] NQ, N), y ([B,] NQ) -> ([B],)."""
    return (logits.argmax(-1) == y).to(torch.float64).mean(-1) * 100.0


#: the most memory the table of reused embeddings may take (bytes); larger test sets are embedded per episode
EMBEDDING_TABLE_BYTES = 2 * 2 ** 30


def _reuse_possible(model: Learner, sampler: EpisodeSampler) -> bool:
    """Whether episodes from ``sampler`` can be scored from one embedding per distinct test image: a learner
    that predicts from per-image embeddings, no BatchNorm on batch statistics, and the stock sampler (whose
    episodes are its ``sample_indices`` gathered, so that a drawn row and quarter turn name the image).

    Args:
        model: The learner as it will predict (BatchNorm folded, eval mode).
        sampler: The test episodes.
    """
    from torch import nn
    if not getattr(model, "per_image_embedding", False):
        return False
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
           for m in model.modules()):
        return False
    return (type(sampler).sample is EpisodeSampler.sample and type(sampler).gather is EpisodeSampler.gather
            and type(sampler).sample_indices is EpisodeSampler.sample_indices)


class _EmbeddingTable:
    """The ``encode`` output of every image of a sampler's split under every quarter turn it draws, so that an
    episode costs a lookup and the learner's head instead of an encoder pass over its N·(K+Q) images.

    Exact for encoders that embed each image on its own (eval mode, BatchNorm on running statistics):
    [`evaluate`][metalearn.train.evaluator.evaluate] builds it when the episodes would embed more images than
    the split holds, after checking that the first images embed alike alone and in a batch.
    Inside a ``torch.distributed`` group every process embeds its share of the images and all gather the table.
    """

    def __init__(self, model: Learner, sampler: EpisodeSampler, chunk: int) -> None:
        from metalearn import distributed as D
        data, dev = sampler.data, sampler.device
        turns = sorted({int(k) for k in sampler._rot_k.tolist()})
        self.slot = torch.full((4,), -1, dtype=torch.long, device=dev)
        self.slot[torch.tensor(turns, device=dev)] = torch.arange(len(turns), device=dev)
        n = data.images.shape[0]
        total = n * len(turns)                                       # table row t * n + i: image i, turn t
        lo, hi = D.shard_range(total) if D.active() else (0, total)
        parts = []
        for a in range(lo, hi, chunk):
            b = min(hi, a + chunk)
            idx = torch.arange(a, b, device=dev)
            parts.append(self._embed(model, sampler, idx % n, torch.tensor(turns, device=dev)[idx // n]))
        local = torch.cat(parts) if parts else None
        if D.active():
            counts = [D.shard_range(total, r)[1] - D.shard_range(total, r)[0] for r in range(D.world_size())]
            if local is None:   # no share: the trailing shape from one image
                local = self._embed(model, sampler, torch.zeros(1, dtype=torch.long, device=dev),
                                    torch.zeros(1, dtype=torch.long, device=dev))[:0]
            local = D.gather_rows(local, counts)
        self.table = local.view(len(turns), n, *local.shape[1:])

    @staticmethod
    def _embed(model: Learner, sampler: EpisodeSampler, rows: Tensor, turns: Tensor) -> Tensor:
        """``encode`` of images ``rows`` (m,), each turned ``turns`` (m,) quarter turns, as episodes see them."""
        parts = []
        for k in torch.unique(turns).tolist():          # gather() turns a class at a time: one call per angle
            sel = (turns == k).nonzero().view(-1)
            x = sampler.gather(rows[sel].view(1, 1, -1), torch.full((1, 1), k, device=rows.device))
            parts.append((sel, model.encode(x.to(torch.float32).mul_(sampler.scale)[0, 0])))
        d = parts[0][1]
        out = d.new_empty((rows.shape[0], *d.shape[1:]))
        for sel, z in parts:
            out[sel] = z
        return out

    def episode(self, rows: Tensor, rot_k: Tensor, shots: int) -> tuple[Tensor, Tensor]:
        """(support, query) embeddings (B, N*K, D), (B, N*Q, D) of drawn ``rows`` (B, N, K+Q), ``rot_k`` (B, N)."""
        z = self.table[self.slot[rot_k][..., None], rows]                       # (B, N, K+Q, D)
        B, N = rows.shape[:2]
        return z[:, :, :shots].reshape(B, -1, *z.shape[3:]), z[:, :, shots:].reshape(B, -1, *z.shape[3:])


def _embeds_alone(model: Learner, sampler: EpisodeSampler, table: _EmbeddingTable) -> bool:
    """Whether the first images embed as in the table when encoded on their own (a batch-dependent encoder,
    such as one normalising over the batch at test time, does not).

    Args:
        model: The learner as it predicts.
        sampler: The sampler the table was built from.
        table: The table to check.
    """
    m = min(4, sampler.data.images.shape[0])
    rows = torch.arange(m, device=sampler.device)
    k = int(sampler._rot_k[0])
    alone = torch.cat([_EmbeddingTable._embed(model, sampler, rows[i:i + 1], torch.full((1,), k, device=rows.device))
                       for i in range(m)])
    ref = table.table[table.slot[k], :m]
    tol = 1e-4 if model.precision == "fp32" else 2e-2
    return bool(torch.allclose(alone.float(), ref.float(), rtol=tol, atol=tol * float(ref.abs().max()) + 1e-6))


def _table_if_worth(model: Learner, sampler: EpisodeSampler, draws: int, force: bool) -> _EmbeddingTable | None:
    """The embedding table for ``draws`` batches of episodes, or None where it would not pay off (the episodes
    embed fewer images than the split holds, unless ``force``), would not fit in ``EMBEDDING_TABLE_BYTES``, or
    the encoder's embeddings depend on the batch.

    Args:
        model: The learner as it predicts (BatchNorm folded, eval mode).
        sampler: The test episodes.
        draws: Batches of episodes the evaluation draws.
        force: Build the table even where the episodes embed fewer images than the split holds.
    """
    turns = len({int(k) for k in sampler._rot_k.tolist()})
    n = sampler.data.images.shape[0]
    per_draw = sampler.batch_size * sampler.ways * (sampler.shots + sampler.queries)
    if not force and n * turns > draws * per_draw:
        return None
    zero = torch.zeros(1, dtype=torch.long, device=sampler.device)
    probe = _EmbeddingTable._embed(model, sampler, zero, zero + int(sampler._rot_k[0]))
    if n * turns * probe[0].numel() * probe.element_size() > EMBEDDING_TABLE_BYTES:
        return None
    table = _EmbeddingTable(model, sampler, chunk=max(1024, per_draw))
    return table if _embeds_alone(model, sampler, table) else None


def evaluate(learner: Learner, sampler: EpisodeSampler, episodes: int, progress: bool = False, *,
             precision: str | None = None, fold_bn: bool = True,
             reuse_embeddings: bool | None = None) -> EvalResult:
    """Accuracy of ``learner.predict`` on ``episodes`` episodes drawn from ``sampler`` (eval mode inside).

    ``sampler.batch_size`` episodes go through the encoder in one forward pass. The learner's train/eval mode
    and precision are restored afterwards.

    Args:
        learner: The learner to evaluate.
        sampler: The test episodes (a fixed seed gives the same episodes every time).
        episodes: How many episodes (>= 1).
        progress: Show a progress bar.
        precision: ``bf16`` / ``fp32`` / ``auto`` for the encoder (None: the learner's own ``precision``).
        fold_bn: Predict with a copy of the learner whose BatchNorms are folded into the preceding convs, under
            ``torch.inference_mode``, its conv chains run on oneDNN tensors on the CPU
            ([`onednn_inference`][metalearn.engine.onednn_inference]); learners that adapt at test time, such as
            MAML, are evaluated as they are.
        reuse_embeddings: Embed every image of the split once (under each angle the sampler turns it by)
            and score each episode from those embeddings (`_EmbeddingTable`): the same logits as embedding the
            episode's images, for learners that predict from per-image embeddings (ProtoNet, Matching Networks,
            Siamese) with BatchNorm folded. None (default): when the episodes would embed more images than the
            split holds and the table fits in ``EMBEDDING_TABLE_BYTES``; False: never; True: whenever the
            learner and sampler allow it.

    Returns:
        The mean accuracy with its 95% confidence interval, and the per-episode accuracies.

    Raises:
        ValueError: ``episodes`` < 1.

    Examples:
        ```python
        from metalearn import EpisodeSampler, evaluate
        result = evaluate(learner, EpisodeSampler(test_split, ways=5, shots=1, queries=15, batch_size=10,
                                                  seed=1234), episodes=1000)
        print(result)          # "<accuracy> ± <ci95>% (5-way 1-shot, 1000 episodes)"
        ```

    Inside a ``torch.distributed`` process group, the draws of ``sampler.batch_size`` episodes are dealt out
    round-robin over the processes (every process advances the seeded stream past the others' draws without
    gathering their images) and the per-episode accuracies are gathered in draw order: every process returns
    the result one process would, over the same episodes.
    """
    from metalearn import distributed as D
    if episodes < 1:
        raise ValueError(f"episodes: expected >= 1, got {episodes}")
    from metalearn.engine import fold_batchnorm, onednn_inference, resolve_precision
    fast = fold_bn and learner.inference_without_grad
    was_training, old_precision = learner.training, learner.precision
    learner.eval()
    model = fold_batchnorm(learner) if fast else learner
    if fast and torch.device(sampler.device).type == "cpu":
        onednn_inference(model)           # conv chains on oneDNN's blocked tensors from first conv to last pool
    model.precision = resolve_precision(precision or learner.precision, sampler.device, learner.bf16_safe)
    accs = []
    draws = math.ceil(episodes / sampler.batch_size)
    table = None
    it = range(draws)
    w, r = D.world_size(), D.rank()
    if progress and D.is_main():
        from tqdm.auto import tqdm
        it = tqdm(it, desc="eval", unit="batch", leave=False)
    try:
        with torch.inference_mode(fast):
            if fast and reuse_embeddings is not False and _reuse_possible(model, sampler):
                table = _table_if_worth(model, sampler, draws, bool(reuse_embeddings))
                if table is not None:
                    N, K, Q, B = sampler.ways, sampler.shots, sampler.queries, sampler.batch_size
                    labels = torch.arange(N, device=sampler.device)
                    sy = labels.repeat_interleave(K).expand(B, N * K)
                    qy = labels.repeat_interleave(Q).expand(B, N * Q)
            for d in it:
                if d % w != r:   # another process's draw: keep the stream in step, gather nothing
                    if hasattr(sampler, "skip"):
                        sampler.skip()
                    else:
                        sampler.sample()
                    continue
                if table is not None:
                    rows, rot_k = sampler.sample_indices()
                    zs, zq = table.episode(rows, rot_k, sampler.shots)
                    logits = model.logits_from_embeddings(zs, sy, zq, sampler.ways)
                    accs.append(episode_accuracy(logits, qy).reshape(-1))
                    continue
                ep = sampler.sample()
                accs.append(episode_accuracy(model.predict(ep), ep.query_y).reshape(-1))
    finally:
        learner.train(was_training)
        learner.precision = old_precision
    if w > 1:
        accs = D.gather_draws(accs, draws, (sampler.batch_size,), torch.float64, sampler.device)
    acc = torch.cat(accs)[:episodes].cpu().numpy()  # one host sync
    mean, ci = mean_ci95(acc)
    return EvalResult(mean, ci, int(acc.size), sampler.ways, sampler.shots, sampler.queries, tuple(acc.tolist()))
