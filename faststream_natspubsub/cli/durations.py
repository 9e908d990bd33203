"""Durations (``30m``, ``1h30m``, ``7d``) and points in time (ISO-8601 or a duration ago)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Final

__all__ = ("parse_duration", "parse_since")

_UNITS: Final = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
# "ms" before "m" and "s": the alternation takes the first unit that matches.
_PART: Final = r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)"
_DURATION_RE: Final = re.compile(f"(?:{_PART})+")
_PART_RE: Final = re.compile(_PART)
_DURATION_HINT: Final = "use a number and a unit, e.g. 30m, 1h30m, 7d (units: ms, s, m, h, d, w)"


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"30m"``, ``"1h30m"``, ``"2d"``, ``"1w"`` as a :class:`timedelta`.

    Raises ``ValueError`` with a message meant for the command line.
    """
    value = text.strip().lower().replace(" ", "")
    if not _DURATION_RE.fullmatch(value):
        raise ValueError(f"invalid duration {text!r}: {_DURATION_HINT}")
    return sum(
        (float(number) * _UNITS[unit] for number, unit in _PART_RE.findall(value)),
        timedelta(),
    )


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """A point in time: ISO-8601 (``2025-01-17T10:30:00Z``, a date) or a duration ago (``1h``).

    A time without an offset is read as UTC, the zone every timestamp of this package uses.
    Raises ``ValueError`` with a message meant for the command line.
    """
    value = text.strip()
    if _DURATION_RE.fullmatch(value.lower().replace(" ", "")):
        return (now or datetime.now(timezone.utc)) - parse_duration(value)
    iso = value[:-1] + "+00:00" if value[-1:] in ("z", "Z") else value  # 3.10 rejects "Z"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use an ISO-8601 time (2025-01-17T10:30:00Z) "
            "or a duration ago (30m, 1h, 2d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
