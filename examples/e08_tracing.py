"""One trace across publish, consume, a retry and a publish in the handler; and metrics.

``python examples/e08_tracing.py`` runs it on a throw-away ``nats-server`` and prints the
spans. It needs the OpenTelemetry SDK (``pip install "faststream-natspubsub[otel]"``).

``orders`` publishes ``order.created``; its handler fails once, is retried, and answers with
``order.confirmed``, which a second handler consumes. Every span is in one trace, and both
handlers see its id in ``EventMetadata.trace_id``.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from faststream_natspubsub import EventMetadata, NatsPubsub, PublishResult, RetryPolicy
from faststream_natspubsub.testing import EmbeddedNatsServer


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    published: PublishResult
    trace_ids: list[str | None]
    """``EventMetadata.trace_id`` in each handler call, in order."""
    spans: list[dict[str, Any]]
    """The spans the ConsoleSpanExporter wrote, parsed back from JSON."""
    counters: dict[str, float]
    """Sum of each ``natspubsub.*`` metric's data points (a histogram counts samples)."""


async def main(url: str) -> Outcome:
    """Publish one order and follow it through two handlers."""
    # --8<-- [start:setup]
    spans_out = io.StringIO()  # a real service would use an OTLP exporter instead
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=spans_out)))
    metric_reader = InMemoryMetricReader()

    broker = NatsBroker(
        url,
        logger=None,
        # FastStream's telemetry middleware: spans, and the W3C traceparent header
        middlewares=[NatsTelemetryMiddleware(tracer_provider=tracer_provider)],
    )
    pubsub = NatsPubsub(  # created after: it sees the telemetry middleware and adds its own
        broker,
        env="dev",
        app="orders",
        retry=RetryPolicy(backoff=(0.1,)),
        meter_provider=MeterProvider(metric_readers=[metric_reader]),
    )
    # --8<-- [end:setup]
    trace_ids: list[str | None] = []
    confirmed: asyncio.Queue[str] = asyncio.Queue()

    # --8<-- [start:handlers]
    @pubsub.subscriber("order.created")
    @pubsub.publisher("order.confirmed")
    async def confirm(order: dict[str, Any], meta: EventMetadata) -> dict[str, Any]:
        trace_ids.append(meta.trace_id)  # the trace id, from the envelope's metadata
        if meta.deliveries == 1:
            raise ConnectionError("stock service unreachable")  # a retry: a span event
        return {"order_id": order["order_id"]}  # published in the same trace

    @pubsub.subscriber("order.confirmed")
    async def notify(body: dict[str, Any], meta: EventMetadata) -> None:
        trace_ids.append(meta.trace_id)
        await confirmed.put(body["order_id"])

    # --8<-- [end:handlers]

    await broker.start()
    try:
        published = await pubsub.publish("order.created", {"order_id": "ORD-1"})
        await asyncio.wait_for(confirmed.get(), timeout=10)
    finally:
        await broker.stop()
    tracer_provider.shutdown()
    return Outcome(
        published=published,
        trace_ids=trace_ids,
        spans=_parse_spans(spans_out.getvalue()),
        counters=_counters(metric_reader),
    )


def _parse_spans(text: str) -> list[dict[str, Any]]:
    """ConsoleSpanExporter writes one indented JSON object per span."""
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    position = 0
    while (position := _skip_spaces(text, position)) < len(text):
        span, position = decoder.raw_decode(text, position)
        spans.append(span)
    return spans


def _skip_spaces(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _counters(reader: InMemoryMetricReader) -> dict[str, float]:
    totals: dict[str, float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    # a counter's point has a value; a histogram's counts its samples
                    value = point.value if isinstance(point, NumberDataPoint) else point.count
                    totals[metric.name] = totals.get(metric.name, 0.0) + value
    return totals


async def _run() -> None:
    # The retry is logged with its traceback; keep this output short.
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url)
    for span in outcome.spans:
        events = [event["name"] for event in span["events"]]
        print(f"{span['context']['trace_id']} {span['kind']:<17} {span['name']} {events or ''}")
    print("trace ids seen by the handlers:", outcome.trace_ids)
    for name, value in sorted(outcome.counters.items()):
        print(f"{name} = {value:g}")


if __name__ == "__main__":
    asyncio.run(_run())
