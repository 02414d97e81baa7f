"""The MAML family on the functional core: MAML, first-order MAML, Meta-SGD and ANIL.

* MAML (Finn, Abbeel & Levine 2017): adapt all parameters with SGD on the support loss, meta-learn the
  initialisation through the adaptation (second order).
* First-order MAML: the same, with the inner gradients treated as constants.
* Meta-SGD (Li et al. 2017): a learned step size per parameter entry (``learn_lr=True``).
* ANIL (Raghu et al. 2020): only the head adapts (``adapt="head"``); the body is meta-learned.

[`task_loss`][metalearn.learners.maml.task_loss] is the whole algorithm for *one* task, a pure function of parameter
dicts.
[`meta_batch`][metalearn.learners.maml.meta_batch] runs it over a meta-batch either with ``torch.func.vmap``
(optionally in chunks) or with a
plain Python loop (the reference the tests compare against).  [`MAML`][metalearn.learners.maml.MAML] wraps both as an
episodic
[`Learner`][metalearn.learners.base.Learner] for the trainer and the evaluator.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from metalearn.checks import check_int
from metalearn.functional import ParamFilter, call, check_trainable, check_vmap_safe, partition, select
from metalearn.inner import UpdateRule, adapt, check_finite, meta_sgd, sgd
from metalearn.learners.base import Learner
from metalearn.types import Episode, Params

LossFn = Callable[[Tensor, Tensor], Tensor]


def task_loss(model: nn.Module, params: Params, buffers: Params, hyper: Params, names: list[str],
              support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, *, steps: int,
              rule: UpdateRule, first_order: bool = False,
              loss_fn: LossFn = F.cross_entropy) -> tuple[Tensor, Tensor, Tensor]:
    """One task: adapt ``names`` of ``params`` on the support set, score the query set.

    Pure: nothing is mutated (buffers such as BatchNorm running statistics are updated in a copy), so the
    function can be vmapped over tasks.

    Args:
        model: The classifier, called through ``torch.func.functional_call``.
        params: All of the model's parameters by name.
        buffers: The model's buffers by name (copied before the inner loop).
        hyper: The update rule's meta-parameters (Meta-SGD's step sizes; ``{}`` for SGD).
        names: The parameters that adapt (all of them for MAML, the head's for ANIL).
        support_x: (N*K, C, H, W) support images of the task.
        support_y: (N*K,) support labels.
        query_x: (N*Q, C, H, W) query images.
        query_y: (N*Q,) query labels.
        steps: Inner steps.
        rule: The update rule ([`sgd`][metalearn.inner.sgd] or [`meta_sgd`][metalearn.inner.meta_sgd]).
        first_order: Detach the inner gradients (first-order MAML).
        loss_fn: ``loss_fn(logits, labels) -> scalar``, for the support and the query loss.

    Returns:
        ``(query_loss, query_logits, support_losses)``; ``support_losses`` has one (detached) entry per inner
        step.
    """
    fast, slow = partition(params, names)
    buffers = {n: b.clone() for n, b in buffers.items()}

    def support_loss(p: Params, bufs: Params) -> Tensor:
        return loss_fn(call(model, {**slow, **p}, bufs, support_x), support_y)

    adapted, losses = adapt(support_loss, fast, steps, rule, hyper, first_order, buffers=buffers)
    logits = call(model, {**slow, **adapted}, buffers, query_x)
    return loss_fn(logits, query_y), logits, losses


def meta_batch(model: nn.Module, params: Params, buffers: Params, hyper: Params, names: list[str],
               episode: Episode, *, steps: int, rule: UpdateRule, first_order: bool = False,
               loss_fn: LossFn = F.cross_entropy, vmap_tasks: bool = True,
               chunk_size: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """[`task_loss`][metalearn.learners.maml.task_loss] for every task of a batched ``episode``.

    Args:
        model: The classifier, called through ``torch.func.functional_call``.
        params: All of the model's parameters by name.
        buffers: The model's buffers by name.
        hyper: The update rule's meta-parameters.
        names: The parameters that adapt.
        episode: A batch of tasks, in place of ``task_loss``'s four tensors.
        steps: Inner steps.
        rule: The update rule.
        first_order: Detach the inner gradients (first-order MAML).
        loss_fn: ``loss_fn(logits, labels) -> scalar``.
        vmap_tasks: False is the reference loop over tasks.
        chunk_size: Vmap that many tasks at a time (None: all at once).

    Returns:
        Per task: ``(query_losses (B,), query_logits (B, NQ, N), support_losses (B, steps))``.

    Raises:
        ValueError: ``episode`` is not a batch of tasks.
    """
    if not episode.batched:
        raise ValueError("episode: expected a batch of tasks (support_x of shape (B, N*K, C, H, W), or an "
                         "Episode with batch=True whose first dimension indexes tasks)")

    def one(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return task_loss(model, params, buffers, hyper, names, sx, sy, qx, qy, steps=steps, rule=rule,
                         first_order=first_order, loss_fn=loss_fn)

    args = (episode.support_x, episode.support_y, episode.query_x, episode.query_y)
    if vmap_tasks:
        return vmap(one, chunk_size=chunk_size or None)(*args)
    outs = [one(*(a[b] for a in args)) for b in range(episode.support_x.shape[0])]
    return tuple(torch.stack(t) for t in zip(*outs))  # type: ignore[return-value]


class MAML(Learner):
    """Episodic MAML-family learner around a classifier ``model: (N, C, H, W) -> (N, ways)``.

    Args:
        model: the network; its parameters are the meta-learned initialisation.
        ways: classes per task (the head's width).
        inner_lr: inner step size (Meta-SGD: the initial value of the learned step sizes).
        inner_steps: inner updates while meta-training.
        eval_inner_steps: inner updates at evaluation ([`predict`][metalearn.learners.maml.MAML.predict]).
        first_order: inner gradients as constants (first-order MAML).
        learn_lr: learn a step size per parameter entry (Meta-SGD).
        adapt: which parameters the inner loop adapts (`metalearn.functional.ParamFilter`):
            ``"all"`` (MAML), ``"head"`` (ANIL), a prefix list or a callable.
        vmap: batch the tasks of a meta-batch with ``torch.func.vmap``; ``False`` loops over them.
        chunk_size: bound memory by processing the meta-batch in chunks of this many tasks (0: all at once):
            [`backward`][metalearn.learners.maml.MAML.backward] back-propagates each chunk before starting the next
            (the meta-gradient is the
            same), and [`loss`][metalearn.learners.maml.MAML.loss] / [`predict`][metalearn.learners.maml.MAML.predict]
            vmap chunk by chunk.
        check_finite: raise ``FloatingPointError`` naming the task and step of a non-finite support loss.
        loss_fn: ``loss_fn(logits, labels) -> scalar``, for the support and the query loss.

    Examples:
        >>> from metalearn.nn import MamlConv4
        >>> learner = MAML(MamlConv4(1, ways=5, pool="stride"), ways=5, inner_lr=0.4)
        >>> loss, logits = learner.loss(episode)       # a batched episode: mean query loss, (B, N*Q, N)
        >>> loss.backward()                            # meta-gradient in learner.parameters()
    """

    # the inner loop needs gradients at test time; bf16 moves the second-order meta-gradient by ~30%
    inference_without_grad = False
    bf16_safe = False

    def __init__(self, model: nn.Module, ways: int, inner_lr: float = 0.4, inner_steps: int = 1,
                 eval_inner_steps: int = 3, first_order: bool = False, learn_lr: bool = False,
                 adapt: ParamFilter = "all", vmap: bool = True, chunk_size: int = 0, check_finite: bool = True,
                 loss_fn: LossFn = F.cross_entropy) -> None:
        super().__init__()
        ways, inner_steps = check_int("ways", ways, 1), check_int("inner_steps", inner_steps, 1)
        eval_inner_steps = check_int("eval_inner_steps", eval_inner_steps, 1)
        chunk_size = check_int("chunk_size", chunk_size, 0)
        self.model = model
        self.ways, self.inner_steps, self.eval_inner_steps = ways, inner_steps, eval_inner_steps
        self.first_order, self.vmap, self.chunk_size = first_order, vmap, chunk_size
        self.check_finite, self.loss_fn = check_finite, loss_fn
        params = dict(model.named_parameters())
        self.names = select(params, adapt)
        check_trainable(params, self.names)
        if vmap:
            check_vmap_safe(model, second_order=not first_order)
        self.rule = meta_sgd(inner_lr) if learn_lr else sgd(inner_lr)
        # learned step sizes (Meta-SGD) are meta-parameters: a list in the order of self.names
        self.step_sizes = nn.ParameterList(
            [nn.Parameter(t) for t in self.rule.init({n: params[n] for n in self.names}).values()])

    def hyper(self) -> Params:
        return dict(zip(self.names, self.step_sizes)) if len(self.step_sizes) else {}

    def _run(self, episode: Episode, steps: int, first_order: bool,
             first_task: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        if episode.ways != self.ways:
            raise ValueError(f"episode: {episode.ways}-way, but the model's head has {self.ways} outputs "
                             f"(ways={self.ways})")
        single = not episode.batched
        if single:
            episode = Episode(episode.support_x[None], episode.support_y[None], episode.query_x[None],
                              episode.query_y[None], episode.ways, True)
        params, buffers = dict(self.model.named_parameters()), dict(self.model.named_buffers())
        q_loss, logits, s_losses = meta_batch(
            self.model, params, buffers, self.hyper(), self.names, episode, steps=steps, rule=self.rule,
            first_order=first_order, loss_fn=self.loss_fn, vmap_tasks=self.vmap, chunk_size=self.chunk_size)
        if self.check_finite:
            check_finite(s_losses, first_task=first_task)
        return q_loss, (logits[0] if single else logits), s_losses

    def loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Mean query loss after ``inner_steps`` adaptation steps (differentiable), and the query logits."""
        q_loss, logits, _ = self._run(episode, self.inner_steps, self.first_order)
        return q_loss.mean(), logits

    def backward(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Accumulate the meta-gradient of [`loss`][metalearn.learners.maml.MAML.loss] into ``.grad``, chunk by chunk
        if ``chunk_size`` is set.

        Each chunk's graph is freed before the next chunk runs, so peak memory follows ``chunk_size``, not the
        meta-batch.  Returns the (detached) mean query loss and the query logits.
        """
        b = episode.support_x.shape[0] if episode.batched else 1
        if not episode.batched or not self.chunk_size or self.chunk_size >= b:
            return super().backward(episode)
        losses, logits = [], []
        for start in range(0, b, self.chunk_size):
            part = episode[start:start + self.chunk_size]
            q_loss, lg, _ = self._run(part, self.inner_steps, self.first_order, first_task=start)
            (q_loss.sum() / b).backward()
            losses.append(q_loss.detach())
            logits.append(lg.detach())
        return torch.cat(losses).mean(), torch.cat(logits)

    def predict(self, episode: Episode) -> Tensor:
        """Query logits after ``eval_inner_steps`` first-order adaptation steps (nothing kept for backward)."""
        with torch.no_grad():  # torch.func.grad inside still computes the inner gradients
            return self._run(episode, self.eval_inner_steps, True)[1]
