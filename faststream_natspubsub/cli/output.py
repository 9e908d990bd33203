"""What the commands print: aligned tables for people, JSON for machines, one-line errors.

Everything printed may come from a record or a header that anyone could have written, so
control characters (terminal escapes, carriage returns, bidirectional overrides) are shown
escaped, never sent to the terminal: ``\\x1b`` prints as the four characters ``\\x1b``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final

import typer

__all__ = ("echo", "echo_error", "echo_json", "echo_table", "echo_warning", "safe", "shorten")

# Cells longer than this are cut in tables; --json always has the full text.
MAX_CELL = 60
# C0 and C1 controls, DEL, the Unicode format characters that reorder or hide text, and
# lone surrogates (JSON can hold them; a terminal's encoder cannot write them).
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
# What JSON itself leaves unescaped (it escapes C0 controls inside strings).
_UNSAFE_IN_JSON: Final = re.compile(
    "[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
_UNSAFE_KEEPING_LINES: Final = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)


def safe(text: Any, *, keep_newlines: bool = False) -> str:
    """``text`` as a string with every control character escaped (``\\n`` too, unless kept)."""
    pattern = _UNSAFE_KEEPING_LINES if keep_newlines else _UNSAFE
    return pattern.sub(_escape, str(text))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def echo(text: Any = "", *, keep_newlines: bool = False) -> None:
    """One line (or, with ``keep_newlines``, a block) on stdout, escaped."""
    typer.echo(safe(text, keep_newlines=keep_newlines))


def echo_json(data: Any) -> None:
    """Pretty JSON on stdout; values JSON does not know (datetimes, enums) become strings.

    JSON escapes C0 controls itself; the others are escaped as ``\\uXXXX``, which keeps the
    output valid JSON with the same values.
    """
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    typer.echo(_UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Plain aligned columns on stdout: stable for grep and awk, no terminal width guessing."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *cells]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        typer.echo(line.rstrip())


def echo_error(message: str) -> None:
    """The single line a failed command prints on stderr."""
    typer.echo(f"natspubsub: error: {safe(message)}", err=True)


def echo_warning(message: str) -> None:
    """One line on stderr about something the command skipped or could not finish."""
    typer.echo(f"natspubsub: warning: {safe(message)}", err=True)


def shorten(text: str | None, limit: int = MAX_CELL) -> str:
    """The first line of ``text``, cut to ``limit`` characters."""
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return safe(",".join(str(v) for v in value)) or "-"
    return safe(value)
