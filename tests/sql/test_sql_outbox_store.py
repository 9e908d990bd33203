"""The outbox table against real databases (SQLite file, PostgreSQL): add, claim, settle.

No NATS here: these are the statements the relay and the operators rely on.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa
from faststream.nats import NatsBroker
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from faststream_natspubsub import (
    EnvelopeCodec,
    EnvelopeError,
    MessageTooLargeError,
    NatsPubsub,
    SubjectError,
)
from faststream_natspubsub.sql import Outbox, OutboxOptions
from faststream_natspubsub.sql.queries import Retry


class Order(BaseModel):
    id: str
    total: float


def new_outbox(engine: AsyncEngine, **options: Any) -> Outbox:
    codec = options.pop("codec", None)
    pubsub = NatsPubsub(
        NatsBroker(),
        env="test",
        app="orders",
        codec=codec,
        outbox=OutboxOptions(engine=engine, relay=False, **options),
    )
    assert pubsub.outbox is not None
    return pubsub.outbox


@pytest.fixture
async def outbox(engine: AsyncEngine) -> Outbox:
    created = new_outbox(engine)
    await created.create_tables()
    return created


async def rows(outbox: Outbox) -> list[dict[str, Any]]:
    t = outbox.table
    async with outbox.engine.connect() as connection:
        result = await connection.execute(sa.select(t).order_by(t.c.id))
        return [dict(row) for row in result.mappings()]


async def add_committed(outbox: Outbox, count: int) -> list[str]:
    async with AsyncSession(outbox.engine) as session, session.begin():
        return [await outbox.add(session, "order.created", {"n": n}) for n in range(count)]


async def test_add_inserts_one_row_in_the_callers_transaction_and_returns_the_event_id(
    outbox: Outbox,
) -> None:
    async with AsyncSession(outbox.engine) as session, session.begin():
        event_id = await outbox.add(
            session,
            "order.created",
            Order(id="ORD-1", total=9.5),
            metadata={"correlation_id": "req-1"},
        )
        # Given the transaction is still open, another connection sees nothing yet
        assert await rows(outbox) == [] or outbox.dialect == "sqlite"

    (row,) = await rows(outbox)
    envelope = json.loads(row["payload"])
    assert row["event_id"] == event_id == envelope["event_id"]
    assert row["subject"] == "test.orders.order.created"
    assert row["stream"] == "TEST_ORDERS"
    assert row["status"] == "pending"
    assert envelope["message"] == {"id": "ORD-1", "total": 9.5}
    assert envelope["metadata"]["correlation_id"] == "req-1"
    assert envelope["metadata"]["app_name"] == "orders"
    assert json.loads(row["headers"]) == {
        "content-type": "application/json",
        "correlation_id": "req-1",  # FastStream's header agrees with the envelope
    }


async def test_a_rolled_back_transaction_leaves_no_row(outbox: Outbox) -> None:
    async with AsyncSession(outbox.engine) as session:
        await outbox.add(session, "order.created", {"n": 1})
        await session.rollback()

    assert await rows(outbox) == []


async def test_a_caller_supplied_event_id_is_kept(outbox: Outbox) -> None:
    async with AsyncSession(outbox.engine) as session, session.begin():
        event_id = await outbox.add(session, "order.created", {"n": 1}, event_id="order-1/created")

    assert event_id == "order-1/created"
    assert [row["event_id"] for row in await rows(outbox)] == ["order-1/created"]


@pytest.mark.parametrize(
    ("topic", "message", "event_id", "error"),
    [
        ("order..created", {"n": 1}, None, SubjectError),
        ("order.*", {"n": 1}, None, SubjectError),
        ("order.created", [1, 2], None, EnvelopeError),
        ("order.created", {"n": 1}, "x" * 256, EnvelopeError),
        ("order.created", {"n": 1}, "bad\nid", EnvelopeError),
    ],
)
async def test_invalid_input_raises_the_errors_of_publish_and_inserts_nothing(
    outbox: Outbox, topic: str, message: Any, event_id: str | None, error: type[Exception]
) -> None:
    async with AsyncSession(outbox.engine) as session, session.begin():
        with pytest.raises(error):
            await outbox.add(session, topic, message, event_id=event_id)

    assert await rows(outbox) == []


async def test_a_message_over_the_size_limit_raises_message_too_large(engine: AsyncEngine) -> None:
    outbox = new_outbox(engine, codec=EnvelopeCodec(max_message_size=200))
    await outbox.create_tables()

    async with AsyncSession(engine) as session, session.begin():
        with pytest.raises(MessageTooLargeError):
            await outbox.add(session, "order.created", {"blob": "x" * 500})

    assert await rows(outbox) == []


async def test_claims_return_rows_in_id_order_and_lock_out_another_relay(outbox: Outbox) -> None:
    await add_committed(outbox, 5)
    queries = outbox.queries

    first = await queries.claim(owner="a", stream=outbox.stream, limit=3, lease=30)
    # While relay a holds a lease, relay b claims nothing (windows go out one at a time)
    second = await queries.claim(owner="b", stream=outbox.stream, limit=3, lease=30)
    # and relay a goes on with the next window
    third = await queries.claim(owner="a", stream=outbox.stream, limit=3, lease=30)

    ids = [row.id for row in first]
    assert ids == sorted(ids)
    assert len(first) == 3
    assert second == []
    assert [row.id for row in third] == [r["id"] for r in await rows(outbox)][3:]


async def test_rows_of_a_relay_whose_lease_ran_out_are_taken_over_not_stranded(
    outbox: Outbox,
) -> None:
    await add_committed(outbox, 2)
    queries = outbox.queries
    held = await queries.claim(owner="dead", stream=outbox.stream, limit=10, lease=0.3)

    await asyncio.sleep(0.4)  # the holder died; its lease runs out
    taken = await queries.claim(owner="alive", stream=outbox.stream, limit=10, lease=30)

    assert [row.id for row in taken] == [row.id for row in held]
    # the dead relay's late settle changes nothing: the rows are no longer its own
    await queries.settle(owner="dead", published=[row.id for row in held], failed=[], retry=[])
    assert {row["status"] for row in await rows(outbox)} == {"pending"}


async def test_concurrent_claims_never_hand_one_row_to_two_relays(outbox: Outbox) -> None:
    await add_committed(outbox, 40)
    queries = outbox.queries
    claimed: dict[str, list[int]] = {}

    async def relay(owner: str) -> None:
        mine = claimed.setdefault(owner, [])
        for _ in range(10):
            window = await queries.claim(owner=owner, stream=outbox.stream, limit=4, lease=30)
            mine.extend(row.id for row in window)
            await queries.settle(owner=owner, published=[r.id for r in window], failed=[], retry=[])

    await asyncio.gather(*(relay(f"relay-{n}") for n in range(4)))

    all_ids = [row_id for ids in claimed.values() for row_id in ids]
    assert len(all_ids) == len(set(all_ids)) == 40
    assert {row["status"] for row in await rows(outbox)} == {"published"}


async def test_settle_records_published_failed_and_retried_rows(outbox: Outbox) -> None:
    await add_committed(outbox, 3)
    queries = outbox.queries
    a, b, c = await queries.claim(owner="r", stream=outbox.stream, limit=3, lease=30)

    await queries.settle(
        owner="r",
        published=[a.id],
        failed=[(b.id, "too large for the server")],
        retry=[Retry(c.id, 60.0, "timeout")],
    )

    by_id = {row["id"]: row for row in await rows(outbox)}
    assert by_id[a.id]["status"] == "published"
    assert by_id[a.id]["published_at"] is not None
    assert (by_id[b.id]["status"], by_id[b.id]["last_error"]) == (
        "failed",
        "too large for the server",
    )
    assert (by_id[c.id]["status"], by_id[c.id]["attempts"]) == ("pending", 1)
    # the retried row waits for its backoff
    assert await queries.claim(owner="r", stream=outbox.stream, limit=3, lease=30) == []


async def test_status_retry_and_purge_of_failed_rows(outbox: Outbox) -> None:
    event_ids = await add_committed(outbox, 3)
    queries = outbox.queries
    a, b, c = await queries.claim(owner="r", stream=outbox.stream, limit=3, lease=30)
    await queries.settle(owner="r", published=[a.id], failed=[(b.id, "x"), (c.id, "y")], retry=[])

    before = await outbox.status()
    retried = await outbox.retry_failed([event_ids[1]])
    purged = await outbox.purge_failed()
    after = await outbox.status()

    assert (before.pending, before.published, before.failed) == (0, 1, 2)
    assert (retried, purged) == (1, 1)
    assert (after.pending, after.published, after.failed) == (1, 1, 0)
    assert after.oldest_pending_age is not None and after.oldest_pending_age >= 0


async def test_published_rows_are_deleted_after_the_retention(outbox: Outbox) -> None:
    await add_committed(outbox, 2)
    queries = outbox.queries
    a, b = await queries.claim(owner="r", stream=outbox.stream, limit=2, lease=30)
    await queries.settle(owner="r", published=[a.id], failed=[], retry=[])

    kept = await queries.purge_published(older_than=3600)
    await asyncio.sleep(0.05)
    purged = await queries.purge_published(older_than=0.01)

    assert (kept, purged) == (0, 1)
    assert [row["id"] for row in await rows(outbox)] == [b.id]


async def test_each_app_claims_only_the_rows_of_its_own_stream(engine: AsyncEngine) -> None:
    orders = new_outbox(engine)
    await orders.create_tables()
    other = NatsPubsub(
        NatsBroker(), env="test", app="billing", outbox=OutboxOptions(engine=engine, relay=False)
    ).outbox
    assert other is not None
    async with AsyncSession(engine) as session, session.begin():
        await other.add(session, "invoice.sent", {"n": 1})
        await orders.add(session, "order.created", {"n": 2})

    claimed = await orders.queries.claim(owner="r", stream=orders.stream, limit=10, lease=30)

    assert [row.subject for row in claimed] == ["test.orders.order.created"]
