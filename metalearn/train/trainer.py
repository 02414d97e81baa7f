"""Episodic trainer: Adam + step schedule, validation for checkpoint selection, JSONL metrics, exact resume.

Files in ``out_dir``:

* ``last.pt``: everything needed to continue (model, optimiser, schedule, sampler RNG, step, best so far);
* ``best.pt``: the weights with the best validation accuracy (or the last weights if validation is off);
* ``metrics.jsonl``: one JSON object per log interval / validation.

Ctrl-C finishes the step in flight, writes last.pt and returns; ``resume=True`` continues from last.pt and
gives the same result as an uninterrupted run with the same seed.

Inside a ``torch.distributed`` process group (``torchrun``), every process takes its share of each meta-batch
from the same seeded stream, gradients are summed over the processes (``DistributedDataParallel``, or one
all-reduce of the meta-gradient for learners with their own ``backward`` such as MAML), validation episodes are
split across the processes, and only rank 0 reads and writes ``out_dir``
([`metalearn.distributed`][metalearn.distributed]).  The checkpoint does not depend on the number of processes:
a run resumes with any number.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from metalearn import distributed as D
from metalearn.config import TrainConfig
from metalearn.episodes import EpisodeSampler
from metalearn.learners.base import Learner
from metalearn.train.checkpoint import FORMAT, atomic_save, load_checkpoint
from metalearn.train.evaluator import episode_accuracy, evaluate


@dataclass
class TrainState:
    """What [`train`][metalearn.train.trainer.train] returns (and keeps up to date while it runs).

    Attributes:
        step: Optimiser steps done.
        best_accuracy: Best validation accuracy so far, % (-inf before the first validation).
        best_step: The step of ``best.pt``.
        interrupted: Whether Ctrl-C stopped the run (``last.pt`` is written; resume continues it).
        history: The records written to ``metrics.jsonl``.
    """

    step: int = 0
    best_accuracy: float = -math.inf
    best_step: int = 0
    interrupted: bool = False
    history: list = field(default_factory=list)


class NonFiniteLossError(FloatingPointError, ValueError):
    """The training loss became NaN or infinite; names the step and the learner."""


class _StopFlag:
    """First SIGINT asks the loop to stop after the current step; a second one raises as usual."""

    def __init__(self) -> None:
        self.stop = False
        self._old = None

    def __enter__(self) -> "_StopFlag":
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _kept(last_path: Path) -> str:
    """What a stopped run leaves: the last finite checkpoint, or nothing."""
    return ("no checkpoint was written after it (last.pt holds the last finite state)" if last_path.exists()
            else "no checkpoint was written")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric records logged after ``step`` (they belong to the interrupted tail of a run)."""
    from metalearn.train.logging import truncate_metrics
    truncate_metrics(path, step)


