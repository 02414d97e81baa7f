"""Where data and caches live: one path setting each, explicit argument first, then the environment.

* data root: ``METALEARN_DATA`` (the folder holding ``omniglot/``, ``miniimagenet/``, ...)
* cache dir: ``METALEARN_CACHE`` (decoded uint8 caches), default ``~/.cache/metalearn``
"""
from __future__ import annotations

import os
from pathlib import Path


#: how each command names the two settings (for messages)
DATA_ROOT_SETTINGS = ("METALEARN_DATA, or --set data.root=PATH (train, eval, bench, ttt), --data-dir PATH "
                      "(metalearn data), root=PATH (Python)")
CACHE_DIR_SETTINGS = ("METALEARN_CACHE, or --set data.cache_dir=PATH (train, eval, bench, ttt), --cache-dir PATH "
                      "(metalearn data), cache_dir=PATH (Python)")


class SettingError(ValueError):
    """A path setting (data root, cache directory) that cannot be used; the message names the setting."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else $METALEARN_DATA; a clear error if neither is set or it is missing."""
    source = "the data root"
    if root is None:
        env = os.environ.get("METALEARN_DATA")
        if not env:
            raise FileNotFoundError(f"no data root: set {DATA_ROOT_SETTINGS}")
        root, source = env, "the data root from METALEARN_DATA"
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{source} {str(path)!r} is not a directory (set {DATA_ROOT_SETTINGS})")
    return path


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache directory (created if needed): ``cache`` if given, else $METALEARN_CACHE, else ~/.cache/metalearn.

    Raises [`SettingError`][metalearn.data.paths.SettingError] naming the setting when it cannot be created."""
    if cache is not None:
        source = "the cache directory"
    elif os.environ.get("METALEARN_CACHE"):
        cache, source = os.environ["METALEARN_CACHE"], "the cache directory from METALEARN_CACHE"
    else:
        cache, source = Path.home() / ".cache" / "metalearn", "the default cache directory"
    path = Path(cache).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingError(f"{source} {str(path)!r} cannot be created ({e.strerror or e}); choose a writable "
                           f"folder with {CACHE_DIR_SETTINGS}") from None
    return path
