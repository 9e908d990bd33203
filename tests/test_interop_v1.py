"""NatsPubsub 1.0 (TypeScript and Ruby) neighbours, both ways.

The fixtures are 1.0's wire shapes as its code writes them (shared/FACTS.md): app names put
into subjects unchanged (``my_app``, ``ToDoApp``), one ``<env>-events-stream`` holding every
app's subjects, the Ruby publisher's whole-second timestamps and lower-case header, and a
consumer that hands its handlers ``envelope.payload`` and reads a top-level ``trace_id``.
"""

from __future__ import annotations

from typing import Any

import nats
import pytest
from faststream.nats import NatsBroker
from pydantic_core import from_json, to_json
from support import NATSPUBSUB_TS_ENVELOPE, new_broker, running, wait_until

from faststream_natspubsub import (
    EventMetadata,
    ForeignApp,
    NatsPubsub,
    OutgoingEvent,
    SubjectError,
    build_subject,
)
from faststream_natspubsub.testing import EmbeddedNatsServer

# What NatsPubsub 1.0's Ruby publisher writes: whole seconds, no milliseconds.
RUBY_ENVELOPE = (
    b'{"event_id":"5d1b4a52-0a39-4f0e-9d3f-6f5b8f2d7c01","schema_version":1,'
    b'"topic":"todo.created","producer":"ToDoApp","occurred_at":"2025-01-17T10:30:00Z",'
    b'"message":{"title":"write tests"}}'
)


def natspubsub_v1_consumer(data: bytes) -> tuple[Any, str | None]:
    """What NatsPubsub 1.0's message processor gives its handler: ``payload`` and the
    top-level ``trace_id`` (subscribers/message-processor.ts)."""
    envelope = from_json(data)
    return envelope.get("payload"), envelope.get("trace_id")


async def declare_v1_stream(url: str, *apps: str) -> None:
    """The stream a NatsPubsub 1.0 app creates: every app's events in one stream."""
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(
            name="production-events-stream",
            subjects=["production.events.>", *(f"production.{app}.>" for app in apps)],
        )
    finally:
        await nc.close()


def test_a_foreign_app_keeps_its_subject_token_while_own_names_are_normalised() -> None:
    assert build_subject("production", "my_app", "order.created") == (
        "production.my-app.order.created"
    )
    assert ForeignApp("my_app").stream_for("production") == "production-events-stream"
    for bad in ("", "a.b", "a*", "a>", "$SYS", "with space"):
        with pytest.raises(SubjectError):
            ForeignApp(bad)


@pytest.mark.nats
async def test_events_of_1_0_apps_named_my_app_and_todoapp_reach_python_handlers(
    server: EmbeddedNatsServer,
) -> None:
    # Given the 1.0 apps' stream, as they create it
    await declare_v1_stream(server.url, "my_app", "ToDoApp")
    pubsub = NatsPubsub(new_broker(server), env="production", app="billing")
    orders: list[tuple[dict[str, Any], EventMetadata]] = []
    todos: list[tuple[dict[str, Any], EventMetadata]] = []

    @pubsub.subscriber("order.created", app=ForeignApp("my_app"))
    async def on_order(body: dict[str, Any], meta: EventMetadata) -> None:
        orders.append((body, meta))

    @pubsub.subscriber("todo.created", app=ForeignApp("ToDoApp"))
    async def on_todo(body: dict[str, Any], meta: EventMetadata) -> None:
        todos.append((body, meta))

    async with running(pubsub.broker):
        # When the 1.0 publishers publish on their subjects (app names unchanged)
        js = pubsub.broker.connection.jetstream()
        await js.publish(
            "production.my_app.order.created",
            NATSPUBSUB_TS_ENVELOPE,
            headers={"Nats-Msg-Id": "0b9b8f3c-1f3e-4a57-b7a5-0c6a86e3a111", "topic": "x"},
        )
        await js.publish(
            "production.ToDoApp.todo.created",
            RUBY_ENVELOPE,
            headers={"nats-msg-id": "5d1b4a52-0a39-4f0e-9d3f-6f5b8f2d7c01"},
        )
        await wait_until(lambda: len(orders) == 1 and len(todos) == 1, message="both events")

    # Then the handlers got the messages and 1.0's top-level fields as metadata
    body, meta = orders[0]
    assert body == {"order_id": "ORD-123", "total": 99.99}
    assert meta.app_name == "my_app"  # the subject is the truth for the app
    assert meta.metadata["app_name"] == "orders"  # 1.0's producer, as the envelope claims
    assert meta.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert meta.subject == "production.my_app.order.created"
    assert meta.stream == "production-events-stream"
    body, meta = todos[0]
    assert body == {"title": "write tests"}
    assert meta.occurred_at is not None
    assert meta.occurred_at.isoformat() == "2025-01-17T10:30:00+00:00"


@pytest.mark.nats
async def test_the_1_0_writer_mode_gives_1_0_consumers_the_message_and_the_trace(
    server: EmbeddedNatsServer,
) -> None:
    # Given an app that still has NatsPubsub 1.0 consumers downstream
    pubsub = NatsPubsub(new_broker(server), env="production", app="orders", compat="natspubsub-1.0")
    plain = NatsPubsub(NatsBroker(), env="production", app="orders")
    ours: list[dict[str, Any]] = []

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None:
        ours.append(body)

    async with running(pubsub.broker):
        result = await pubsub.publish(
            "order.created", {"order_id": "ORD-1"}, metadata={"trace_id": "ab" * 16}
        )
        many = await pubsub.publish_many([("order.created", {"order_id": "ORD-2"})])
        await wait_until(lambda: len(ours) == 2, message="our own consumer")
        js = pubsub.broker.connection.jetstream()
        stored = [await js.get_msg("PRODUCTION_ORDERS", seq) for seq in (1, many[0].seq)]

    # Then a 1.0 consumer's handler gets the message (and the trace), not undefined
    assert natspubsub_v1_consumer(stored[0].data or b"") == ({"order_id": "ORD-1"}, "ab" * 16)
    assert natspubsub_v1_consumer(stored[1].data or b"")[0] == {"order_id": "ORD-2"}
    envelope = from_json(stored[0].data or b"")
    assert envelope["producer"] == "orders"
    assert envelope["event_id"] == result.event_id
    # ... our consumers read it as before, once
    assert ours == [{"order_id": "ORD-1"}, {"order_id": "ORD-2"}]
    # And the cost is the message written twice
    event = OutgoingEvent(message={"order_id": "ORD-1"}, event_id=result.event_id)
    without = plain.envelope.build_envelope("order.created", event, None)
    assert len(stored[0].data or b"") > len(to_json(without))