def train(learner: Learner, sampler: EpisodeSampler, cfg: TrainConfig, out_dir: str | os.PathLike,
          val_sampler_fn: Callable[[], EpisodeSampler] | None = None, *, resume: bool = False,
          meta: dict | None = None, progress: bool = True,
          compatible: Callable[[dict], None] | None = None,
          loggers: Sequence[Callable[[dict], None]] = ()) -> TrainState:
    """Meta-train ``learner`` on episodes from ``sampler`` for ``cfg.steps`` optimiser steps.

    Adam with a StepLR schedule; validation every ``cfg.val_every`` steps keeps the best weights as ``best.pt``;
    ``last.pt`` every ``cfg.checkpoint_every`` steps allows an exact resume.

    Args:
        learner: The learner to train, on the sampler's device.
        sampler: The training episodes.
        cfg: The ``train`` section (steps, optimiser, schedule, validation, checkpoints, precision).
        out_dir: The run directory (``last.pt``, ``best.pt``, ``metrics.jsonl``).
        val_sampler_fn: Builds a fresh, fixed-seed validation sampler (the same validation episodes every time);
            None trains without validation.
        resume: Continue from ``out_dir/last.pt`` (without it an existing ``last.pt`` is an error).
        meta: Stored in every checkpoint (resolved config, input shape, ...), checked by ``compatible`` on
            resume.
        progress: Show a progress bar.
        compatible: Called with the checkpoint's ``meta`` on resume; raises if it does not fit.
        loggers: Called with every record after it is appended to ``metrics.jsonl`` (e.g.
            [`TensorBoardLogger`][metalearn.train.logging.TensorBoardLogger]); the JSONL log is always written.

    Returns:
        The final state: step, best validation accuracy and its step, history, and whether Ctrl-C stopped it.

    Raises:
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
        NonFiniteLossError: The training loss became NaN or infinite (names the step).

    Examples:
        ```python
        from metalearn import EpisodeSampler, ProtoNet, Conv4, TrainConfig, train
        learner = ProtoNet(Conv4(in_channels=1))
        state = train(learner, EpisodeSampler(train_split, ways=60, shots=1, queries=5), TrainConfig(steps=1000),
                      "runs/x", val_sampler_fn=lambda: EpisodeSampler(val_split, 5, 1, 15, seed=1235))
        ```
    """
    from metalearn.engine import resolve_precision
    out = Path(out_dir)
    dist_on, main = D.active(), D.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    learner.precision = resolve_precision(cfg.precision, sampler.device, learner.bf16_safe)
    opt = torch.optim.Adam(learner.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    state = TrainState()
    metrics_path = out / "metrics.jsonl"
    last_path, best_path = out / "last.pt", out / "best.pt"
    meta = dict(meta or {})

    if resume:
        ck = D.on_main(lambda: load_checkpoint(last_path))   # rank 0 reads, every rank gets the same state
        if compatible is not None:
            compatible(ck.get("meta", {}))
        try:
            learner.load_state_dict(ck["model"])
        except RuntimeError as e:
            raise ValueError(f"checkpoint {str(last_path)!r} does not fit this model: {e}") from None
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        sampler.load_state_dict(ck["sampler"])
        state.step, state.best_accuracy, state.best_step = ck["step"], ck["best_accuracy"], ck["best_step"]
        if main:
            _truncate_metrics(metrics_path, state.step)
    elif D.on_main(last_path.exists):
        raise FileExistsError(f"{str(out)!r} already holds a run (last.pt); pass resume=True (--resume) or "
                              "choose another output directory")
    elif main:
        metrics_path.unlink(missing_ok=True)  # a run that died before its first checkpoint starts afresh

    # distributed: this rank's tasks lo:hi of every meta-batch; the meta-gradient summed over the ranks
    dstep = D.MetaBatchStep(learner, sampler.batch_size) if dist_on else None
    share = dstep.share if dist_on else 1.0

    def step_backward(ep):
        if dstep is None:
            return learner.backward(ep)   # loss.backward(), or in chunks (Learner.backward)
        return dstep.backward(ep)

    def checkpoint() -> None:
        if not main:
            return
        atomic_save({"format": FORMAT, "kind": "train", "meta": meta, "model": learner.state_dict(),
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "sampler": sampler.state_dict(), "step": state.step,
                     "best_accuracy": state.best_accuracy, "best_step": state.best_step}, last_path)

    def save_best(accuracy: float) -> None:
        if not main:
            return
        atomic_save({"format": FORMAT, "kind": "weights", "meta": meta, "model": learner.state_dict(),
                     "step": state.step, "val_accuracy": accuracy}, best_path)

    def log(record: dict) -> None:
        state.history.append(record)
        if not main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for hook in loggers:
            hook(record)

    bar = None
    if progress and main:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    learner.train()
    loss_sum = acc_sum = None
    n_acc, t0, last_val = 0, time.perf_counter(), None
    bad_step = bad_loss = None
    on_rank = f" on {D.describe()}" if dist_on else ""

    def check_finite() -> None:
        """Stop before anything is written if a training loss since the last check was NaN or infinite."""
        nonlocal bad_step
        if dist_on:   # every rank stops together, naming the first rank whose loss was not finite
            found = D.first_failure(bad_step, bad_loss)
            bad_step = None
            if found is not None:
                step, value, ranks = found
                raise NonFiniteLossError(f"training loss of learner {type(learner).__name__} became {value} at "
                                         f"step {step} on {D.ranks_text(ranks)}; {_kept(last_path)}. "
                                         f"Lower train.lr or check the data")
            return
        if bad_step is not None and int(bad_step) != 0:
            raise NonFiniteLossError(f"training loss of learner {type(learner).__name__} became "
                                     f"{float(bad_loss)} at step {int(bad_step)}; {_kept(last_path)}. Lower "
                                     f"train.lr or check the data")
        bad_step = None

    stopped = False

    def should_stop(flag: _StopFlag) -> bool:
        """Ctrl-C on any process stops every process after the same step."""
        nonlocal stopped
        stopped = D.any_true(flag.stop) if dist_on else flag.stop
        return stopped

    with _StopFlag() as flag:
        while state.step < cfg.steps and not should_stop(flag):
            ep = sampler.sample(tasks=(dstep.lo, dstep.hi)) if dist_on else sampler.sample()
            opt.zero_grad(set_to_none=True)
            try:
                loss, logits = step_backward(ep)
            except FloatingPointError as e:   # a learner's own finiteness check (MAML's inner-loop losses)
                if isinstance(e, NonFiniteLossError):
                    raise
                raise NonFiniteLossError(f"learner {type(learner).__name__} at training step {state.step + 1}"
                                         f"{on_rank}: {e}; {_kept(last_path)}. Lower the learning rates or check "
                                         f"the data") from None
            opt.step()
            sched.step()
            state.step += 1
            acc = episode_accuracy(logits.detach(), ep.query_y).mean()
            # the first step whose loss was not finite, kept on the device (no host sync per step)
            lv = loss.detach()
            if bad_step is None:
                bad_step, bad_loss = torch.zeros((), dtype=torch.long, device=lv.device), torch.zeros_like(lv)
            first = ~torch.isfinite(lv) & (bad_step == 0)
            bad_step, bad_loss = torch.where(first, state.step, bad_step), torch.where(first, lv, bad_loss)
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()   # no host sync here
            acc_sum = acc if acc_sum is None else acc_sum + acc
            n_acc += 1
            if bar is not None:
                bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                check_finite()
                if dist_on:   # the mean over the whole meta-batches, each rank weighted by its share of tasks
                    loss_sum, acc_sum = D.all_reduce_sum(torch.stack([loss_sum.to(torch.float64) * share,
                                                                      acc_sum.to(torch.float64) * share]))
                dt = time.perf_counter() - t0
                rec = {"step": state.step, "loss": float(loss_sum) / n_acc, "train_accuracy": float(acc_sum) / n_acc,
                       "lr": sched.get_last_lr()[0], "episodes_per_s": n_acc * sampler.batch_size / dt}
                log(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['train_accuracy']:.1f}",
                                    val=("-" if last_val is None else f"{last_val:.1f}"),
                                    eps=f"{rec['episodes_per_s']:.1f}")
                loss_sum = acc_sum = None
                n_acc, t0 = 0, time.perf_counter()
            if val_sampler_fn is not None and cfg.val_every and (state.step % cfg.val_every == 0
                                                                 or state.step == cfg.steps):
                check_finite()
                res = evaluate(learner, val_sampler_fn(), cfg.val_episodes)
                last_val = res.accuracy
                improved = res.accuracy > state.best_accuracy
                if improved:
                    state.best_accuracy, state.best_step = res.accuracy, state.step
                    save_best(res.accuracy)
                log({"step": state.step, "val_accuracy": res.accuracy, "val_ci95": res.ci95, "best": improved})
                t0 = time.perf_counter()
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                check_finite()
                checkpoint()
        if stopped and state.step < cfg.steps:
            check_finite()
            state.interrupted = True
            checkpoint()
    if bar is not None:
        bar.close()
    if dstep is not None:
        dstep.close()
    if (val_sampler_fn is None or not cfg.val_every) and not state.interrupted:
        state.best_step = state.step
        save_best(float("nan"))
    return state
