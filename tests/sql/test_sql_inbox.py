"""The SQL inbox on real databases (SQLite file, PostgreSQL) and a real nats-server.

The handler's effect is a row written through ``InboxSession``; the checks count those rows.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa
from faststream.nats import TestNatsBroker
from sqlalchemy.ext.asyncio import AsyncEngine
from support import consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import (
    BatchFailure,
    BatchSettings,
    DeadLetterQueue,
    EventMetadata,
    InboxKey,
    InboxSession,
    NatsPubsub,
    OutgoingEvent,
    PermanentError,
    RetryPolicy,
)
from faststream_natspubsub.sql import SqlInboxStore
from faststream_natspubsub.sql.inbox import SqlInboxTransaction
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

TOPIC = "order.created"
SUBJECT = f"test.orders.{TOPIC}"
DURABLE = consumer_name("payments", SUBJECT)

effects_metadata = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(255), nullable=False),
    sa.Column("consumer", sa.String(64), nullable=False, server_default="payments"),
)


@pytest.fixture
async def store(engine: AsyncEngine) -> SqlInboxStore:
    created = SqlInboxStore(engine)
    await created.create_tables()
    async with engine.begin() as connection:
        await connection.run_sync(effects_metadata.create_all)
    return created


async def effect_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        result = await connection.execute(sa.select(effects.c.event_id).order_by(effects.c.id))
        return list(result.scalars())


async def marks(store: SqlInboxStore) -> list[tuple[str, str, str]]:
    t = store.table
    async with store.engine.connect() as connection:
        result = await connection.execute(sa.select(t.c.consumer, t.c.topic, t.c.event_id))
        return sorted((r[0], r[1], r[2]) for r in result)


def payments_app(server: EmbeddedNatsServer, store: SqlInboxStore, **kwargs: Any) -> NatsPubsub:
    kwargs.setdefault("retry", RetryPolicy(max_attempts=5, backoff=(0.1,)))
    return NatsPubsub(new_broker(server), env="test", app="payments", inbox=store, **kwargs)


def orders_app(server: EmbeddedNatsServer) -> NatsPubsub:
    return NatsPubsub(new_broker(server), env="test", app="orders")


async def publish_copy(pubsub: NatsPubsub, event_id: str, copy: int) -> None:
    """The same event again under a new Nats-Msg-Id: JetStream stores it a second time."""
    envelope = {"event_id": event_id, "topic": TOPIC, "message": {"id": event_id}}
    await pubsub.broker.connection.jetstream().publish(
        SUBJECT, json.dumps(envelope).encode(), headers={"Nats-Msg-Id": f"{event_id}/{copy}"}
    )


async def idle(pubsub: NatsPubsub, durable: str = DURABLE) -> bool:
    return await consumer_idle(pubsub.broker.connection.jetstream(), "TEST_ORDERS", durable)


pytestmark = pytest.mark.nats


async def test_the_handlers_writes_commit_together_with_the_processed_mark(
    server: EmbeddedNatsServer, store: SqlInboxStore
) -> None:
    payments, orders = payments_app(server, store), orders_app(server)

    @payments.subscriber(TOPIC, app="orders")
    async def charge(body: dict[str, Any], session: InboxSession, meta: EventMetadata) -> None:
        await session.execute(effects.insert().values(event_id=meta.event_id))

    async with running(orders.broker, payments.broker):
        await orders.publish(TOPIC, {"id": 1}, event_id="evt-1")
        await wait_until(lambda: idle(payments), message="the consumer done")

    assert await effect_ids(store.engine) == ["evt-1"]
    assert await marks(store) == [(DURABLE, TOPIC, "evt-1")]


async def test_a_failed_handler_leaves_neither_effect_nor_mark_and_its_retry_takes_effect_once(
    server: EmbeddedNatsServer, store: SqlInboxStore
) -> None:
    payments, orders = payments_app(server, store), orders_app(server)
    attempts: list[int] = []

    @payments.subscriber(TOPIC, app="orders")
    async def charge(body: dict[str, Any], session: InboxSession, meta: EventMetadata) -> None:
        attempts.append(meta.deliveries)
        await session.execute(effects.insert().values(event_id=meta.event_id))
        if meta.deliveries == 1:
            raise ConnectionError("the card service is down")  # after the write

    async with running(orders.broker, payments.broker):
        await orders.publish(TOPIC, {"id": 1}, event_id="evt-1")
        await wait_until(lambda: len(attempts) == 2, message="the retry")
        await wait_until(lambda: idle(payments), message="the consumer done")

    assert await effect_ids(store.engine) == ["evt-1"]
    assert await marks(store) == [(DURABLE, TOPIC, "evt-1")]


async def test_a_copy_under_another_msg_id_runs_nothing_and_is_acknowledged(
    server: EmbeddedNatsServer, store: SqlInboxStore
) -> None:
    payments, orders = payments_app(server, store), orders_app(server)
    calls: list[str] = []

    @payments.subscriber(TOPIC, app="orders")
    async def charge(body: dict[str, Any], session: InboxSession, meta: EventMetadata) -> None:
        calls.append(meta.event_id)
        await session.execute(effects.insert().values(event_id=meta.event_id))

    async with running(orders.broker, payments.broker):
        await orders.publish(TOPIC, {"id": 1}, event_id="evt-1")
        await wait_until(lambda: calls == ["evt-1"], message="the first delivery")
        await publish_copy(orders, "evt-1", 1)
        await wait_until(lambda: payments.inbox is not None and payments.inbox.duplicates == 1)
        await wait_until(lambda: idle(payments), message="the copy acknowledged")

    assert calls == ["evt-1"]
    assert await effect_ids(store.engine) == ["evt-1"]


async def test_concurrent_copies_in_two_consumers_give_one_effect(
    server: EmbeddedNatsServer, store: SqlInboxStore
) -> None:
    # Two consumer processes (brokers) of the same durable, two workers each
    apps = [payments_app(server, store) for _ in range(2)]
    orders = orders_app(server)
    calls: list[str] = []

    for app in apps:

        @app.subscriber(TOPIC, app="orders", max_workers=2)
        async def charge(body: dict[str, Any], session: InboxSession, meta: EventMetadata) -> None:
            calls.append(meta.event_id)
            await session.execute(effects.insert().values(event_id=meta.event_id))
            await asyncio.sleep(0.3)  # the copies overlap while this transaction is open

    async with running(orders.broker, *(app.broker for app in apps)):
        await orders.publish(TOPIC, {"id": 1}, event_id="evt-1")
        for copy in range(3):
            await publish_copy(orders, "evt-1", copy)
        await wait_until(lambda: idle(apps[0]), timeout=20, message="every copy acknowledged")

    assert await effect_ids(store.engine) == ["evt-1"]
    assert await marks(store) == [(DURABLE, TOPIC, "evt-1")]


async def test_the_unique_key_decides_between_two_open_transactions(store: SqlInboxStore) -> None:
    key = InboxKey.of(DURABLE, TOPIC, "evt-1")
    first, second = store.begin(), store.begin()
    try:
        (won,) = await first.claim([key])
        await first.session.execute(effects.insert().values(event_id="evt-1"))
        # The second waits on the key (PostgreSQL) or on the write lock (SQLite)
        waiting = asyncio.ensure_future(second.claim([key]))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await first.commit()
        (lost,) = await waiting
    finally:
        await first.rollback()
        await second.rollback()

    assert (won, lost) == (True, False)
    assert await effect_ids(store.engine) == ["evt-1"]


async def test_after_a_rolled_back_holder_the_waiting_transaction_claims_the_event(
    store: SqlInboxStore,
) -> None:
    key = InboxKey.of(DURABLE, TOPIC, "evt-1")
    first, second = store.begin(), store.begin()
    try:
        await first.claim([key])
        waiting = asyncio.ensure_future(second.claim([key]))
        await asyncio.sleep(0.2)
        await first.rollback()  # the holder failed (or its process died)
        (claimed,) = await waiting
        await second.commit()
    finally:
        await second.rollback()

    assert claimed is True
    assert await store.is_processed(key)


async def test_a_batch_claims_with_one_statement_whatever_its_size_and_skips_duplicates(
    store: SqlInboxStore,
) -> None:
    """One round trip per batch, and on PostgreSQL one statement text for every size (one
    prepared statement): not an executemany, not a VALUES list as long as the batch."""
    statements: list[tuple[str, bool]] = []

    def note(_c: Any, _cur: Any, statement: str, _p: Any, _ctx: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            statements.append((statement, many))

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", note)
    try:
        outcomes = []
        for size in (3, 300):
            first = [InboxKey.of(DURABLE, TOPIC, f"evt-{size}-{n}") for n in range(size)]
            tx = store.begin()
            try:
                outcomes.append(await tx.claim([*first, first[0]]))  # an id twice in one batch
                await tx.commit()
            finally:
                await tx.rollback()
        tx = store.begin()  # a redelivery of the first batch, and one new event
        try:
            again = await tx.claim([first[1], InboxKey.of(DURABLE, TOPIC, "evt-new")])
        finally:
            await tx.rollback()
    finally:
        sa.event.remove(store.engine.sync_engine, "before_cursor_execute", note)

    assert [len(o) for o in outcomes] == [4, 301]
    assert all(o[:-1] == [True] * (len(o) - 1) and o[-1] is False for o in outcomes)
    assert again == [False, True]
    if store.dialect == "postgresql":
        assert len(statements) == 3
        assert len({text for text, _ in statements}) == 1
        assert not any(many for _, many in statements)
    else:
        assert len(statements) == 3  # SQLite: an executemany sent as one multi-row INSERT


async def test_each_durable_has_its_own_mark(
    server: EmbeddedNatsServer, store: SqlInboxStore
) -> None:
    payments, orders = payments_app(server, store), orders_app(server)

    for durable in ("charge", "notify"):

        @payments.subscriber(TOPIC, app="orders", durable=durable)
        async def handle(body: dict[str, Any], session: InboxSession, meta: EventMetadata) -> None:
            await session.execute(effects.insert().values(event_id=meta.event_id))

    async with running(orders.broker, payments.broker):
        await orders.publish(TOPIC, {"id": 1}, event_id="evt-1")
        await wait_until(lambda: idle(payments, "charge"), message="charge done")
        await wait_until(lambda: idle(payments, "notify"), message="notify done")

    assert await effect_ids(store.engine) == ["evt-1", "evt-1"]
    assert await marks(store) == [("charge", TOPIC, "evt-1"), ("notify", TOPIC, "evt-1")]


async def test_an_event_dead_lettered_leaves_no_mark_so_a_replay_can_run_it(
    server: EmbeddedNatsServer, store: SqlInboxStore
) -> None:
    payments, orders = payments_app(server, store), orders_app(server)

    @payments.subscriber(TOPIC, app="orders")
    async def charge(body: dict[str, Any], session: InboxSession, meta: EventMetadata) -> None:
        await session.execute(effects.insert().values(event_id=meta.event_id))
        raise PermanentError("card refused")

    async with running(orders.broker, payments.broker):
        await orders.publish(TOPIC, {"id": 1}, event_id="evt-1")
        dlq = DeadLetterQueue(payments.broker.connection.jetstream(), env="test", app="payments")

        async def dead_lettered() -> bool:
            return [r.event_id async for r in dlq.records()] == ["evt-1"]

        await wait_until(dead_lettered, message="the DLQ record")

    assert await effect_ids(store.engine) == []
    assert await marks(store) == []


@pytest.mark.slow
async def test_batch_mode_commits_the_batch_marks_with_the_handlers_writes(
    server: EmbeddedNatsServer, store: SqlInboxStore
) -> None:
    payments, orders = payments_app(server, store), orders_app(server)
    failed_once: set[str] = set()

    @payments.subscriber(TOPIC, app="orders", batch=BatchSettings(max_messages=50, max_wait=0.2))
    async def charge(bodies: list[dict[str, Any]], session: InboxSession) -> None:
        failures: dict[int | str, BaseException] = {}
        for index, body in enumerate(bodies):
            event_id = body["id"]
            if event_id == "evt-3" and event_id not in failed_once:
                failed_once.add(event_id)
                failures[index] = ConnectionError("try later")
                continue  # nothing written for a failed item
            await session.execute(effects.insert().values(event_id=event_id))
        if failures:
            raise BatchFailure(failures)

    async with running(orders.broker, payments.broker):
        for n in range(10):
            await orders.publish(TOPIC, {"id": f"evt-{n}"}, event_id=f"evt-{n}")
        await publish_copy(orders, "evt-5", 1)  # a duplicate inside the stream
        await wait_until(lambda: "evt-3" in failed_once, message="the failed item")
        await wait_until(lambda: idle(payments), timeout=20, message="every item settled")

    assert sorted(await effect_ids(store.engine)) == sorted(f"evt-{n}" for n in range(10))
    assert [m[2] for m in await marks(store)] == sorted(f"evt-{n}" for n in range(10))


class _HeldCommitStore(SqlInboxStore):
    """Its first commit waits until the test lets it go."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.go = asyncio.Event()
        self.commits = 0
        self.fail_first = False

    def begin(self) -> SqlInboxTransaction:
        return _HeldCommit(self, self._sessions())


