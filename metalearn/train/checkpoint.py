"""Checkpoints: written atomically (temp file + fsync + rename), loaded with clear errors.

An interrupted save never replaces the previous good file: the new bytes go to a temporary file in the same
directory, which is renamed over the target only once it is complete and flushed to disk.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from metalearn.data.cache import atomic_write

FORMAT = 1


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    path = Path(path)
    with atomic_write(path, mode="wb") as f:
        torch.save(obj, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save`; truncated/corrupted files raise ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file; their text is not quoted
        # (weights_only refuses code and any object a metalearn checkpoint never holds: UnpicklingError)
        why = "not tensors and plain data" if isinstance(e, pickle.UnpicklingError) else type(e).__name__
        raise ValueError(f"checkpoint {str(path)!r} is not a metalearn checkpoint or is corrupted (truncated or "
                         f"corrupted, or {why}); it was not loaded") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a metalearn checkpoint of format {FORMAT}")
    return state
