"""``natspubsub outbox status|retry|purge-failed``: the transactional outbox in a database.

These commands talk to the database only (``--database``, or ``NATSPUBSUB_DATABASE_URL``);
``--env`` and ``--app`` narrow them to one app's stream. They need the ``[sql]`` extra.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from ..subjects import stream_name
from .options import EXIT_FAILED, CliError, CommonOptions, common_options, run
from .output import echo_json, echo_table, shorten

if TYPE_CHECKING:
    from ..sql.queries import OutboxQueries

__all__ = ("app", "async_url")

app = typer.Typer(
    help="The transactional outbox in a database: status, retry and purge of failed rows.",
    no_args_is_help=True,
)

_DATABASE: Final = "Database"
# The package's default table prefix (kept here: the CLI imports without the [sql] extra).
_DEFAULT_PREFIX: Final = "natspubsub_"
# Plain URLs get the asyncio driver SQLAlchemy needs.
_ASYNC_DRIVERS: Final = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database",
        "-d",
        envvar="NATSPUBSUB_DATABASE_URL",
        help="SQLAlchemy URL of the database (postgresql://... or sqlite:///path).",
        rich_help_panel=_DATABASE,
        show_default=False,
    ),
]
TablePrefix = Annotated[
    str,
    typer.Option(
        "--table-prefix", help="Prefix of the outbox table's name.", rich_help_panel=_DATABASE
    ),
]
Schema = Annotated[
    str | None,
    typer.Option(
        "--schema",
        help="PostgreSQL schema of the table (default: the search path).",
        rich_help_panel=_DATABASE,
        show_default=False,
    ),
]
EventIds = Annotated[
    list[str] | None,
    typer.Argument(metavar="[EVENT_ID]...", help="Only these events.", show_default=False),
]


def async_url(url: str) -> str:
    """``url`` with the asyncio driver: ``postgresql://`` → ``postgresql+asyncpg://``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise CliError("--database must be a URL such as postgresql://... or sqlite:///path")
    return f"{_ASYNC_DRIVERS.get(scheme, scheme)}://{rest}"


@app.command()
@common_options
def status(
    options: CommonOptions,
    database: DatabaseUrl = None,
    table_prefix: TablePrefix = _DEFAULT_PREFIX,
    schema: Schema = None,
    limit: Annotated[int, typer.Option(min=0, help="Failed rows to list.")] = 20,
) -> None:
    """Rows per stream: pending, published (still kept), failed; and the failed rows."""
    streams, failed = run(_status(options, database, table_prefix, schema, limit))
    if options.json:
        echo_json({"streams": streams, "failed": failed})
        return
    echo_table(
        ("STREAM", "PENDING", "PUBLISHED", "FAILED", "OLDEST PENDING"),
        [
            (s["stream"], s["pending"], s["published"], s["failed"], _age(s["oldest_pending_age"]))
            for s in streams
        ],
    )
    if failed:
        typer.echo("")
        echo_table(
            ("ID", "EVENT ID", "SUBJECT", "ATTEMPTS", "ERROR"),
            [
                (r["id"], r["event_id"], r["subject"], r["attempts"], shorten(r["last_error"]))
                for r in failed
            ],
        )


@app.command()
@common_options
def retry(
    options: CommonOptions,
    event_ids: EventIds = None,
    database: DatabaseUrl = None,
    table_prefix: TablePrefix = _DEFAULT_PREFIX,
    schema: Schema = None,
) -> None:
    """Make failed rows pending again (all, or the given events); the relay publishes them."""
    ids = list(event_ids or ())
    count = run(_change(options, database, table_prefix, schema, ids, purge=False))
    _report(options, "retried", count, ids)


