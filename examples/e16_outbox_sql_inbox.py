"""Two services, each with its own database: the outbox on one side, the SQL inbox on the other.

``python examples/e16_outbox_sql_inbox.py`` runs it on a throw-away ``nats-server`` with two
SQLite files (PostgreSQL works the same: ``postgresql+asyncpg://...``). Needs the ``[sql]``
extra.

``orders`` saves an order and its ``order.created`` event in one transaction: the outbox's
relay publishes the event once the transaction commits; a rolled-back order publishes
nothing. ``payments`` charges each order once: the payment row and the inbox's processed mark
commit together, so a copy of the event (another ``Nats-Msg-Id``) charges nothing.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from faststream.nats import NatsBroker
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from faststream_natspubsub import EventMetadata, InboxSession, NatsPubsub
from faststream_natspubsub.sql import SqlInboxStore, use_sqlite_wal
from faststream_natspubsub.testing import EmbeddedNatsServer


class Order(BaseModel):
    order_id: str
    total: float


# The services' own tables (each in its own database).
orders_db = sa.MetaData()
orders_table = sa.Table(
    "orders",
    orders_db,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("total", sa.Float, nullable=False),
)
payments_db = sa.MetaData()
payments_table = sa.Table(
    "payments",
    payments_db,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(255), nullable=False),
)


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    placed: list[str]
    """Event ids ``orders`` added to its outbox (committed)."""
    published: int
    """Rows the relay published."""
    payments: list[tuple[str, str]]
    """``(order_id, event_id)`` rows in the payments database."""
    duplicates: int
    """Deliveries the SQL inbox acknowledged without the handler."""


async def main(url: str, work: Path) -> Outcome:
    """Place two orders (a third is rolled back), then publish a copy of the first event."""
    # --8<-- [start:orders]
    orders_engine = create_async_engine(f"sqlite+aiosqlite:///{work / 'orders.db'}")
    use_sqlite_wal(orders_engine)  # recommended on SQLite
    orders = NatsPubsub(NatsBroker(url, logger=None), env="dev", app="orders", outbox=orders_engine)
    outbox = orders.outbox  # set when outbox= is given
    assert outbox is not None
    await outbox.create_tables()  # natspubsub_outbox; or outbox.metadata in Alembic

    async def place(order: Order) -> str:
        async with AsyncSession(orders_engine) as session, session.begin():
            await session.execute(orders_table.insert().values(order.model_dump()))
            return await outbox.add(session, "order.created", order)
        # committed here: the relay publishes the event (Nats-Msg-Id = the event id)

    # --8<-- [end:orders]

    # --8<-- [start:payments]
    payments_engine = create_async_engine(f"sqlite+aiosqlite:///{work / 'payments.db'}")
    use_sqlite_wal(payments_engine)
    inbox = SqlInboxStore(payments_engine)
    payments = NatsPubsub(NatsBroker(url, logger=None), env="dev", app="payments", inbox=inbox)
    await inbox.create_tables()  # natspubsub_inbox

    @payments.subscriber("order.created", app="orders")
    async def charge(order: Order, meta: EventMetadata, session: InboxSession) -> None:
        # commits together with the inbox's processed mark, or not at all
        await session.execute(
            payments_table.insert().values(order_id=order.order_id, event_id=meta.event_id)
        )

    # --8<-- [end:payments]

    for engine, metadata in ((orders_engine, orders_db), (payments_engine, payments_db)):
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
    await orders.broker.start()  # starts the relay too
    await payments.broker.start()
    try:
        placed = [await place(Order(order_id=f"ORD-{n}", total=10.0 * n)) for n in (1, 2)]
        # --8<-- [start:rollback]
        async with AsyncSession(orders_engine) as session:
            await session.execute(orders_table.insert().values(order_id="ORD-3", total=30.0))
            await outbox.add(session, "order.created", Order(order_id="ORD-3", total=30))
            await session.rollback()  # neither the order nor its event exists
        # --8<-- [end:rollback]
        await _until(lambda: _count(payments_engine, payments_table), 2)  # both charged

        # The first event again under another Nats-Msg-Id: stored twice, charged once.
        js = orders.broker.connection.jetstream()
        stored = await js.get_msg("DEV_ORDERS", 1)
        await js.publish(
            "dev.orders.order.created", stored.data or b"", headers={"Nats-Msg-Id": "copy"}
        )
        inbox_middleware = payments.inbox
        assert inbox_middleware is not None

        async def skipped() -> int:
            return inbox_middleware.duplicates

        await _until(skipped, 1)
        async with payments_engine.connect() as connection:
            rows = await connection.execute(
                sa.select(payments_table.c.order_id, payments_table.c.event_id)
            )
            paid = sorted((row[0], row[1]) for row in rows)
        published = outbox.relay.published
        duplicates = inbox_middleware.duplicates
    finally:
        await payments.broker.stop()
        await orders.broker.stop()
        await orders_engine.dispose()
        await payments_engine.dispose()
    return Outcome(placed=placed, published=published, payments=paid, duplicates=duplicates)


async def _count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
        )


async def _until(read: Callable[[], Awaitable[int]], expected: int, timeout: float = 15.0) -> None:
    """Wait until ``await read()`` returns ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await read() != expected:
        if loop.time() > deadline:
            raise TimeoutError(f"still not {expected} after {timeout}s")
        await asyncio.sleep(0.05)


async def _run() -> None:
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url, Path(tempfile.mkdtemp()))
    print(f"orders placed {outcome.placed}; the relay published {outcome.published}")
    print(f"payments: {outcome.payments}; copies skipped by the inbox: {outcome.duplicates}")


if __name__ == "__main__":
    asyncio.run(_run())
