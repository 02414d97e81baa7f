"""Experiment-log hooks for [`metalearn.train.trainer.train`][metalearn.train.trainer.train] (``loggers=[...]``).

The trainer always writes ``metrics.jsonl``; a hook receives each record after that. TensorBoard is optional
(the ``[tb]`` extra) and off unless asked for (``metalearn train ... --tensorboard``):

```python
tb = TensorBoardLogger("runs/x/tb")
train(learner, sampler, cfg, "runs/x", loggers=[tb])
tb.close()
```
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from metalearn.extras import MissingExtraError


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` (one JSON object per line), in order; a missing file is empty.

    Tolerant of what a crash leaves: a last line cut off mid-write, blank lines, or anything that is not a JSON
    object is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def truncate_metrics(path: str | os.PathLike, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` logged at or before ``step``.

    That is what a run resumed from a checkpoint of that step continues from; drops the interrupted tail and any
    cut-off line. Atomic.

    Args:
        path: The ``metrics.jsonl`` file (nothing happens when it does not exist).
        step: The last step kept.
    """
    from metalearn.data.cache import atomic_write
    path = Path(path)
    if not path.exists():
        return
    keep = [rec for rec in read_metrics(path) if isinstance(rec.get("step", 0), (int, float))
            and rec.get("step", 0) <= step]
    with atomic_write(path, mode="w") as f:
        f.write("".join(json.dumps(rec) + "\n" for rec in keep))


def tag_for(key: str) -> str:
    """Metric key of a metrics.jsonl record -> TensorBoard tag: ``val_accuracy`` -> ``val/accuracy``,
    ``loss`` -> ``train/loss``, ``train_accuracy`` -> ``train/accuracy``."""
    if key.startswith("val_"):
        return "val/" + key[4:]
    if key.startswith("train_"):
        return "train/" + key[6:]
    return "train/" + key


class TensorBoardLogger:
    """Writes every numeric field of a record (except ``step``) as a scalar at ``record["step"]``."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingExtraError(
                "--tensorboard needs the optional package 'tensorboard', which is not installed; install the "
                "[tb] extra: pip install 'torch-metalearn[tb]' (or pip install -e '.[tb]' in a checkout)") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def __call__(self, record: dict) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(tag_for(key), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
