"""Traces through the envelope and metrics, with the OpenTelemetry SDK's in-memory readers."""

from __future__ import annotations

import logging
from typing import Any

import nats
import pytest
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support import consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import (
    DeadLetterQueue,
    EventMetadata,
    NatsPubsub,
    PermanentError,
    RetryPolicy,
)
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer
from faststream_natspubsub.tracing import traceparent_from_envelope

pytestmark = pytest.mark.nats


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def traced_pubsub(
    server: EmbeddedNatsServer, provider: TracerProvider, app: str, **kwargs: Any
) -> NatsPubsub:
    broker = new_broker(server, middlewares=[NatsTelemetryMiddleware(tracer_provider=provider)])
    return NatsPubsub(broker, env="test", app=app, **kwargs)


async def test_one_trace_across_publish_consume_and_a_publish_in_the_handler(
    server: EmbeddedNatsServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    orders = traced_pubsub(server, provider, "orders")
    payments = traced_pubsub(server, provider, "payments")
    seen: list[EventMetadata] = []

    @payments.subscriber("order.created", app="orders")
    @payments.publisher("payment.completed")
    async def charge(body: dict[str, Any], meta: EventMetadata) -> dict[str, Any]:
        seen.append(meta)
        return {"paid": body["id"]}

    @orders.subscriber("payment.completed", app="payments")
    async def paid(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append(meta)

    async with running(orders.broker, payments.broker):
        await orders.publish("order.created", {"id": "O-1"})
        await wait_until(lambda: len(seen) == 2, message="both handlers")

    first, second = seen
    finished = exporter.get_finished_spans()
    publish_spans = [s for s in finished if s.kind is SpanKind.PRODUCER and "publish" in s.name]
    consume_spans = [s for s in finished if s.kind is SpanKind.CONSUMER and "process" in s.name]
    trace_ids = {format(s.context.trace_id, "032x") for s in publish_spans + consume_spans}
    assert first.trace_id is not None
    assert trace_ids == {first.trace_id}  # every span is in the one trace
    assert second.trace_id == first.trace_id  # carried by the envelope of the reply too
    assert len(publish_spans) >= 2
    assert len(consume_spans) == 2
    # The reply's publish span is a child of the consume span that made it
    charge_span = next(s for s in consume_spans if "order.created" in s.name)
    reply_publish = next(s for s in publish_spans if "payment.completed" in s.name)
    assert reply_publish.parent is not None
    assert reply_publish.parent.span_id == charge_span.context.span_id
    assert second.span_id == format(reply_publish.context.span_id, "016x")


async def test_a_trace_id_only_in_the_envelope_is_continued(
    server: EmbeddedNatsServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    pubsub = traced_pubsub(server, provider, "orders")
    seen: list[EventMetadata] = []

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append(meta)

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with running(pubsub.broker):
        nc = await nats.connect(server.url)
        await nc.jetstream().publish(
            "test.orders.order.created",
            b'{"event_id":"e-1","message":{},"metadata":{"trace_id":"' + trace_id.encode() + b'"}}',
        )
        await nc.close()
        await wait_until(lambda: len(seen) == 1, message="the handler")

    consume = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert consume
    assert {format(s.context.trace_id, "032x") for s in consume} == {trace_id}


def test_traceparent_is_built_from_a_natspubsub_1_top_level_trace_id() -> None:
    body = b'{"event_id":"e","trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736","message":{}}'
    traceparent = traceparent_from_envelope(body)
    assert traceparent is not None
    assert traceparent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert traceparent_from_envelope(b'{"event_id":"e","trace_id":"short","message":{}}') is None
    assert traceparent_from_envelope(b"not json") is None


async def test_retry_and_dead_letter_decisions_are_events_on_the_consume_span(
    server: EmbeddedNatsServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    pubsub = traced_pubsub(
        server, provider, "orders", retry=RetryPolicy(max_attempts=2, backoff=(0.1,))
    )

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None:
        raise RuntimeError("down")

    async with running(pubsub.broker):
        await pubsub.publish("order.created", {"id": 1})
        dlq = DeadLetterQueue(pubsub.broker.connection.jetstream(), env="test", app="orders")
        await wait_until(lambda: _has_records(dlq), message="the DLQ record")

    events = [e.name for s in exporter.get_finished_spans() for e in s.events]
    assert "natspubsub.retry" in events
    assert "natspubsub.dead_letter" in events


async def _has_records(dlq: DeadLetterQueue) -> bool:
    return bool(await dlq.list())


def _counters(reader: InMemoryMetricReader) -> dict[str, float]:
    totals: dict[str, float] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # type: ignore[attr-defined]
                    totals[metric.name] = totals.get(metric.name, 0) + value
    return totals


async def test_counters_read_exactly_what_happened(server: EmbeddedNatsServer) -> None:
    reader = InMemoryMetricReader()
    pubsub = NatsPubsub(
        new_broker(server),
        env="test",
        app="orders",
        retry=RetryPolicy(max_attempts=2, backoff=(0.1,)),
        meter_provider=MeterProvider(metric_readers=[reader]),
    )

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
        if body["kind"] == "flaky" and meta.deliveries == 1:
            raise ConnectionError("once")
        if body["kind"] == "poison":
            raise PermanentError("never")

    async with running(pubsub.broker):
        for kind in ("ok", "ok", "ok", "flaky", "poison"):
            await pubsub.publish("order.created", {"kind": kind})
        js = pubsub.broker.connection.jetstream()
        durable = consumer_name("orders", "test.orders.order.created")
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="all done")
        await wait_until(
            lambda: _counters(reader).get("natspubsub.messages.acked") == 4, message="acks"
        )

    counters = _counters(reader)
    assert counters["natspubsub.messages.published"] == 5
    assert counters["natspubsub.messages.consumed"] == 6  # the flaky one twice
    assert counters["natspubsub.messages.acked"] == 4  # 3 successes + the retried one
    assert counters["natspubsub.messages.retried"] == 1
    assert counters["natspubsub.messages.dead_lettered"] == 1
    assert counters["natspubsub.handler.duration"] == 6  # histogram: one sample per delivery
    assert counters["natspubsub.end_to_end.latency"] == 6


@pytest.mark.nats
async def test_the_success_path_logs_nothing_at_info(
    server: EmbeddedNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders", inbox="memory")
    handled: list[str] = []

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any], meta: EventMetadata) -> None:
        handled.append(meta.event_id)

    async with running(pubsub.broker):
        caplog.clear()
        caplog.set_level(logging.INFO, logger="faststream_natspubsub")
        await pubsub.publish_many([("order.created", {"n": n}) for n in range(20)])
        await pubsub.publish("order.created", {"n": 20})
        await wait_until(lambda: len(handled) == 21, message="every event handled")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("faststream_nats")] == []
