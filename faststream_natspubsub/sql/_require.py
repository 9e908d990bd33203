"""The ``[sql]`` extra: a clear error when SQLAlchemy is not installed."""

from __future__ import annotations

import importlib.util
from typing import Final

__all__ = ("EXTRA_HINT", "require_sql_extra")

EXTRA_HINT: Final = (
    "the SQL outbox and inbox need the [sql] extra: pip install 'faststream-natspubsub[sql]'"
)


def require_sql_extra(feature: str) -> None:
    """Raise :class:`ImportError` naming the extra when SQLAlchemy's asyncio part is missing."""
    if (
        importlib.util.find_spec("sqlalchemy") is None
        or importlib.util.find_spec("greenlet") is None
    ):
        raise ImportError(f"{feature}: {EXTRA_HINT}")
