"""The outbox and inbox tables, their ``MetaData`` (for Alembic) and their DDL.

Table names are ``<prefix>outbox`` and ``<prefix>inbox``; the prefix is ``natspubsub_`` unless
configured. Put them in your own ``MetaData`` with :func:`outbox_table` / :func:`inbox_table`
(Alembic then sees them with your models), or take :func:`tables_metadata`.
"""

from __future__ import annotations

import re
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

__all__ = (
    "DEFAULT_PREFIX",
    "FAILED",
    "PENDING",
    "PUBLISHED",
    "inbox_table",
    "outbox_table",
    "render_ddl",
    "tables_metadata",
)

DEFAULT_PREFIX: Final = "natspubsub_"
# Outbox row states. A row is inserted PENDING; the relay moves it to PUBLISHED (deleted after
# the retention) or FAILED (refused for good; ``natspubsub outbox retry`` makes it PENDING).
PENDING: Final = "pending"
PUBLISHED: Final = "published"
FAILED: Final = "failed"

_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")
# SQLite's rowid alias (INTEGER PRIMARY KEY) keeps ids increasing; BIGINT elsewhere.
_ID_TYPE: Final = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME: Final = sa.DateTime(timezone=True)


def _checked(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"table prefix must match {_PREFIX.pattern}, not {prefix!r}")
    return prefix


def outbox_table(metadata: sa.MetaData, prefix: str = DEFAULT_PREFIX) -> sa.Table:
    """The outbox table in ``metadata`` (created there if absent)."""
    name = f"{_checked(prefix)}outbox"
    if name in metadata.tables:
        return metadata.tables[name]
    return sa.Table(
        name,
        metadata,
        sa.Column("id", _ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(255), nullable=False),
        # The stream the event must be stored in; each app's relay publishes its own rows.
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        # A JSON object of the headers taken at add time (traceparent, Content-Encoding...).
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default=sa.text(f"'{PENDING}'")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        # Seconds since the epoch on the database's clock: when a relay may take the row
        # (a lease or a backoff pushes it forward).
        sa.Column(
            "available_at", sa.Float(precision=53), nullable=False, server_default=sa.text("0")
        ),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("published_at", _TIME, nullable=True),
        sa.Index(f"ix_{name}_claim", "stream", "status", "id"),
        sa.Index(f"ix_{name}_published_at", "published_at"),
        sa.Index(f"ix_{name}_event_id", "event_id"),
    )


def inbox_table(metadata: sa.MetaData, prefix: str = DEFAULT_PREFIX) -> sa.Table:
    """The SQL inbox's table in ``metadata`` (created there if absent).

    One row per processed event and consuming durable; its primary key is what makes two
    concurrent copies of an event give one effect.
    """
    name = f"{_checked(prefix)}inbox"
    if name in metadata.tables:
        return metadata.tables[name]
    return sa.Table(
        name,
        metadata,
        sa.Column("consumer", sa.String(255), primary_key=True),
        sa.Column("topic", sa.String(255), primary_key=True),
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("processed_at", _TIME, nullable=False),
        sa.Index(f"ix_{name}_processed_at", "processed_at"),
    )


def tables_metadata(
    prefix: str = DEFAULT_PREFIX, *, outbox: bool = True, inbox: bool = True
) -> sa.MetaData:
    """A new ``MetaData`` holding the outbox and/or inbox tables."""
    metadata = sa.MetaData()
    if outbox:
        outbox_table(metadata, prefix)
    if inbox:
        inbox_table(metadata, prefix)
    return metadata


_DIALECTS: Final = {"postgresql": postgresql.dialect, "sqlite": sqlite.dialect}


def render_ddl(dialect: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``CREATE TABLE`` and ``CREATE INDEX`` statements of both tables for ``dialect``.

    The docs show this output (a test keeps them equal), so the DDL cannot drift from the
    tables the code uses.
    """
    try:
        engine_dialect = _DIALECTS[dialect]()
    except KeyError:
        raise ValueError(f"dialect must be one of {sorted(_DIALECTS)}, not {dialect!r}") from None
    statements: list[str] = []
    for table in tables_metadata(prefix).sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=engine_dialect)).strip())
        statements.extend(
            str(CreateIndex(index).compile(dialect=engine_dialect)).strip()
            for index in sorted(table.indexes, key=lambda i: str(i.name))
        )
    text = "".join(f"{statement};\n\n" for statement in statements)
    lines = [line.rstrip().replace("\t", "    ") for line in text.splitlines()]
    return "\n".join(lines).rstrip() + "\n"
