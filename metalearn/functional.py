"""The functional core: a model is a function of plain parameter dicts.

Parameters and buffers are ``dict[str, Tensor]`` ([`metalearn.types.Params`][metalearn.types.Params]); a model is
called as ``functional_call(model, (params, buffers), x)``.  Nothing here clones or patches a module: an inner
loop makes *new* dicts, and the module's own tensors stay untouched.

Examples:
    ```python
    params, buffers = params_and_buffers(model)
    head = select(params, "head")                  # names of the parameters an ANIL inner loop adapts
    fast, slow = partition(params, head)
    logits = call(model, combine(fast, slow), buffers, x)
    ```
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalearn.types import Params

ParamFilter = Union[None, str, Sequence[str], Callable[[str, Tensor], bool]]
"""Which parameters an inner loop adapts: ``None`` or ``"all"`` (every parameter), a name prefix such as
``"head"`` (the parameters of that submodule), a sequence of prefixes, or ``fn(name, tensor) -> bool``."""


def params_and_buffers(model: nn.Module) -> tuple[Params, Params]:
    """The module's own parameters and buffers as two dicts (the live tensors, nothing copied)."""
    return dict(model.named_parameters()), dict(model.named_buffers())


def call(model: nn.Module, params: Params, buffers: Params | None, *args, **kwargs):
    """``model(*args, **kwargs)`` with ``params`` and ``buffers`` in place of the module's own tensors.

    Returns what ``model.forward(*args, **kwargs)`` returns.

    Args:
        model: The module whose ``forward`` runs.
        params: Every parameter of the model by name, exactly ([`combine`][metalearn.functional.combine] the
            adapted and the frozen ones first).
        buffers: Buffers by name (None: the module's own).
        *args (object): Positional arguments of ``forward``.
        **kwargs (object): Keyword arguments of ``forward``.

    Raises:
        ValueError: ``params`` misses a parameter of the model or names one it does not have.
    """
    expected = {n for n, _ in model.named_parameters()}
    if params.keys() != expected:
        missing, unknown = sorted(expected - params.keys()), sorted(params.keys() - expected)
        raise ValueError(f"params: names do not match the model's parameters (missing {missing}, "
                         f"unknown {unknown})")
    tensors = dict(params) if not buffers else {**buffers, **params}
    return functional_call(model, tensors, args, kwargs, tie_weights=True, strict=False)


def _prefix_match(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def select(params: Params, spec: ParamFilter = None) -> list[str]:
    """Names in ``params`` (in order) chosen by ``spec``.

    Args:
        params: The parameters (name -> tensor).
        spec: See [`ParamFilter`][metalearn.functional.ParamFilter]; None or ``"all"`` chooses every name.

    Raises:
        TypeError: A ``spec`` of another kind.

    Examples:
        >>> select({"body.w": w, "head.w": v, "head.b": b}, "head")
        ['head.w', 'head.b']
    """
    if spec is None or spec == "all":
        return list(params)
    if isinstance(spec, str):
        return [n for n in params if _prefix_match(n, spec)]
    if callable(spec):
        return [n for n, t in params.items() if spec(n, t)]
    if isinstance(spec, Iterable):
        prefixes = list(spec)
        if not all(isinstance(p, str) for p in prefixes):
            raise TypeError(f"filter: expected names or prefixes (str), got {prefixes!r}")
        return [n for n in params if any(_prefix_match(n, p) for p in prefixes)]
    raise TypeError(f"filter: expected None, 'all', a prefix, a list of prefixes or a callable, got {spec!r}")


def partition(params: Params, names: Iterable[str]) -> tuple[Params, Params]:
    """Split ``params`` into (the ``names`` entries, the rest); an unknown name is a ``ValueError``."""
    names = list(names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"names: {unknown} are not in params (known: {list(params)})")
    chosen = set(names)
    return {n: params[n] for n in names}, {n: t for n, t in params.items() if n not in chosen}


def combine(*dicts: Params) -> Params:
    """Merge disjoint dicts; a name present in two of them is a ``ValueError``."""
    out: Params = {}
    for d in dicts:
        clash = out.keys() & d.keys()
        if clash:
            raise ValueError(f"combine: {sorted(clash)} appear in more than one dict")
        out.update(d)
    return out


def check_trainable(params: Params, names: Sequence[str], what: str = "adapt filter") -> None:
    """Raise a clear ``ValueError`` if ``names`` is empty or names a tensor that does not require grad."""
    if not names:
        raise ValueError(f"{what} selects no parameters; the model's parameters are {list(params)}")
    frozen = [n for n in names if not params[n].requires_grad]
    if frozen:
        raise ValueError(f"{what} selects parameters that do not require grad: {frozen} (the meta-gradient "
                         "could not reach them; set requires_grad=True or leave them out of the filter)")


def check_vmap_safe(model: nn.Module, second_order: bool = True) -> None:
    """Raise if ``model`` holds a normalisation layer that cannot be vmapped over tasks.

    ``torch.func.vmap`` through ``F.batch_norm`` (``nn.BatchNorm*`` with batch statistics, ``nn.InstanceNorm*``)
    and ``F.layer_norm`` (``nn.LayerNorm``) gives wrong *second-order* gradients (forward and first order are
    right; measured in float64 against a loop over tasks by benchmarks/vmap_norm_check.py: 0.6% to 5% off), so
    the vmapped meta-gradient of such a model is silently wrong.  A layer that updates running statistics in
    training mode cannot write per-task statistics into one shared buffer either.  ``nn.GroupNorm`` and
    [`metalearn.nn.BatchNorm2d`][metalearn.nn.norm.BatchNorm2d] (primitive ops) are exact under vmap; or run the
    tasks in a loop.

    Args:
        model: The module to check.
        second_order: Whether the meta-gradient is second order; for first order only layers that update
            running statistics are refused.

    Raises:
        ValueError: Naming the layer and the alternatives.
    """
    for name, m in model.named_modules():
        where = name or type(model).__name__
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            raise ValueError(
                f"model: {where} is a torch.nn {type(m).__name__} that updates running statistics in training "
                "mode, which vmap over tasks cannot do. Use metalearn.nn.BatchNorm2d (batch statistics, "
                "primitive ops), track_running_stats=False, or vmap=False (a loop over tasks)")
        if not second_order:
            continue
        batch_stats = isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
        if batch_stats or isinstance(m, (nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)):
            raise ValueError(
                f"model: {where} is a torch.nn {type(m).__name__}; vmap through it gives wrong second-order "
                "meta-gradients. Use metalearn.nn.BatchNorm2d (primitive ops) or nn.GroupNorm, "
                "first_order=True, or vmap=False (a loop over tasks)")
