"""The outbox and the SQL inbox when processes die: real SIGKILLs, real databases.

- A relay SIGKILLed in the middle of its windows, again and again: every committed row is
  stored exactly once in the stream (counted by event id), none is lost.
- A service SIGKILLed inside the transaction that added events: nothing of it is published.
- An SQL-inbox consumer SIGKILLed between its write and its commit, again and again: one
  effect per event.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import nats
import pytest
import sqlalchemy as sa
from faststream.nats import NatsBroker
from harness.apps import consumer_idle, publisher
from harness.children import Child
from harness.consumers import ConsumerProcess, stop_all
from harness.history import History
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqldb import Database
from support import new_broker, running, wait_until

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.sql import Outbox, OutboxOptions
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = [pytest.mark.fault, pytest.mark.nats, pytest.mark.slow]

ENV, APP, TOPIC = "fault", "orders", "order.placed"
STREAM = "FAULT_ORDERS"


def writer_outbox(engine: AsyncEngine) -> Outbox:
    """The outbox of the orders app, without a relay (the test process only adds rows)."""
    pubsub = NatsPubsub(
        NatsBroker(), env=ENV, app=APP, outbox=OutboxOptions(engine=engine, relay=False)
    )
    assert pubsub.outbox is not None
    return pubsub.outbox


async def stored_count(js: JetStreamContext) -> int:
    try:
        return int((await js.stream_info(STREAM)).state.messages)
    except NotFoundError:
        return 0


async def stored_msg_ids(js: JetStreamContext) -> list[str]:
    """The ``Nats-Msg-Id`` of every message in the stream."""
    state = (await js.stream_info(STREAM)).state
    found: list[str] = []
    for start in range(state.first_seq, state.last_seq + 1, 200):
        seqs = range(start, min(start + 200, state.last_seq + 1))
        msgs = await asyncio.gather(*(js.get_msg(STREAM, seq) for seq in seqs))
        found.extend((msg.headers or {})["Nats-Msg-Id"] for msg in msgs)
    return found


async def leased(outbox: Outbox) -> int:
    """Pending rows a relay holds a lease on right now."""
    t = outbox.table
    query = sa.select(sa.func.count()).where(t.c.status == "pending", t.c.lease_owner.is_not(None))
    async with outbox.engine.connect() as connection:
        return int((await connection.execute(query)).scalar_one())


async def test_a_relay_sigkilled_mid_window_again_and_again_stores_every_row_once(
    server: EmbeddedNatsServer, database: Database, tmp_path: Path
) -> None:
    engine = database.engine()
    outbox = writer_outbox(engine)
    await outbox.create_tables()
    event_ids: list[str] = []
    for _ in range(10):
        async with AsyncSession(engine) as session, session.begin():
            event_ids += [await outbox.add(session, TOPIC, {"n": n}) for n in range(300)]
    relay = Child(
        "outbox_relay.py",
        [f"--servers={server.url}", *database.argv(), "--batch-size=50", "--lease=4"],
        tmp_path / "relay.log",
    )
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    killed_mid_window = 0
    try:
        for _ in range(5):
            before = await stored_count(js)
            await relay.start()

            async def grew(before: int = before) -> bool:
                return await stored_count(js) > before

            # Given a relay that publishes (after the dead one's lease ran out)
            await wait_until(grew, timeout=30, message="the relay publishing")

            async def in_window() -> bool:
                return await leased(outbox) > 0

            # When it is SIGKILLed with a window claimed and not yet settled
            await wait_until(in_window, timeout=30, message="a window in flight")
            await relay.kill()
            killed_mid_window += await leased(outbox) > 0
        await relay.start()

        async def drained() -> bool:
            return (await outbox.status()).pending == 0

        await wait_until(drained, timeout=90, message="every row published")
        await relay.stop()
        stored = Counter(await stored_msg_ids(js))
    finally:
        await relay.kill()
        await nc.close()
        await engine.dispose()

    # Then every committed row is in the stream exactly once
    assert killed_mid_window >= 1, "no kill landed inside a window"
    assert set(stored) == set(event_ids)
    assert [event_id for event_id, n in stored.items() if n != 1] == []
    assert sum(stored.values()) == len(event_ids) == 3000


async def test_a_service_killed_inside_its_transaction_publishes_nothing_of_it(
    server: EmbeddedNatsServer, database: Database, tmp_path: Path
) -> None:
    engine = database.engine()
    await writer_outbox(engine).create_tables()
    writer = Child(
        "outbox_writer.py", [*database.argv(), "--committed=5", "--open=5"], tmp_path / "w.log"
    )
    try:
        committed = await writer.start(until="committed")
        uncommitted = await writer.read_line("open")
        # When the service dies with its transaction open
        await writer.kill()
        pubsub = NatsPubsub(
            new_broker(server),
            env=ENV,
            app=APP,
            outbox=OutboxOptions(engine=engine, poll_interval=0.1),
        )
        assert pubsub.outbox is not None
        relay = pubsub.outbox.relay
        async with running(pubsub.broker):
            await wait_until(lambda: relay.published == 5, message="the committed rows")
            await asyncio.sleep(0.5)  # time enough for anything else to go out
            in_stream = await stored_msg_ids(pubsub.broker.connection.jetstream())
        t = pubsub.outbox.table
        async with engine.connect() as connection:
            rows = list((await connection.execute(sa.select(t.c.event_id))).scalars())
    finally:
        await writer.kill()
        await engine.dispose()

    # Then what it committed is published once, and nothing of the open transaction exists
    assert sorted(in_stream) == sorted(committed)
    assert set(rows) == set(committed)
    assert not set(uncommitted) & (set(rows) | set(in_stream))


async def effects_in(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        try:
            result = await connection.execute(sa.text("SELECT event_id FROM fault_effects"))
        except sa.exc.DBAPIError:
            return []  # not created yet
        return list(result.scalars())


async def test_an_sql_inbox_consumer_killed_between_write_and_commit_takes_effect_once(
    server: EmbeddedNatsServer, database: Database, tmp_path: Path
) -> None:
    engine = database.engine()
    consumer = ConsumerProcess(
        [server.url],
        tmp_path,
        "sql",
        inbox="sql",
        ack_wait=2.0,
        workers=1,
        handle_seconds=0.4,  # written, then 0.4 s before the commit
        database=database.argv(),
    )
    killed: list[str] = []
    try:
        async with publisher([server.url]) as pubsub:
            await consumer.start()
            history = History()
            for _ in range(12):
                await history.publish(pubsub)
            for _ in range(4):
                seen = len(consumer.written())
                await wait_until(
                    lambda seen=seen: len(consumer.written()) > seen,
                    timeout=30,
                    message="an effect written",
                )
                # When the consumer dies after writing its effect, before the commit
                killed.append(consumer.written()[-1])
                await consumer.kill()
                await consumer.start()

            async def all_handled() -> bool:
                effects = set(await effects_in(engine))
                return history.acknowledged <= effects and await consumer_idle(pubsub)

            await wait_until(all_handled, timeout=90, message="every event handled")
            effects = Counter(await effects_in(engine))
    finally:
        await stop_all([consumer])
        await engine.dispose()

    # Then each event took effect exactly once, the killed ones included
    assert set(effects) == history.acknowledged
    assert [event_id for event_id, n in effects.items() if n != 1] == []
    written = Counter(consumer.written())
    assert all(written[event_id] >= 2 for event_id in killed)  # run again, effect once
