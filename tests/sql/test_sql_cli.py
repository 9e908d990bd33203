"""``natspubsub outbox status|retry|purge-failed`` on real databases, as a child process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqldb import Database

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.cli.outbox import async_url
from faststream_natspubsub.sql import Outbox, OutboxOptions


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def natspubsub(*args: str) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSPUBSUB_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "faststream_natspubsub.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def target(database: Database) -> tuple[str, ...]:
    url = database.url.replace("+asyncpg", "").replace("+aiosqlite", "")
    return ("--database", url, *(("--schema", database.schema) if database.schema else ()))


async def outbox_with_rows(engine: AsyncEngine, app: str) -> tuple[Outbox, list[str]]:
    """Three rows of ``app``: one published, two failed."""
    pubsub = NatsPubsub(
        NatsBroker(), env="test", app=app, outbox=OutboxOptions(engine=engine, relay=False)
    )
    assert pubsub.outbox is not None
    outbox = pubsub.outbox
    await outbox.create_tables()
    async with AsyncSession(engine) as session, session.begin():
        event_ids = [await outbox.add(session, "order.created", {"n": n}) for n in range(3)]
    a, b, c = await outbox.queries.claim(owner="r", stream=outbox.stream, limit=3, lease=30)
    await outbox.queries.settle(
        owner="r", published=[a.id], failed=[(b.id, "too large"), (c.id, "no stream")], retry=[]
    )
    return outbox, event_ids


@pytest.mark.slow
async def test_status_reports_rows_per_stream_and_the_failed_rows(
    database: Database, engine: AsyncEngine
) -> None:
    _, event_ids = await outbox_with_rows(engine, "orders")

    result = await natspubsub("outbox", "status", *target(database), "--json")
    table = await natspubsub("outbox", "status", *target(database))

    assert result.code == 0, result
    data = result.json()
    assert data["streams"] == [
        {
            "stream": "TEST_ORDERS",
            "pending": 0,
            "published": 1,
            "failed": 2,
            "oldest_pending_age": None,
        }
    ]
    assert [(r["event_id"], r["last_error"]) for r in data["failed"]] == [
        (event_ids[1], "too large"),
        (event_ids[2], "no stream"),
    ]
    assert table.code == 0
    assert "TEST_ORDERS" in table.out and "too large" in table.out


@pytest.mark.slow
async def test_retry_and_purge_failed_rows_of_one_app(
    database: Database, engine: AsyncEngine
) -> None:
    orders, event_ids = await outbox_with_rows(engine, "orders")
    billing, _ = await outbox_with_rows(engine, "billing")
    app = ("--env", "test", "--app", "orders")

    retried = await natspubsub("outbox", "retry", event_ids[1], *target(database), *app, "--json")
    refused = await natspubsub("outbox", "purge-failed", *target(database), *app)
    purged = await natspubsub("outbox", "purge-failed", "--yes", *target(database), *app)

    assert (retried.code, retried.json()) == (0, {"retried": 1})
    assert refused.code == 2 and "--yes" in refused.err
    assert (purged.code, purged.out.strip()) == (0, "purged 1 failed row")
    after = await orders.status()
    assert (after.pending, after.published, after.failed) == (1, 1, 0)
    assert (await billing.status()).failed == 2  # another app's rows are left alone


@pytest.mark.slow
async def test_a_missing_table_is_a_one_line_error(database: Database, engine: AsyncEngine) -> None:
    async with engine.begin():
        pass  # the database exists, the table does not

    result = await natspubsub("outbox", "status", *target(database), "--table-prefix", "nope_")

    assert result.code == 1, result
    (line,) = result.err.strip().splitlines()
    assert line.startswith("natspubsub: error: no table ")
    assert line.endswith(
        "nope_outbox in this database (check --database, --table-prefix and --schema)"
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_plain_database_urls_get_the_asyncio_driver(given: str, expected: str) -> None:
    assert async_url(given) == expected
