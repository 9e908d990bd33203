"""What the commands print: aligned tables for people, JSON for machines, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import typer

__all__ = ("echo_error", "echo_json", "echo_table", "shorten")

# Cells longer than this are cut in tables; --json always has the full text.
MAX_CELL = 60


def echo_json(data: Any) -> None:
    """Pretty JSON on stdout; values JSON does not know (datetimes, enums) become strings."""
    typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


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
    typer.echo(f"natspubsub: error: {message}", err=True)


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
        return ",".join(str(v) for v in value) or "-"
    return str(value)
