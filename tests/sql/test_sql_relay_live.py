"""The outbox relay against a real nats-server and real databases (SQLite file, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import sqlalchemy as sa
from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from nats.js import JetStreamContext
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from support import new_broker, running, wait_until

from faststream_natspubsub import EventMetadata, NatsPubsub
from faststream_natspubsub.health import HealthStatus
from faststream_natspubsub.sql import Outbox, OutboxOptions
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

TOPIC = "order.created"


def orders_app(
    server: EmbeddedNatsServer,
    engine: AsyncEngine,
    broker: NatsBroker | None = None,
    **options: Any,
) -> NatsPubsub:
    meter_provider = options.pop("meter_provider", None)
    return NatsPubsub(
        broker or new_broker(server),
        env="test",
        app="orders",
        meter_provider=meter_provider,
        outbox=OutboxOptions(engine=engine, **options),
    )


def outbox_of(pubsub: NatsPubsub) -> Outbox:
    assert pubsub.outbox is not None
    return pubsub.outbox


async def add(outbox: Outbox, count: int, **body: Any) -> list[str]:
    async with AsyncSession(outbox.engine) as session, session.begin():
        return [await outbox.add(session, TOPIC, {"n": n, **body}) for n in range(count)]


async def stored(js: JetStreamContext, stream: str) -> list[tuple[str, str]]:
    """``(Nats-Msg-Id, event_id in the body)`` of every message in ``stream``, in order."""
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        assert msg.headers is not None
        found.append((msg.headers["Nats-Msg-Id"], json.loads(msg.data)["event_id"]))
    return found


async def statuses(outbox: Outbox) -> dict[str, int]:
    counts = await outbox.status()
    return {"pending": counts.pending, "published": counts.published, "failed": counts.failed}


async def test_committed_rows_are_published_in_insertion_order_with_the_event_id_as_msg_id(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    pubsub = orders_app(server, engine, batch_size=7)
    outbox = outbox_of(pubsub)
    await outbox.create_tables()
    async with running(pubsub.broker):
        event_ids = await add(outbox, 30)
        await wait_until(lambda: outbox.relay.published == 30, message="30 rows published")
        in_stream = await stored(pubsub.broker.connection.jetstream(), pubsub.stream)

    assert in_stream == [(event_id, event_id) for event_id in event_ids]
    assert await statuses(outbox) == {"pending": 0, "published": 30, "failed": 0}


async def test_a_rolled_back_transaction_publishes_nothing(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    pubsub = orders_app(server, engine)
    outbox = outbox_of(pubsub)
    await outbox.create_tables()
    async with running(pubsub.broker):
        async with AsyncSession(engine) as session:
            await outbox.add(session, TOPIC, {"n": 1})
            await session.rollback()
        (kept,) = await add(outbox, 1)
        await wait_until(lambda: outbox.relay.published == 1, message="the committed row")
        in_stream = await stored(pubsub.broker.connection.jetstream(), pubsub.stream)

    assert in_stream == [(kept, kept)]


async def test_a_commit_in_this_process_wakes_the_relay_at_once(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    # Given a relay that would otherwise look only every 30 s
    pubsub = orders_app(server, engine, poll_interval=30.0)
    outbox = outbox_of(pubsub)
    await outbox.create_tables()
    async with running(pubsub.broker):
        await asyncio.sleep(0.2)  # the relay found the table empty and sleeps
        started = time.monotonic()
        await add(outbox, 1)
        await wait_until(lambda: outbox.relay.published == 1, timeout=5, message="the row")
        elapsed = time.monotonic() - started

    assert elapsed < 2.0


async def test_rows_committed_by_another_process_are_found_by_polling(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    pubsub = orders_app(server, engine, poll_interval=0.2)
    outbox = outbox_of(pubsub)
    # Another process: same table, no relay of its own, no wake-up of this one
    writer = outbox_of(orders_app(server, engine, relay=False))
    await outbox.create_tables()
    async with running(pubsub.broker):
        event_ids = await add(writer, 3)
        await wait_until(lambda: outbox.relay.published == 3, timeout=5, message="polled rows")
        in_stream = await stored(pubsub.broker.connection.jetstream(), pubsub.stream)

    assert [msg_id for msg_id, _ in in_stream] == event_ids


async def test_a_row_too_large_for_the_server_fails_and_the_rows_behind_it_go_out(
    engine: AsyncEngine,
) -> None:
    # Given a server whose max_payload is below the codec's limit (what add() checks)
    async with EmbeddedNatsServer(config="max_payload: 4096") as small:
        pubsub = orders_app(small, engine)
        outbox = outbox_of(pubsub)
        await outbox.create_tables()
        async with running(pubsub.broker):
            async with AsyncSession(engine) as session, session.begin():
                await outbox.add(session, TOPIC, {"n": 0})
                big = await outbox.add(session, TOPIC, {"blob": "x" * 8000})
                after = await outbox.add(session, TOPIC, {"n": 2})
            await wait_until(lambda: outbox.relay.published == 2, message="the small rows")
            failed = await outbox.failed_rows()
            in_stream = await stored(pubsub.broker.connection.jetstream(), pubsub.stream)

    assert [row["event_id"] for row in failed] == [big]
    assert "too large for the server" in failed[0]["last_error"]
    assert in_stream[-1] == (after, after)
    assert await statuses(outbox) == {"pending": 0, "published": 2, "failed": 1}


async def test_a_row_whose_subject_no_stream_holds_fails_and_does_not_block(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    pubsub = orders_app(server, engine)
    outbox = outbox_of(pubsub)
    await outbox.create_tables()
    # A row written by hand (a migration, say) for a subject no stream stores
    async with engine.begin() as connection:
        await connection.execute(
            sa.insert(outbox.table).values(
                event_id="orphan-1",
                stream=pubsub.stream,
                subject="test.nowhere.order.created",
                payload=b'{"event_id":"orphan-1","message":{}}',
                headers="{}",
                created_at=sa.func.now(),
            )
        )
    async with running(pubsub.broker):
        await add(outbox, 1)
        await wait_until(lambda: outbox.relay.published == 1, message="the row behind it")
        await wait_until(lambda: outbox.relay.failed == 1, message="the orphan failed")
        failed = await outbox.failed_rows()

    assert [(row["event_id"], row["last_error"]) for row in failed] == [
        ("orphan-1", "no stream holds this subject")
    ]


async def test_stop_finishes_the_window_in_flight_and_leaves_no_row_leased(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    pubsub = orders_app(server, engine, batch_size=50)
    outbox = outbox_of(pubsub)
    await outbox.create_tables()
    await add(outbox, 400)
    async with running(pubsub.broker):
        await wait_until(lambda: outbox.relay.published >= 50, message="a first window")
        # When the broker stops while the relay is busy with the next windows
    js_broker = new_broker(server)
    async with running(js_broker):
        in_stream = await stored(js_broker.connection.jetstream(), pubsub.stream)

    async with engine.connect() as connection:
        leased = (
            await connection.execute(
                sa.select(sa.func.count())
                .select_from(outbox.table)
                .where(outbox.table.c.lease_owner.is_not(None))
            )
        ).scalar_one()
    counts = await statuses(outbox)
    # Then every window it started is published and marked; the rest waits, unleased
    assert leased == 0
    assert counts["published"] == len(in_stream) == outbox.relay.published
    assert counts["published"] % 50 == 0
    assert counts["pending"] + counts["published"] == 400


@pytest.mark.slow
async def test_two_relays_on_one_database_store_each_row_once_in_order_and_take_over(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    apps = [orders_app(server, engine, batch_size=20, poll_interval=0.05) for _ in range(2)]
    await outbox_of(apps[0]).create_tables()

    def total() -> int:
        return sum(outbox_of(app).relay.published for app in apps)

    running_apps = list(apps)
    for app in apps:
        await app.broker.start()
    try:
        event_ids = await add(outbox_of(apps[0]), 2000)  # 100 windows: it stops mid-way
        # Both run; the one holding the stream's windows publishes, the other waits
        await wait_until(lambda: total() >= 100, timeout=30, message="a first part published")
        active = max(apps, key=lambda app: outbox_of(app).relay.published)
        standby = apps[1 - apps.index(active)]
        before = outbox_of(standby).relay.published
        await active.broker.stop()  # when it stops, the other takes over
        running_apps.remove(active)
        await wait_until(lambda: total() == 2000, timeout=60, message="every row published")
        in_stream = await stored(standby.broker.connection.jetstream(), standby.stream)
    finally:
        for app in running_apps:
            await app.broker.stop()

    assert [msg_id for msg_id, _ in in_stream] == event_ids
    assert outbox_of(standby).relay.published > before


async def test_published_rows_are_deleted_after_the_retention(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    pubsub = orders_app(server, engine, retention=0.0, poll_interval=0.05)
    outbox = outbox_of(pubsub)
    await outbox.create_tables()
    async with running(pubsub.broker):
        await add(outbox, 3)
        await wait_until(lambda: outbox.relay.published == 3, message="published")

        async def emptied() -> bool:
            return await statuses(outbox) == {"pending": 0, "published": 0, "failed": 0}

        await wait_until(emptied, timeout=5, message="the purge")


async def test_metrics_count_published_and_failed_rows_and_report_the_backlog(
    engine: AsyncEngine,
) -> None:
    reader = InMemoryMetricReader()

    def points() -> dict[str, list[Any]]:
        return {
            metric.name: [p.value for p in metric.data.data_points]
            for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        }

    async with EmbeddedNatsServer(config="max_payload: 4096") as small:
        pubsub = orders_app(
            small,
            engine,
            meter_provider=MeterProvider(metric_readers=[reader]),
            stats_interval=0.05,
            poll_interval=0.05,
        )
        outbox = outbox_of(pubsub)
        await outbox.create_tables()
        async with running(pubsub.broker):
            await add(outbox, 3)
            await add(outbox, 1, blob="x" * 8000)
            await wait_until(
                lambda: outbox.relay.published == 3 and outbox.relay.failed == 1,
                message="the relay's work",
            )
            # the backlog read after it
            await wait_until(lambda: points().get("natspubsub.outbox.pending") == [0])
            seen = points()

    assert seen["natspubsub.outbox.published"] == [3]
    assert seen["natspubsub.outbox.failed"] == [1]
    assert seen["natspubsub.outbox.oldest_pending_age"] == [0.0]


async def test_health_reports_a_lagging_outbox_and_failed_rows_as_degraded(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    # Given no relay in this process, so rows wait
    pubsub = orders_app(server, engine, relay=False, max_lag=0.05)
    outbox = outbox_of(pubsub)
    await outbox.create_tables()
    async with running(pubsub.broker):
        healthy = await pubsub.health()
        await add(outbox, 1)
        await asyncio.sleep(0.1)
        lagging = await pubsub.health()

    assert healthy.components["outbox"].status is HealthStatus.HEALTHY
    assert lagging.components["outbox"].status is HealthStatus.DEGRADED
    assert "oldest pending row" in lagging.components["outbox"].detail
    assert lagging.status is HealthStatus.DEGRADED


async def test_health_is_unhealthy_when_the_database_does_not_answer(
    server: EmbeddedNatsServer, tmp_path: Any
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    missing = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/db.sqlite")
    pubsub = orders_app(server, missing, relay=False)
    try:
        report = await pubsub.health()
    finally:
        await missing.dispose()

    assert report.components["outbox"].status is HealthStatus.UNHEALTHY
    assert report.components["outbox"].detail.startswith("database unreachable")


async def test_the_trace_of_the_adding_transaction_continues_in_the_consumer(
    server: EmbeddedNatsServer, engine: AsyncEngine
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pubsub = orders_app(server, engine)
    outbox = outbox_of(pubsub)
    consumer = NatsPubsub(
        new_broker(server, middlewares=[NatsTelemetryMiddleware(tracer_provider=provider)]),
        env="test",
        app="payments",
    )
    seen: list[EventMetadata] = []

    @consumer.subscriber(TOPIC, app="orders")
    async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append(meta)

    await outbox.create_tables()
    async with running(pubsub.broker, consumer.broker):
        with provider.get_tracer("test").start_as_current_span("place-order") as span:
            await add(outbox, 1)
        await wait_until(lambda: bool(seen), message="the consumer")

    place_order = span.get_span_context()
    (consume,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert seen[0].trace_id == format(place_order.trace_id, "032x")
    assert consume.context.trace_id == place_order.trace_id
    assert consume.parent is not None and consume.parent.span_id == place_order.span_id
