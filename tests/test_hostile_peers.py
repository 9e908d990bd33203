"""A peer with publish rights cannot turn the app against itself (issue 19.7).

The peer forges a MAX_DELIVERIES advisory, lies in envelope metadata, and reuses an event id
on another topic. With the documented permissions such a peer should not exist; the app
must still not be fooled.
"""

from __future__ import annotations

import json
from typing import Any

import nats
import pytest
from support import consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import DeadLetterQueue, EventMetadata, NatsPubsub
from faststream_natspubsub.advisories import MAX_DELIVERIES_ADVISORY
from faststream_natspubsub.advisory_check import subject_matches
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

CREATED = consumer_name("orders", "test.orders.order.created")


async def forge_advisory(url: str, durable: str, **fields: Any) -> None:
    """Publish a MAX_DELIVERIES advisory the way a peer with publish rights could."""
    body = {
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "id": "forged",
        "timestamp": "2025-01-17T10:30:00Z",
        "stream": "TEST_ORDERS",
        "consumer": durable,
        **fields,
    }
    nc = await nats.connect(url)
    try:
        await nc.publish(
            f"{MAX_DELIVERIES_ADVISORY}.TEST_ORDERS.{durable}", json.dumps(body).encode()
        )
        await nc.flush()
    finally:
        await nc.close()


def test_subjects_match_like_nats() -> None:
    assert subject_matches("a.*.c", "a.b.c")
    assert subject_matches("a.>", "a.b.c")
    assert not subject_matches("a.>", "a")
    assert not subject_matches("a.*", "a.b.c")
    assert not subject_matches("a.b", "a.c")


@pytest.mark.nats
# Without an inbox nothing can tell a handled event apart: that lie is tested with "kv" only
# (the residual risk the retries page documents).
@pytest.mark.parametrize(
    ("lie", "inbox"),
    [
        ("handled", "kv"),
        *(
            (lie, inbox)
            for lie in (
                "not_delivered",
                "wrong_deliveries",
                "other_topic",
                "wrong_consumer_in_body",
            )
            for inbox in (None, "kv")
        ),
    ],
)
async def test_a_forged_max_deliveries_advisory_dead_letters_nothing(
    server: EmbeddedNatsServer, lie: str, inbox: str | None
) -> None:
    # Given an app that handled one event, next to an event of a topic it does not read
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders", inbox=inbox)
    handled: list[str] = []

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any], meta: EventMetadata) -> None:
        handled.append(meta.event_id)

    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        other = await pubsub.publish("order.paid", {"id": 0})
        event = await pubsub.publish("order.created", {"id": 1})
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", CREATED), message="handled")
        max_deliver = pubsub.retry.max_deliver
        forged = {
            "handled": {"stream_seq": event.seq, "deliveries": max_deliver},
            "not_delivered": {"stream_seq": (event.seq or 0) + 50, "deliveries": max_deliver},
            "wrong_deliveries": {"stream_seq": event.seq, "deliveries": 1},
            "other_topic": {"stream_seq": other.seq, "deliveries": max_deliver},
            "wrong_consumer_in_body": {
                "stream_seq": event.seq,
                "deliveries": max_deliver,
                "consumer": "someone_else",
            },
        }[lie]
        watcher = pubsub.advisory_watcher
        assert watcher is not None

        # When a peer forges the advisory
        await forge_advisory(server.url, CREATED, **forged)

        # Then it is checked against the server and ignored
        await wait_until(lambda: watcher.rejected == 1, message="the advisory's rejection")
        records = await DeadLetterQueue(js, env="test", app="orders").list()
    assert records == []
    assert watcher.handled == 0
    assert handled == [event.event_id]


@pytest.mark.nats
async def test_forged_envelope_metadata_is_not_shown_as_fact(server: EmbeddedNatsServer) -> None:
    # Given an app reading payments' events, and a peer publishing on payments' subject
    # an envelope that claims to come from another app, env and topic
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    seen: list[EventMetadata] = []

    @pubsub.subscriber("payment.completed", app="payments")
    async def paid(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append(meta)

    forged = {
        "event_id": "evt-1",
        "topic": "refund.issued",
        "message": {"amount": 1},
        "metadata": {"app_name": "billing", "environment": "production"},
    }
    async with running(pubsub.broker):
        nc = await nats.connect(server.url)
        await nc.jetstream().publish("test.payments.payment.completed", json.dumps(forged).encode())
        await nc.close()
        await wait_until(lambda: bool(seen), message="the handler")

    # Then the subject is the truth for app, env and topic; the claims stay visible as such
    meta = seen[0]
    assert (meta.app_name, meta.app, meta.environment, meta.env) == (
        "payments",
        "payments",
        "test",
        "test",
    )
    assert meta.topic == "payment.completed"
    assert meta.claimed_topic == "refund.issued"
    assert meta.metadata["app_name"] == "billing"


@pytest.mark.nats
@pytest.mark.parametrize("inbox", ["memory", "kv"])
async def test_one_event_id_on_two_topics_is_two_events_for_the_inbox(
    server: EmbeddedNatsServer, inbox: str
) -> None:
    # Given a wildcard subscriber with an inbox
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders", inbox=inbox)
    seen: list[tuple[str, str]] = []

    @pubsub.subscriber("order.*")
    async def any_order(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append((meta.topic, meta.event_id))

    # When a peer uses one event id on two topics (and repeats the first), each copy with a
    # Nats-Msg-Id of its own so JetStream stores all three
    async with running(pubsub.broker):
        nc = await nats.connect(server.url)
        body = b'{"event_id":"same-id","message":{"id":1}}'
        for n, topic in enumerate(("order.created", "order.paid", "order.created")):
            subject = f"test.orders.{topic}"
            await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": f"copy-{n}"})
        await nc.close()
        durable = consumer_name("orders", "test.orders.order.*")
        js = pubsub.broker.connection.jetstream()
        await wait_until(lambda: len(seen) >= 2, message="two handled events")
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="idle")

    # Then each topic's event runs once
    assert seen == [("order.created", "same-id"), ("order.paid", "same-id")]
