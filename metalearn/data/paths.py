"""Where data and caches live: one path setting each, explicit argument first, then the environment.

* data root: ``METALEARN_DATA`` (the folder holding ``omniglot/``, ``miniimagenet/``, ...)
* cache dir: ``METALEARN_CACHE`` (decoded uint8 caches), default ``~/.cache/metalearn``
"""
from __future__ import annotations

import os
from pathlib import Path


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else $METALEARN_DATA; a clear error if neither is set or it is missing."""
    if root is None:
        env = os.environ.get("METALEARN_DATA")
        if not env:
            raise FileNotFoundError(
                "no data root: pass root=/path/to/data (CLI: --set data.root=PATH) or set METALEARN_DATA")
        root = env
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data root {str(path)!r} is not a directory")
    return path


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache directory (created if needed): ``cache`` if given, else $METALEARN_CACHE, else ~/.cache/metalearn."""
    if cache is None:
        cache = os.environ.get("METALEARN_CACHE") or Path.home() / ".cache" / "metalearn"
    path = Path(cache).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
