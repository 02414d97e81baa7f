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


class _RecordingWriter:
    """Passes writes to ``f`` and keeps the OSError one of them raised: torch.save reports a failed write as a
    RuntimeError ("[enforce fail ...] unexpected pos ..."), which hides a full disk."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns ``path``.

    See [`atomic_write`][metalearn.data.cache.atomic_write]: an interrupted save keeps the previous file.

    Args:
        obj: What to save.
        path: The file.

    Raises:
        DiskFullError: The disk is full ([`DiskFullError`][metalearn.data.cache.DiskFullError]).
    """
    path = Path(path)
    with atomic_write(path, mode="wb") as f:
        w = _RecordingWriter(f)
        try:
            torch.save(obj, w)
        except RuntimeError:
            if w.error is not None:   # the real cause: an OSError of the file (ENOSPC -> DiskFullError)
                raise w.error from None
            raise
    return path


def locate_checkpoint(path: str | os.PathLike, default: str, flag: str = "--checkpoint") -> Path:
    """The checkpoint file that ``path`` names: a run directory (its ``default`` file, e.g. ``best.pt``) or a
    ``.pt`` file inside one.

    Args:
        path: A run directory or a ``.pt`` file in one.
        default: The file to take from a run directory (``"best.pt"`` or ``"last.pt"``).
        flag: The command-line flag named in the messages.

    Raises:
        FileNotFoundError: Naming what is missing: the path itself (a typo), the run directory's
            ``config.yaml`` (not a run directory) or its ``default`` checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"{flag}: {str(path)!r} is not a run directory (it has no config.yaml)")
        ck = path / default
        if not ck.is_file():
            held = sorted(p.name for p in path.glob("*.pt"))
            raise FileNotFoundError(f"{flag}: run directory {str(path)!r} has no {default}"
                                    + (f" (it holds {', '.join(held)}; name one of them)" if held else
                                       " (has its training written a checkpoint yet?)"))
        return ck
    if not path.exists():
        held = sorted(p.name for p in path.parent.glob("*.pt")) if (path.parent / "config.yaml").is_file() else []
        raise FileNotFoundError(f"{flag}: {str(path)!r} does not exist"
                                + (f" (the run directory {str(path.parent)!r} holds {', '.join(held)})" if held
                                   else ""))
    if not (path.parent / "config.yaml").is_file():
        raise FileNotFoundError(f"{flag}: {str(path)!r} is not inside a run directory ({str(path.parent)!r} has no "
                                "config.yaml)")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by [`atomic_save`][metalearn.train.checkpoint.atomic_save], with
    ``weights_only`` loading (tensors and plain data only: a checkpoint cannot run code).

    A run's ``best.pt`` holds ``model`` (the learner's state dict), ``meta`` (the resolved config, its hash, the
    learner, the model section and the image shape), ``step`` and ``val_accuracy``; ``last.pt`` adds the optimizer,
    scheduler and sampler states for ``--resume``.

    Args:
        path: The ``.pt`` file.
        map_location: Where the tensors are loaded (``torch.load``'s ``map_location``).

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A truncated or corrupted file, or not a metalearn checkpoint (the message names the file).
    """
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