class _HeldCommit(SqlInboxTransaction):
    async def commit(self) -> None:
        store = self._store
        assert isinstance(store, _HeldCommitStore)
        store.commits += 1
        if store.commits == 1:
            await store.go.wait()
            if store.fail_first:
                raise ConnectionError("the database went away during the commit")
        await super().commit()


async def _held_commit_apps(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> tuple[_HeldCommitStore, NatsPubsub, NatsPubsub]:
    """A held-commit store with its tables and the effects table; the payments and orders apps."""
    store = _HeldCommitStore(engine)
    await store.create_tables()
    async with engine.begin() as connection:
        await connection.run_sync(effects_metadata.create_all)
    return store, payments_app(server, store), orders_app(server)


async def test_the_next_batch_is_fetched_during_a_batch_commit_and_claims_after_it(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    store, payments, orders = await _held_commit_apps(server, engine)
    seen: list[list[str]] = []  # per batch: the effects its transaction sees before writing

    @payments.subscriber(TOPIC, app="orders", batch=BatchSettings(max_messages=5, max_wait=0.2))
    async def charge(bodies: list[dict[str, Any]], session: InboxSession) -> None:
        result = await session.execute(sa.select(effects.c.event_id).order_by(effects.c.id))
        seen.append(list(result.scalars()))
        for body in bodies:
            await session.execute(effects.insert().values(event_id=body["id"]))

    first = [f"evt-{n}" for n in range(5)]
    async with running(orders.broker):
        for n in range(10):
            await orders.publish(TOPIC, {"id": f"evt-{n}"}, event_id=f"evt-{n}")
        async with running(payments.broker):
            js = payments.broker.connection.jetstream()

            async def both_batches_delivered() -> bool:
                info = await js.consumer_info("TEST_ORDERS", DURABLE)
                return bool(info.num_pending == 0 and info.num_ack_pending == 10)

            # The first batch's commit is held: its items are not acknowledged, yet the
            # subscriber has fetched the second batch meanwhile.
            await wait_until(both_batches_delivered, message="the second batch fetched")
            assert seen == [[]]  # the second batch claims only after the first commit
            assert await effect_ids(engine) == []
            store.go.set()
            await wait_until(lambda: idle(payments), message="both batches acknowledged")

    assert seen == [[], first]  # the second batch's handler saw the first one's writes
    assert sorted(await effect_ids(engine)) == sorted(f"evt-{n}" for n in range(10))
    assert [m[2] for m in await marks(store)] == sorted(f"evt-{n}" for n in range(10))


async def test_a_stopping_subscriber_waits_for_the_batch_commit_in_flight_and_its_acks(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    store, payments, orders = await _held_commit_apps(server, engine)
    batches: list[list[str]] = []

    @payments.subscriber(TOPIC, app="orders", batch=BatchSettings(max_messages=5, max_wait=0.2))
    async def charge(bodies: list[dict[str, Any]], session: InboxSession) -> None:
        batches.append([body["id"] for body in bodies])
        for body in bodies:
            await session.execute(effects.insert().values(event_id=body["id"]))

    async with running(orders.broker):
        for n in range(3):
            await orders.publish(TOPIC, {"id": f"evt-{n}"}, event_id=f"evt-{n}")
        await payments.broker.start()
        try:
            await wait_until(lambda: store.commits == 1, message="the batch committing")
            stopping = asyncio.ensure_future(payments.broker.stop())
            await asyncio.sleep(0.2)
            store.go.set()
            await stopping
        finally:
            await payments.broker.stop()
        assert batches == [[f"evt-{n}" for n in range(3)]]  # one batch, its commit held
        # Acknowledged before the connection closed: nothing is delivered again. The server
        # applies acks off the connection's read loop, so its count may lag a moment; a lost
        # ack would keep them pending until ack_wait (30 s), far past this deadline.
        js = orders.broker.connection.jetstream()
        await wait_until(
            lambda: consumer_idle(js, "TEST_ORDERS", DURABLE),
            timeout=5,
            message="the batch acknowledged",
        )

    assert sorted(await effect_ids(engine)) == [f"evt-{n}" for n in range(3)]


async def test_a_batch_whose_commit_fails_off_its_task_is_retried_and_takes_effect_once(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    store, payments, orders = await _held_commit_apps(server, engine)
    store.fail_first = True
    store.go.set()
    calls: list[list[str]] = []

    @payments.subscriber(TOPIC, app="orders", batch=BatchSettings(max_messages=5, max_wait=0.2))
    async def charge(bodies: list[dict[str, Any]], session: InboxSession) -> None:
        calls.append([body["id"] for body in bodies])
        for body in bodies:
            await session.execute(effects.insert().values(event_id=body["id"]))

    async with running(orders.broker):
        for n in range(3):
            await orders.publish(TOPIC, {"id": f"evt-{n}"}, event_id=f"evt-{n}")
        async with running(payments.broker):
            await wait_until(lambda: len(calls) >= 2, message="the retry after the failed commit")
            await wait_until(lambda: idle(payments), message="every item acknowledged")

    ids = [f"evt-{n}" for n in range(3)]
    assert sorted(event_id for batch in calls for event_id in batch) == sorted(ids * 2)
    assert sorted(await effect_ids(engine)) == ids
    assert [m[2] for m in await marks(store)] == ids


async def test_a_batch_whose_handler_raises_rolls_back_every_write_and_mark(
    server: EmbeddedNatsServer, store: SqlInboxStore
) -> None:
    payments = payments_app(server, store, retry=RetryPolicy(max_attempts=5, backoff=(30,)))
    orders = orders_app(server)
    calls: list[int] = []

    @payments.subscriber(TOPIC, app="orders", batch=BatchSettings(max_messages=50, max_wait=0.2))
    async def charge(bodies: list[dict[str, Any]], session: InboxSession) -> None:
        calls.append(len(bodies))
        for body in bodies:
            await session.execute(effects.insert().values(event_id=body["id"]))
        raise ConnectionError("the whole batch failed")

    async with running(orders.broker, payments.broker):
        for n in range(3):
            await orders.publish(TOPIC, {"id": f"evt-{n}"}, event_id=f"evt-{n}")
        await wait_until(lambda: sum(calls) >= 3, message="the batch handled")
        await asyncio.sleep(0.2)

    assert await effect_ids(store.engine) == []
    assert await marks(store) == []


async def test_the_sql_inbox_works_under_test_nats_broker(store: SqlInboxStore) -> None:
    payments = NatsPubsub(new_broker_in_memory(), env="test", app="payments", inbox=store)
    calls: list[str] = []

    @payments.subscriber(TOPIC, app="orders")
    async def charge(body: dict[str, Any], session: InboxSession, meta: EventMetadata) -> None:
        calls.append(meta.event_id)
        await session.execute(effects.insert().values(event_id=meta.event_id))

    async with TestNatsBroker(payments.broker) as broker:
        for _ in range(2):  # the same event twice
            await broker.publish(OutgoingEvent(message={"id": 1}, event_id="evt-1"), SUBJECT)

    assert calls == ["evt-1"]
    assert await effect_ids(store.engine) == ["evt-1"]


def new_broker_in_memory() -> Any:
    from faststream.nats import NatsBroker

    return NatsBroker(logger=None)


async def test_marks_older_than_the_ttl_are_purged(engine: AsyncEngine) -> None:
    store = SqlInboxStore(engine, ttl=3600)
    await store.create_tables()
    tx = store.begin()
    await tx.claim([InboxKey.of("d", TOPIC, "old"), InboxKey.of("d", TOPIC, "new")])
    await tx.commit()
    await tx.rollback()

    kept = await store.purge()
    purged = await store.purge(older_than=0.0)

    assert (kept, purged) == (0, 2)


def test_inbox_key_parts_from_received_bytes_are_bounded_and_printable() -> None:
    long_id = "x" * 10_000
    key = InboxKey.of("durable", TOPIC, long_id)
    nul = InboxKey.of("durable", TOPIC, "evt\x00-1")

    assert key.event_id.startswith("sha256-") and len(key.event_id) == 71
    assert nul.event_id.startswith("sha256-")
    assert InboxKey.of("durable", TOPIC, "evt-1").event_id == "evt-1"
