"""Optional dependencies (setup.cfg extras): import them on demand, with an error that names the extra."""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package is needed and not installed; the message names the extra that provides it."""


def require(module: str, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise [`MissingExtraError`][metalearn.extras.MissingExtraError].

    Args:
        module: The module to import.
        extra: The extra that provides it; the error names ``metalearn[extra]``.
        purpose: What needs it, for the message.
        package: The package to name (default: the top-level name of ``module``).

    Raises:
        MissingExtraError: The module is not installed.

    Examples:
        >>> require("yaml", "dev", "reading task files").__name__
        'yaml'
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module.split(".")[0]
        raise MissingExtraError(
            f"{purpose} needs the optional package {package!r}, which is not installed; install the "
            f"[{extra}] extra: pip install 'torch-metalearn[{extra}]' (or pip install -e '.[{extra}]' in a checkout)"
        ) from None
