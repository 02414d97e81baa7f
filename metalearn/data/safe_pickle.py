"""Read data pickles without running pickled code.

``pickle.load`` calls whatever callable a pickle names, so a crafted file runs code the moment it is read. Some
data sets are only published as pickles (the CIFAR-10 python release, learn2learn's miniImageNet cache); they hold
plain containers and numpy arrays, nothing else. [`load`][metalearn.data.safe_pickle.load] reads such a file with an
unpickler that resolves
only the few globals plain data needs:

* builtins containers and scalars (``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``bytes``,
  ``bytearray``, ``str``, ``int``, ``float``, ``complex``, ``bool``, ``slice``, ``range``);
* numpy arrays, dtypes and scalars (``numpy.ndarray``, ``numpy.dtype``, the ``_reconstruct`` / ``scalar`` /
  ``_frombuffer`` functions numpy's own pickles call, under both the numpy 1 and numpy 2 module names);
* ``_codecs.encode`` for the latin-1 text that protocol-2 pickles use to carry bytes.

Anything else (``os.system``, ``builtins.eval``, any class) raises
[`UnsafePickleError`][metalearn.data.safe_pickle.UnsafePickleError] naming the
global, before it is called. Object arrays are refused too (their items would bypass the check).

Examples:
    ```python
    from metalearn.data.safe_pickle import load
    with open("cifar-10-batches-py/test_batch", "rb") as f:
        batch = load(f, encoding="bytes", where="test_batch")   # {b"data": uint8 array, b"labels": [...]}
    ```
"""
from __future__ import annotations

import builtins
import codecs
import io
import pickle
from typing import IO, Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle asks for a global that plain data never needs (it would run code when loaded)."""


_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float",
                       "complex", "bool", "slice", "range"})


def _numpy_function(name: str) -> Any:
    """numpy's own pickle helpers, looked up where the installed numpy keeps them."""
    import importlib
    for module in ("numpy._core.multiarray", "numpy.core.multiarray", "numpy._core.numeric", "numpy.core.numeric"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        fn = getattr(mod, name, None)
        if fn is not None:
            return fn
    raise UnsafePickleError(f"numpy.{name} is not available in this numpy")  # pragma: no cover


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"numpy array reconstruction of {subtype!r}: only numpy.ndarray is allowed")
    return _numpy_function("_reconstruct")(subtype, shape, dtype)


def _scalar(dtype, *args):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r}: only plain numeric dtypes are allowed")
    return _numpy_function("scalar")(dtype, *args)


def _frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy array of dtype {dtype!r}: only plain numeric dtypes are allowed")
    return _numpy_function("_frombuffer")(buf, dtype, shape, order)


def _encode(text, encoding="utf-8", errors="strict"):
    if not isinstance(text, str) or codecs.lookup(encoding).name not in ("latin-1", "iso8859-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}: only latin-1 text is allowed")
    return codecs.encode(text, encoding, errors)


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
_NUMPY = {"_reconstruct": _reconstruct, "scalar": _scalar, "_frombuffer": _frombuffer}


class RestrictedUnpickler(pickle.Unpickler):
    """A `pickle.Unpickler` that resolves only the globals of plain data (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module in _NUMPY_MODULES and name in _NUMPY:
            return _NUMPY[name]
        if module == "_codecs" and name == "encode":
            return _encode
        raise UnsafePickleError(f"refusing to load {module}.{name}: the file is not plain data (a data pickle "
                                "holds only containers, numbers, strings and numpy arrays)")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent references (not plain data)")


def _check_no_objects(obj: Any, depth: int = 0) -> None:
    """Refuse object arrays anywhere in the result (their elements were never type-checked as arrays)."""
    if depth > 64:
        raise UnsafePickleError("data nested more than 64 levels deep")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError("refusing a numpy array of Python objects (dtype=object)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_no_objects(k, depth + 1)
            _check_no_objects(v, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            if isinstance(v, (np.ndarray, dict, list, tuple, set, frozenset)):
                _check_no_objects(v, depth + 1)


def load(f: IO[bytes], *, encoding: str = "ASCII", where: str = "pickle") -> Any:
    """Unpickle plain data from the binary file ``f`` without running pickled code.

    Args:
        f: a binary file object positioned at the pickle.
        encoding: how protocol-2 ``str`` from Python 2 is decoded (``"bytes"`` keeps it as bytes, as the
            CIFAR-10 release needs).
        where: the file's name, for messages.

    Raises:
        UnsafePickleError: the pickle names a global outside the allowed set (see the module docstring).
        ValueError: the pickle is truncated or malformed.
    """
    try:
        obj = RestrictedUnpickler(f, encoding=encoding).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}: {e}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
            MemoryError) as e:
        raise ValueError(f"{where}: not a readable pickle, truncated or corrupted? ({type(e).__name__}: {e})"
                         ) from None
    try:
        _check_no_objects(obj)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}: {e}") from None
    return obj


def loads(data: bytes, *, encoding: str = "ASCII", where: str = "pickle") -> Any:
    """[`load`][metalearn.data.safe_pickle.load] from bytes."""
    return load(io.BytesIO(data), encoding=encoding, where=where)
