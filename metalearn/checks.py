"""Argument checks at the public API boundary: one helper per kind of value, so every entry point words its
messages the same way (the argument's name, what was expected, what came).

Every helper raises [`ArgumentError`][metalearn.checks.ArgumentError], which is both a ``ValueError`` and a
``TypeError`` (a wrong type and
a value out of range are both "a bad argument"; callers may catch either):

```python
from metalearn.checks import check_int, check_float
steps = check_int("steps", steps, minimum=0)         # 1.5, "3", True -> ArgumentError naming 'steps'
lr = check_float("lr", lr, minimum=0, strict=True)   # "0.1", nan, inf, -1 -> ArgumentError naming 'lr'
```
"""
from __future__ import annotations

import math
import numbers
import operator

import torch


class ArgumentError(ValueError, TypeError):
    """A bad argument to a public function or class: the message names it and what was expected."""


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int (Python, numpy and 0-d integer tensor ints; not bool, not float).

    Args:
        name: The argument's name, for the message.
        value: The value to check.
        minimum: The smallest value allowed (None: no bound).
        maximum: The largest value allowed (None: no bound).

    Raises:
        ArgumentError: Not an integer, or outside ``[minimum, maximum]``.
    """
    if isinstance(value, bool) or isinstance(value, float) or (isinstance(value, torch.Tensor)
                                                              and value.is_floating_point()):
        raise ArgumentError(f"{name}: expected an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ArgumentError(f"{name}: expected an integer, got {value!r} ({type(value).__name__})") from None
    if minimum is not None and number < minimum or maximum is not None and number > maximum:
        bounds = (f">= {minimum}" if maximum is None else f"<= {maximum}" if minimum is None
                  else f"in [{minimum}, {maximum}]")
        raise ArgumentError(f"{name}: expected an integer {bounds}, got {number}")
    return number


def check_float(name: str, value: object, minimum: float | None = None, maximum: float | None = None, *,
                strict: bool = False, finite: bool = True) -> float:
    """``value`` as a Python float (any real number; not bool, not a string).

    Args:
        name: The argument's name, for the message.
        value: The value to check.
        minimum: The smallest value allowed (None: no bound).
        maximum: The largest value allowed (None: no bound).
        strict: ``> minimum`` instead of ``>= minimum``.
        finite: Refuse infinities (NaN is always refused).

    Raises:
        ArgumentError: Not a real number, NaN, infinite (with ``finite``), or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name}: expected a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if math.isnan(number) or (finite and math.isinf(number)):
        raise ArgumentError(f"{name}: expected a finite number, got {number}")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        raise ArgumentError(f"{name}: expected a number {'>' if strict else '>='} {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ArgumentError(f"{name}: expected a number <= {maximum}, got {number}")
    return number


def check_bool(name: str, value: object) -> bool:
    """``value`` as a bool (True/False or a numpy bool; not 0/1, not a string)."""
    if isinstance(value, bool):
        return value
    try:
        import numpy as np
        if isinstance(value, np.bool_):
            return bool(value)
    except ImportError:  # pragma: no cover
        pass
    raise ArgumentError(f"{name}: expected True or False, got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_device(name: str, value: object) -> torch.device:
    """A device spec -> ``torch.device``.

    Args:
        name: The argument's name, for the message.
        value: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
            ``torch.device``.

    Raises:
        ArgumentError: Another spec, CUDA when it is not available, or N not below the number of GPUs.
    """
    if isinstance(value, torch.device):
        spec = str(value)
    elif isinstance(value, str):
        spec = value.strip()
    else:
        raise ArgumentError(f"{name}: expected auto, cpu, cuda or cuda:N, got {value!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = spec.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index not in ("", "0")):
        raise ArgumentError(f"{name}: expected auto, cpu, cuda or cuda:N, got {value!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"{name}: {spec!r} was asked for, but CUDA is not available on this machine "
                                "(use cpu or auto)")
        if index and int(index) >= torch.cuda.device_count():
            raise ArgumentError(f"{name}: {spec!r} was asked for, but this machine has "
                                f"{torch.cuda.device_count()} GPU(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return torch.device(spec)
