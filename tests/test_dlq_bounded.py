"""The DLQ stream is bounded, and at its bound nothing is lost silently (issue 19.9)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from nats.js.api import DiscardPolicy
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from support import new_broker, running, wait_until

from faststream_natspubsub import DeadLetterQueue, NatsPubsub, PermanentError, RetryPolicy
from faststream_natspubsub.dlq import DLQ_MAX_BYTES, DLQ_MAX_MSGS
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

DURABLE = consumer_name("orders", "test.orders.order.created")


async def test_the_dlq_stream_is_bounded_by_default_and_refuses_new_records_at_the_bound(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any]) -> None: ...

    async with running(pubsub.broker):
        info = await pubsub.broker.connection.jetstream().stream_info("DLQ_TEST_ORDERS")

    assert info.config.max_bytes == DLQ_MAX_BYTES
    assert info.config.max_msgs == DLQ_MAX_MSGS
    assert info.config.discard == DiscardPolicy.NEW


def _dlq_full_count(reader: InMemoryMetricReader) -> float:
    data = reader.get_metrics_data()
    total = 0.0
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "natspubsub.dlq.full":
                    total += sum(point.value for point in metric.data.data_points)  # type: ignore[attr-defined]
    return total


@pytest.mark.slow
async def test_a_full_dlq_keeps_the_event_in_its_stream_and_says_so(
    server: EmbeddedNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a DLQ bounded to two records, already holding two
    caplog.set_level(logging.WARNING, logger="faststream_natspubsub")
    reader = InMemoryMetricReader()
    pubsub = NatsPubsub(
        new_broker(server),
        env="test",
        app="orders",
        retry=RetryPolicy(max_attempts=3, backoff=(0.3,), max_backoff=0.5),
        dlq_max_msgs=2,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    calls: list[int] = []

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any]) -> None:
        calls.append(body["n"])
        raise PermanentError("cannot")

    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        dlq = DeadLetterQueue(js, env="test", app="orders")
        for n in (1, 2):
            await pubsub.publish("order.created", {"n": n})
            await wait_until(lambda n=n: _records_are(dlq, n), message=f"record {n}")

        # When a third event fails
        third = await pubsub.publish("order.created", {"n": 3})
        await wait_until(lambda: _dlq_full_count(reader) >= 1, message="the DLQ refusing it")

        # Then it is not terminated: it stays in its stream, and metric, log and health say so
        info = await js.consumer_info("TEST_ORDERS", DURABLE)
        health = await pubsub.health()
        full_logs = [r for r in caplog.records if "is full" in r.getMessage()]
        errors = [r for r in full_logs if r.levelno == logging.ERROR]

        # And once an operator makes room, it is dead-lettered on a later delivery
        await dlq.purge()
        await wait_until(lambda: _records_are(dlq, 1), timeout=20, message="the third record")
        [record] = await dlq.list()

    assert info.num_ack_pending + info.num_pending == 1
    assert info.ack_floor.stream_seq == third.seq - 1
    dlq_health = health.components["stream:DLQ_TEST_ORDERS"]
    assert dlq_health.status.value == "degraded"
    assert dlq_health.detail == "full: new messages are refused"
    assert health.status.value == "degraded"
    [error] = errors  # once (a minute), however many events it refuses
    assert "dead-letter stream DLQ_TEST_ORDERS is full" in error.getMessage()
    assert all(r.levelno == logging.WARNING for r in full_logs if r is not error)
    assert record.event_id == third.event_id
    assert record.reason == "permanent_error"


async def _records_are(dlq: DeadLetterQueue, count: int) -> bool:
    return len(await dlq.list()) == count
