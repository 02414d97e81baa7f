"""Scale-out on ``torch.distributed``: the helpers every distributed code path goes through.

``torchrun --nproc_per_node N -m metalearn train ...`` starts N processes with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` set; [`init_from_env`][metalearn.distributed.init_from_env] joins them into one process group
(``gloo`` for CPU tensors, ``nccl`` for CUDA tensors, each process on ``cuda:LOCAL_RANK``).  Without
``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and every function here is the single-process
identity: [`active`][metalearn.distributed.active] is False, [`rank`][metalearn.distributed.rank] is 0,
[`on_main`][metalearn.distributed.on_main] just calls its function, [`shard_range`][metalearn.distributed.shard_range]
is the whole range.

How the work is split (docs/distributed.md):

* meta-training: every process draws the *whole* meta-batch's indices from the one seeded stream and gathers
  only its share of the tasks ([`shard_range`][metalearn.distributed.shard_range]), so the set of tasks is the
  same whatever N is and the sampler's state is the same on every rank (a checkpoint resumes with any N).
  Gradients are summed with ``DistributedDataParallel`` (metric learners) or one explicit all-reduce of the
  meta-gradient ([`all_reduce_grads`][metalearn.distributed.all_reduce_grads], the functional MAML path), each
  share weighted by its number of tasks ([`MetaBatchStep`][metalearn.distributed.MetaBatchStep]).  BatchNorm
  layers that normalise with batch statistics across the tasks of a meta-batch use the statistics of the whole
  meta-batch ([`DistributedBatchNorm2d`][metalearn.distributed.DistributedBatchNorm2d]), as one process would.
* evaluation: whole draws of test episodes are dealt out round-robin and the per-episode accuracies gathered in
  draw order ([`gather_draws`][metalearn.distributed.gather_draws]): the same episodes, the same mean and CI as
  one process.
* files: only rank 0 reads and writes the run directory ([`on_main`][metalearn.distributed.on_main],
  [`is_main`][metalearn.distributed.is_main]).

Failures: a collective waits at most ``METALEARN_DIST_TIMEOUT`` seconds (default 600); a rank that raises exits
and the others stop at their next collective (gloo reports the closed connection at once; torchrun also stops
the remaining workers).  [`describe`][metalearn.distributed.describe] names the rank in error messages.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import pickle
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

TIMEOUT_ENV = "METALEARN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


def _dist():
    import torch.distributed as dist
    return dist


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset); a clear error for anything but a positive integer."""
    raw = os.environ.get("WORLD_SIZE")
    if raw is None or raw == "":
        return 1
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"WORLD_SIZE: expected a positive integer (set by torchrun), got {raw!r}") from None
    if n < 1:
        raise ValueError(f"WORLD_SIZE: expected a positive integer (set by torchrun), got {n}")
    return n


def timeout_s() -> float:
    """Seconds a collective may wait for the other processes (``METALEARN_DIST_TIMEOUT``, default 600)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        t = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}: expected seconds (a positive number), got {raw!r}") from None
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"{TIMEOUT_ENV}: expected seconds (a positive number), got {raw!r}")
    return t


def active() -> bool:
    """True inside a process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return _dist().get_rank() if active() else 0


def world_size() -> int:
    """The number of processes in the group (1 without one)."""
    return _dist().get_world_size() if active() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 without a process group)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that reads and writes files and prints results."""
    return rank() == 0


def describe() -> str:
    """``"rank 1 of 2"`` inside a process group, else ``""`` (for error messages)."""
    return f"rank {rank()} of {world_size()}" if active() else ""


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1); returns whether this
    call created it (False: one process, or a group already initialised by the caller, which is then used).

    Backend: ``gloo`` on a machine without CUDA; with CUDA, ``cpu:gloo,cuda:nccl`` (CUDA tensors over NCCL,
    CPU tensors over gloo) and this process's default CUDA device is ``cuda:LOCAL_RANK``.  Collectives time out
    after [`timeout_s`][metalearn.distributed.timeout_s] seconds.  Idempotent.
    """
    dist = _dist()
    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return False
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(key):
            raise ValueError(f"{key}: WORLD_SIZE={os.environ['WORLD_SIZE']} but {key} is not set; launch the "
                             "processes with torchrun (docs/distributed.md)")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s()))
    return True


