"""Evaluation: accuracy over many test episodes, mean ± 95% confidence interval (1.96·std/√n)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

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


def evaluate(learner: Learner, sampler: EpisodeSampler, episodes: int, progress: bool = False, *,
             precision: str | None = None, fold_bn: bool = True) -> EvalResult:
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
    it = range(draws)
    w, r = D.world_size(), D.rank()
    if progress and D.is_main():
        from tqdm.auto import tqdm
        it = tqdm(it, desc="eval", unit="batch", leave=False)
    try:
        with torch.inference_mode(fast):
            for d in it:
                if d % w != r:   # another process's draw: keep the stream in step, gather nothing
                    if hasattr(sampler, "skip"):
                        sampler.skip()
                    else:
                        sampler.sample()
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
