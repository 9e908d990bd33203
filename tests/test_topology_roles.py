"""Operator-owned topology: verify-only mode, owned consumer settings, roles (issue 19.5)."""

from __future__ import annotations

from typing import Any

import nats
import pytest
from faststream.security import SASLPlaintext
from support import consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import EventMetadata, NatsPubsub, RetryPolicy, TopologyError
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer
from faststream_natspubsub.topology import CONSUMER_OWNED_SETTINGS

pytestmark = pytest.mark.nats

CREATED = consumer_name("orders", "test.orders.order.created")


def orders_app(server: EmbeddedNatsServer, **kwargs: Any) -> tuple[NatsPubsub, list[str]]:
    broker_kwargs = {"security": kwargs.pop("security")} if "security" in kwargs else {}
    pubsub = NatsPubsub(new_broker(server, **broker_kwargs), env="test", app="orders", **kwargs)
    seen: list[str] = []

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append(meta.event_id)

    return pubsub, seen


async def _streams(url: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        return sorted(s.config.name or "" for s in await nc.jsm().streams_info())
    finally:
        await nc.close()


async def test_an_operators_consumer_settings_survive_a_restart_except_the_owned_ones(
    server: EmbeddedNatsServer,
) -> None:
    # Given the app's consumer, tuned by an operator
    first, _ = orders_app(server)
    async with running(first.broker):
        jsm = first.broker.connection.jsm()
        info = await jsm.consumer_info("TEST_ORDERS", CREATED)
        tuned = info.config.evolve(max_ack_pending=7, description="tuned by ops")
        await jsm.add_consumer("TEST_ORDERS", tuned)

    # When the app starts again with another retry policy
    second, _ = orders_app(server, retry=RetryPolicy(max_attempts=2))
    async with running(second.broker):
        after = await second.broker.connection.jsm().consumer_info("TEST_ORDERS", CREATED)

    # Then only the settings the package owns changed
    assert after.config.max_ack_pending == 7
    assert after.config.description == "tuned by ops"
    assert after.config.max_deliver == RetryPolicy(max_attempts=2).max_deliver
    assert "max_ack_pending" not in CONSUMER_OWNED_SETTINGS


async def test_a_consumer_only_app_declares_no_stream_of_its_own_until_it_publishes(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    @pubsub.subscriber("payment.completed", app="payments")
    async def paid(body: dict[str, Any]) -> None: ...

    async with running(pubsub.broker):
        at_start = await _streams(server.url)
        health = await pubsub.health()
        published = await pubsub.publish("order.created", {"id": 1})
        after_publish = await _streams(server.url)

    assert at_start == ["DLQ_TEST_ORDERS", "TEST_PAYMENTS"]
    assert health.status.value == "healthy"
    assert after_publish == ["DLQ_TEST_ORDERS", "TEST_ORDERS", "TEST_PAYMENTS"]
    assert published.stream == "TEST_ORDERS"


async def test_a_publisher_without_subscribers_declares_no_dlq_stream(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    async with running(pubsub.broker):
        await pubsub.publish("order.created", {"id": 1})
        streams = await _streams(server.url)

    assert streams == ["TEST_ORDERS"]


async def test_verify_mode_lists_every_difference_and_creates_nothing(
    server: EmbeddedNatsServer,
) -> None:
    # Given the topology of an older version of the app (another retry policy), without
    # its DLQ stream
    older, _ = orders_app(server, retry=RetryPolicy(max_attempts=2))
    async with running(older.broker):
        await older.broker.connection.jsm().delete_stream("DLQ_TEST_ORDERS")
    before = await _streams(server.url)

    # When the current app starts in verify mode
    pubsub, _ = orders_app(server, topology="verify")

    @pubsub.subscriber("refund.issued", app="payments")
    async def refunded(body: dict[str, Any]) -> None: ...

    with pytest.raises(TopologyError) as raised:
        async with running(pubsub.broker):
            pass

    # Then the error shows each difference, and the server is as it was
    message = str(raised.value)
    assert "stream DLQ_TEST_ORDERS is missing" in message
    assert "stream TEST_PAYMENTS is missing" in message
    assert (
        f"consumer {CREATED} on stream TEST_ORDERS: max_deliver is 7, the app needs 10" in message
    )
    assert await _streams(server.url) == before


async def test_verify_mode_runs_without_any_right_to_create_or_update() -> None:
    # Given an operator who declared the topology, and an app user without the rights to
    # create or update streams and durable consumers (the in-memory reader of the advisory
    # listener, created per MAX_DELIVERIES advisory, is not topology: see permissions.md)
    denied = [
        "$JS.API.STREAM.CREATE.>",
        "$JS.API.STREAM.UPDATE.>",
        "$JS.API.CONSUMER.CREATE.*.*",
        f"$JS.API.CONSUMER.CREATE.*.{CREATED}.>",
        "$JS.API.CONSUMER.DURABLE.CREATE.>",
        "$JS.API.CONSUMER.UPDATE.>",
    ]
    deny = ", ".join(f'"{subject}"' for subject in denied)
    config = f"""
    authorization {{
      users = [
        {{user: ops, password: ops}}
        {{user: app, password: app, permissions: {{publish: {{deny: [{deny}]}}}}}}
      ]
    }}
    """
    async with EmbeddedNatsServer(config=config) as server:
        ops, _ = orders_app(server, security=SASLPlaintext("ops", "ops"))
        async with running(ops.broker):
            pass

        # When the app starts in verify mode
        pubsub, seen = orders_app(server, topology="verify", security=SASLPlaintext("app", "app"))
        async with running(pubsub.broker):
            published = await pubsub.publish("order.created", {"id": 1})
            js = pubsub.broker.connection.jetstream()
            await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", CREATED), message="handled")

    # Then it runs as usual
    assert seen == [published.event_id]