def shutdown() -> None:
    """Leave the process group (no-op when none is initialised)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """In a process group, a CUDA device becomes this process's own ``cuda:LOCAL_RANK``; anything else is
    returned unchanged."""
    device = torch.device(device)
    if active() and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _object_device() -> torch.device:
    """Where object collectives run: the CPU when the group has gloo, else the current CUDA device."""
    backend = str(_dist().get_backend()).lower()
    if "gloo" in backend or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


# ------------------------------------------------------------------------------------------------ sharding

def shard_range(total: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous share ``[lo, hi)`` of ``total`` items that one of ``world`` processes holds.

    Shares differ in size by at most one; the whole range without a process group.

    Args:
        total: The number of items.
        rank_: The process's rank (default: this process's).
        world: The number of processes (default: this process group's).
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return r * total // w, (r + 1) * total // w


def block_range(total: int, block: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Like [`shard_range`][metalearn.distributed.shard_range] over whole blocks of ``block`` items.

    The share ``[lo, hi)`` is in items, starting and ending on block boundaries (the last block may be short), so
    each process sees the same blocks as one process would.

    Args:
        total: The number of items.
        block: The number of items in a block.
        rank_: The process's rank (default: this process's).
        world: The number of processes (default: this process group's).
    """
    nb = math.ceil(total / block)
    blo, bhi = shard_range(nb, rank_, world)
    return min(blo * block, total), min(bhi * block, total)


def check_shardable(total: int, what: str) -> None:
    """ValueError naming ``what`` when ``total`` items cannot give every process at least one."""
    w = world_size()
    if total < w:
        raise ValueError(f"{what}={total}: the meta-batch is split across the {w} processes, so it needs at "
                         f"least {w} tasks (a multiple of {w} keeps the processes equally loaded)")


# -------------------------------------------------------------------------------------------- collectives

def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled); the identity without a process group."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    _dist().broadcast_object_list(box, src=src, device=_object_device())
    return box[0]


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - an exception type that does not survive pickling
        return RuntimeError(f"{type(err).__name__}: {err}")


def on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank; an exception it raises is raised on
    every rank (the same type and message), so that all processes stop together.  Single process: ``fn()``."""
    if not active():
        return fn()
    payload = None
    if is_main():
        try:
            payload = (True, fn())
        except Exception as err:  # noqa: BLE001 - re-raised below on every rank
            payload = (False, _picklable(err))
    ok, value = broadcast_object(payload)
    if not ok:
        raise value
    return value


def any_true(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (one small collective); ``flag`` itself without a process group."""
    if not active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_object_device())
    _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over the ranks (a new tensor; not differentiable); ``t`` without a process group."""
    if not active():
        return t
    out = t.detach().clone()
    _dist().all_reduce(out)
    return out


def all_gather(t: Tensor) -> Tensor:
    """``t`` (same shape on every rank) of every rank, stacked -> (world, *t.shape)."""
    if not active():
        return t[None]
    out = [torch.empty_like(t) for _ in range(world_size())]
    _dist().all_gather(out, t.contiguous())
    return torch.stack(out)


def gather_rows(local: Tensor, counts: Sequence[int]) -> Tensor:
    """Concatenate every rank's ``local`` in rank order.

    Rows are padded to the largest count for the collective and trimmed after.

    Args:
        local: This rank's rows, ``counts[r]`` of them on rank r, the same trailing shape on every rank.
        counts: The number of rows of each rank.
    """
    if not active():
        return local
    most = max(counts)
    pad = torch.zeros((most - local.shape[0], *local.shape[1:]), dtype=local.dtype, device=local.device)
    stacked = all_gather(torch.cat([local, pad]))
    return torch.cat([stacked[r, :c] for r, c in enumerate(counts)])


def gather_draws(local: list[Tensor], draws: int, shape: tuple, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> list[Tensor]:
    """Reassemble results dealt out round-robin: rank r holds draws r, r + W, r + 2W, ... of W ranks.

    Args:
        local: This rank's draws, one tensor of ``shape`` per draw, in order; possibly none.
        draws: The number of draws over all ranks.
        shape: The shape of one draw's tensor.
        dtype: The dtype of the tensors when ``local`` is empty (otherwise that of ``local[0]``).
        device: Their device when ``local`` is empty (otherwise that of ``local[0]``; default the CPU).

    Returns:
        All ``draws`` tensors in draw order, on every rank.
    """
    if not active():
        return local
    w = world_size()
    per = math.ceil(draws / w)
    if local:
        dtype, device = local[0].dtype, local[0].device
    elif device is None:
        device = torch.device("cpu")
    if "nccl" in str(_dist().get_backend()).lower() and torch.device(device).type != "cuda" and \
            "gloo" not in str(_dist().get_backend()).lower():
        device = torch.device("cuda", torch.cuda.current_device())
    mine = [t.to(device) for t in local] + [torch.zeros(shape, dtype=dtype, device=device)] * (per - len(local))
    stacked = all_gather(torch.stack(mine))                    # (W, per, *shape)
    return [stacked[d % w, d // w] for d in range(draws)]


def first_failure(bad_step: Tensor | None, bad_value: Tensor | None) -> tuple[int, float, list[int]] | None:
    """The earliest non-finite loss over the ranks.  One small collective.

    Args:
        bad_step: The step of this rank's first non-finite loss; 0 (or None) where this rank saw none.
        bad_value: That loss.

    Returns:
        (step, value, ranks): the step, the loss and every rank that saw one at that step; None when no rank saw one.
    """
    dev = bad_step.device if bad_step is not None else torch.device("cpu")
    if active() and "gloo" not in str(_dist().get_backend()).lower() and dev.type != "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    mine = torch.tensor([0.0, 0.0], dtype=torch.float64, device=dev)
    if bad_step is not None:
        mine = torch.stack([bad_step.to(torch.float64).reshape(()), bad_value.to(torch.float64).reshape(())]).to(dev)
    rows = all_gather(mine).cpu().tolist()
    found = [(int(s), v, r) for r, (s, v) in enumerate(rows) if int(s) != 0]
    if not found:
        return None
    step = min(s for s, _, _ in found)
    at = [(v, r) for s, v, r in found if s == step]
    return step, at[0][0], [r for _, r in at]


def ranks_text(ranks: Sequence[int]) -> str:
    """``"rank 1 of 2"`` / ``"ranks 0 and 1 of 2"``."""
    names = [str(r) for r in ranks]
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"rank{'s' * (len(names) > 1)} {joined} of {world_size()}"


# -------------------------------------------------------------------------------------------- gradients

def weight_of_share(total: int) -> float:
    """This rank's share of ``total`` tasks as a fraction (its tasks / total)."""
    lo, hi = shard_range(total)
    return (hi - lo) / total


