"""Markup from the standard library: every value is escaped unless it is already :class:`Html`.

Records are untrusted: a header may hold ``<script>``, a terminal escape or a right-to-left
override. Values are HTML-escaped, and characters that could hide or disguise text
(control, bidirectional, zero-width, lone surrogates) are shown as ``\\xNN`` / ``\\uNNNN``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Final
from urllib.parse import urlencode

__all__ = (
    "Html",
    "age",
    "escape",
    "escape_block",
    "format_bytes",
    "format_count",
    "format_time",
    "join",
    "pretty_json",
    "render",
    "url",
)

# Characters shown as escapes: C0 and C1 controls, DEL, bidi and zero-width marks,
# line/paragraph separators, BOM, surrogates (invalid in UTF-8 output).
_HIDDEN: Final = (
    "\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ud800-\udfff"
)
_HIDDEN_RE: Final = re.compile(f"[{_HIDDEN}]")
_BLOCK_KEEP: Final = frozenset("\n\t")
# Longest text rendered from one value; records bound their own fields, forged ones may not.
MAX_RENDERED: Final = 100_000


class Html(str):
    """Markup that is trusted as is (built by this module from escaped parts)."""

    __slots__ = ()


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _visible_in_block(match: re.Match[str]) -> str:
    char = match.group()
    return char if char in _BLOCK_KEEP else _visible(match)


def _text(value: object) -> str:
    text = value if isinstance(value, str) else "" if value is None else str(value)
    if len(text) > MAX_RENDERED:
        text = text[:MAX_RENDERED] + f"... [{len(text) - MAX_RENDERED} more characters]"
    return text


def escape(value: object) -> Html:
    """One line of text: escaped, every hidden or control character (newlines too) visible."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(_HIDDEN_RE.sub(_visible, _text(value)), quote=True))


def escape_block(value: object) -> Html:
    """Multi-line text (a traceback, JSON): like :func:`escape` but keeps newlines and tabs."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(_HIDDEN_RE.sub(_visible_in_block, _text(value)), quote=True))


def render(template: str, /, **values: object) -> Html:
    """``template`` with ``{name}`` fields filled; values that are not :class:`Html` escaped."""
    return Html(template.format_map({name: escape(value) for name, value in values.items()}))


def join(parts: Iterable[Html], separator: str = "") -> Html:
    """Markup parts one after another."""
    return Html(separator.join(parts))


def url(params: Mapping[str, object]) -> str:
    """A query-only URL (``?view=dlq&...``): it resolves against the console's own path,
    wherever the console is mounted. Empty values are left out."""
    kept = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    return "?" + urlencode(kept)


def pretty_json(value: Any) -> str:
    """Indented JSON; values JSON cannot hold are shown as text."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def format_time(moment: datetime | None) -> str:
    """``2025-01-17 10:30:00 UTC``; ``-`` when unknown."""
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """``3 min ago`` style."""
    if moment is None:
        return ""
    seconds = ((now or datetime.now(timezone.utc)) - moment).total_seconds()
    return f"{duration(seconds)} ago" if seconds >= 0 else "in the future"


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 20 min``, ``2 d 4 h``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def format_count(value: int | None) -> str:
    """``12,345``; ``-`` when unknown."""
    return "-" if value is None else f"{value:,}"


def format_bytes(value: int) -> str:
    """``1.5 MB`` style."""
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