@app.command("purge-failed")
@common_options
def purge_failed(
    options: CommonOptions,
    event_ids: EventIds = None,
    database: DatabaseUrl = None,
    table_prefix: TablePrefix = _DEFAULT_PREFIX,
    schema: Schema = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete; required.")] = False,
) -> None:
    """Delete failed rows for good (all, or the given events)."""
    if not yes:
        raise CliError("purge-failed deletes outbox rows for good; add --yes to confirm")
    ids = list(event_ids or ())
    count = run(_change(options, database, table_prefix, schema, ids, purge=True))
    _report(options, "purged", count, ids)


def _report(options: CommonOptions, verb: str, count: int, ids: list[str]) -> None:
    if options.json:
        echo_json({verb: count})
    else:
        typer.echo(f"{verb} {count} failed row{'' if count == 1 else 's'}")
    if ids and count < len(ids):
        raise typer.Exit(EXIT_FAILED)  # some named events had no failed row


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _is_file(path: str) -> bool:
    return Path(path).is_file()


def _stream_of(options: CommonOptions) -> str | None:
    if options.env is None and options.app is None:
        return None
    return stream_name(options.require_env(), options.require_app())


# -- async bodies -----------------------------------------------------------------------


@asynccontextmanager
async def _queries(
    database: str | None, prefix: str, schema: str | None
) -> AsyncIterator[OutboxQueries]:
    if not database:
        raise CliError("missing --database (or NATSPUBSUB_DATABASE_URL)")
    try:
        from ..sql._require import require_sql_extra

        require_sql_extra("natspubsub outbox")
        import sqlalchemy as sa
        from sqlalchemy.exc import ArgumentError, SQLAlchemyError
        from sqlalchemy.ext.asyncio import create_async_engine

        from ..sql.dialects import dialect_of
        from ..sql.queries import OutboxQueries
        from ..sql.schema import outbox_table
    except ImportError as exc:
        raise CliError(str(exc)) from None
    url = async_url(database)
    try:
        table = outbox_table(sa.MetaData(schema=schema), prefix)
        engine = create_async_engine(url)
        dialect = dialect_of(engine)
    except (ArgumentError, ValueError, ImportError) as exc:
        raise CliError(f"--database: {exc}") from None
    path = engine.url.database
    if dialect == "sqlite" and path and path != ":memory:" and not _is_file(path):
        await engine.dispose()  # connecting would create an empty file at a mistyped path
        raise CliError(f"--database: no SQLite file {path}", EXIT_FAILED)
    try:
        async with engine.connect() as connection:
            exists = await connection.run_sync(
                lambda sync: sa.inspect(sync).has_table(table.name, schema=schema)
            )
        if not exists:
            raise CliError(
                f"no table {table.fullname} in this database (check --database, --table-prefix "
                "and --schema)",
                EXIT_FAILED,
            )
        yield OutboxQueries(engine, table, dialect)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise CliError(f"database: {reason}") from None
    except OSError as exc:
        raise CliError(f"database unreachable: {exc}") from None
    finally:
        await engine.dispose()


async def _status(
    options: CommonOptions, database: str | None, prefix: str, schema: str | None, limit: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stream = _stream_of(options)
    async with _queries(database, prefix, schema) as queries:
        counts = await queries.counts(stream)
        failed = await queries.failed_rows(stream, limit) if limit else []
    now = datetime.now(timezone.utc)
    streams = [
        {
            "stream": c.stream,
            "pending": c.pending,
            "published": c.published,
            "failed": c.failed,
            "oldest_pending_age": None
            if c.oldest_pending_at is None
            else round(max((now - c.oldest_pending_at).total_seconds(), 0.0), 3),
        }
        for c in counts
    ]
    return streams, failed


async def _change(
    options: CommonOptions,
    database: str | None,
    prefix: str,
    schema: str | None,
    event_ids: list[str],
    *,
    purge: bool,
) -> int:
    stream = _stream_of(options)
    async with _queries(database, prefix, schema) as queries:
        if purge:
            return await queries.purge_failed(stream=stream, event_ids=event_ids)
        return await queries.retry_failed(stream=stream, event_ids=event_ids)