def all_reduce_grads(params: Iterable[nn.Parameter], weight: float) -> None:
    """Replace every parameter's ``.grad`` by the sum over the ranks of ``weight * grad`` (one coalesced all-reduce).

    With ``weight`` = this rank's share of the tasks and local gradients of the mean loss over its tasks, the result
    is the gradient of the mean loss over the whole meta-batch.  Parameters without a gradient count as zero (every
    rank then holds a gradient).

    Args:
        params: The parameters (those that do not require a gradient are left alone).
        weight: The factor of this rank's gradients.
    """
    params = [p for p in params if p.requires_grad]
    if not params or not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).mul_(weight)
    _dist().all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).clone()
        offset += n


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy the parameters and buffers of rank ``src`` into ``module`` on every rank (one tensor at a time)."""
    if not active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            _dist().broadcast(t.data, src=src)


class LossModule(nn.Module):
    """``forward(*args)`` = ``fn(module, *args)``: gives ``DistributedDataParallel`` a forward to hook into when
    the loss is not the module's own ``forward`` (a learner's ``loss(episode)``, the TTT joint loss)."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.module, *args)


def ddp(module: nn.Module, fn: Callable[..., Any]) -> nn.Module:
    """``DistributedDataParallel`` around ``LossModule(module, fn)``.

    Gradients are averaged over the ranks while the backward pass runs; parameters and buffers are broadcast from
    rank 0 once, here.

    Args:
        module: The module whose parameters are trained.
        fn: The loss, ``fn(module, *args)``; the wrapper's ``forward(*args)`` calls it.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel
    # buffers are equal on every rank by construction (DistributedBatchNorm2d): no per-forward broadcast
    key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
           else "broadcast_buffers")
    return DistributedDataParallel(LossModule(module, fn), **{key: False})


class MetaBatchStep:
    """This process's part of one meta-training step: tasks ``lo:hi`` of every meta-batch of ``batch_size``,
    and the meta-gradient of the whole meta-batch summed into ``.grad`` of ``learner``'s parameters.

    Learners that keep the base class's ``backward`` (ProtoNet, Matching Networks, Siamese) are wrapped in
    ``DistributedDataParallel`` (gradients reduced while the backward pass runs); learners with their own ``backward``
    (MAML's chunked meta-gradient through the functional core) back-propagate locally and the meta-gradient is summed
    with one all-reduce ([`all_reduce_grads`][metalearn.distributed.all_reduce_grads]).  Either way each process's
    loss is weighted by its share of the tasks, so the result is the gradient of the mean loss over the meta-batch.

    Examples:
        Inside a process group:

        >>> step = MetaBatchStep(learner, sampler.batch_size)
        >>> loss, logits = step.backward(sampler.sample(tasks=(step.lo, step.hi)))
    """

    def __init__(self, learner: nn.Module, batch_size: int) -> None:
        from metalearn.learners.base import Learner
        check_shardable(batch_size, "batch_size (tasks per meta-batch)")
        self.learner, self.batch_size = learner, batch_size
        self.lo, self.hi = shard_range(batch_size)
        self.share = (self.hi - self.lo) / batch_size
        self.uses_ddp = type(learner).backward is Learner.backward
        self.net = None
        if active() and self.uses_ddp:
            self.net = ddp(learner, lambda m, ep: m.loss(ep))
        else:
            broadcast_module(learner)

    def backward(self, episode: Any) -> tuple[Tensor, Tensor]:
        """Accumulate the whole meta-batch's meta-gradient from this process's ``episode`` (its tasks
        ``lo:hi``); returns this process's (detached mean loss, logits)."""
        with task_share(self.learner, self.lo, self.hi, self.batch_size):
            if self.net is not None:
                loss, logits = self.net(episode)
                (loss * (self.share * world_size())).backward()   # DDP divides by the number of processes
                return loss.detach(), logits
            loss, logits = self.learner.backward(episode)
            all_reduce_grads(self.learner.parameters(), self.share)
            return loss, logits

    def close(self) -> None:
        """Drop the DistributedDataParallel wrapper (its hooks on the parameters go with it)."""
        self.net = None


# ---------------------------------------------------------------------------------------------- batchnorm

class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of a sum that every rank uses is the sum of their
    gradients."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:   # noqa: D102
        out = t.clone(memory_format=torch.contiguous_format)
        _dist().all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:   # noqa: D102
        return _AllReduceSum.apply(grad)


def _all_reduce_diff(t: Tensor) -> Tensor:
    return _AllReduceSum.apply(t)


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of the whole meta-batch over all ranks.

    Mean and (biased) variance are computed in two passes over the union of every rank's batch (a differentiable
    all-reduce of the per-channel sums, so gradients flow through the other ranks' statistics as they would in one
    process); the running statistics move exactly as ``nn.BatchNorm2d``'s would on the whole batch (unbiased variance,
    ``momentum``).  Eval mode, or no process group: plain ``nn.BatchNorm2d``.  The parameters, buffers and state dict
    are those of ``nn.BatchNorm2d``; [`sync_batchnorm`][metalearn.distributed.sync_batchnorm] swaps it in for the
    duration of a training step.  Statistics are computed in float32 at least."""

    def forward(self, x: Tensor) -> Tensor:   # noqa: D102
        if not (self.training and active()):
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"x: expected (N, C, H, W), got {tuple(x.shape)}")
        dt = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(dt)
        c = x.shape[1]
        local_n = torch.tensor([float(x.shape[0] * x.shape[2] * x.shape[3])], dtype=dt, device=x.device)
        s = torch.cat([xf.sum(dim=(0, 2, 3)), local_n])
        s = _all_reduce_diff(s)
        n = s[c].detach()
        mean = s[:c] / n
        centred = xf - mean[None, :, None, None]
        var = _all_reduce_diff((centred * centred).sum(dim=(0, 2, 3))) / n
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                count = float(n)
                unbiased = var.detach() * (count / max(count - 1.0, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


@contextlib.contextmanager
def sync_batchnorm(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every ``nn.BatchNorm2d`` of ``module`` (exactly that type) that normalises with batch
    statistics behaves as [`DistributedBatchNorm2d`][metalearn.distributed.DistributedBatchNorm2d] (the object, its
    parameters and buffers unchanged; only its class is swapped, and restored after).  Nothing happens without a
    process group."""
    swapped = []
    if active():
        for m in module.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = DistributedBatchNorm2d
                swapped.append(m)
    try:
        yield module
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d


