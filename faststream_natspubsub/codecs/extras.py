"""Optional dependencies of the codecs, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingExtraError

__all__ = ("require",)


def require(extra: str, module: str) -> ModuleType:
    """Import ``module`` of the ``extra`` extra; :class:`MissingExtraError` when it is absent."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(extra, module) from exc