@contextlib.contextmanager
def task_share(learner: nn.Module, lo: int, hi: int, total: int) -> Iterator[nn.Module]:
    """A distributed training step of ``learner`` on tasks ``lo:hi`` of a meta-batch of ``total``.

    Inside, BatchNorm statistics are over the whole meta-batch
    ([`sync_batchnorm`][metalearn.distributed.sync_batchnorm]) and ``learner.task_shard = (lo, hi, total)``: a
    learner that draws random numbers per task, such as Siamese's distortions, draws them for the whole meta-batch
    and keeps its share, so the draws do not depend on the number of processes.

    Args:
        learner: The learner.
        lo: The first task of this process.
        hi: One past its last task.
        total: The number of tasks of the meta-batch.
    """
    old = getattr(learner, "task_shard", None)
    learner.task_shard = (lo, hi, total)
    try:
        with sync_batchnorm(learner):
            yield learner
    finally:
        learner.task_shard = old


__all__ = ["DistributedBatchNorm2d", "LossModule", "MetaBatchStep", "active", "all_gather", "all_reduce_grads",
           "all_reduce_sum", "any_true", "block_range", "broadcast_module", "broadcast_object", "check_shardable",
           "ddp", "describe", "device_for", "env_world_size", "first_failure", "gather_draws", "gather_rows",
           "init_from_env", "is_main", "local_rank", "on_main", "rank", "ranks_text", "shard_range", "shutdown",
           "sync_batchnorm", "task_share", "timeout_s", "weight_of_share", "world_size"]
