"""Apps kept apart by their permissions: their own reply prefix, and no read right on the
topics of a source stream they do not subscribe to (issue 19.6)."""

from __future__ import annotations

import json
from typing import Any

import nats
import pytest
from permission_support import (
    ADMIN,
    ORDERS_PREFIX,
    PAID,
    broker_as,
    consumer_set,
    declare_as_admin,
    orders_app,
    payments_app,
    publisher_set,
    running_broker,
    users_config,
)
from support import wait_until

from faststream_natspubsub import ConfigurationError, NatsPubsub
from faststream_natspubsub.advisory_read import reader_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

NEIGHBOUR = """permissions {
  publish { deny = [">"] }
  subscribe { allow = ["_INBOX_neighbour.>"] }
}"""


class _Listener:
    """A neighbour's connection: what it received, and what the server refused it."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.refused: list[str] = []

    async def on_error(self, exc: Exception) -> None:
        self.refused.append(str(exc))

    async def on_message(self, msg: Any) -> None:
        self.received.append(msg.subject)


async def test_a_neighbour_allowed_only_its_own_prefix_reads_none_of_another_apps_replies() -> None:
    # Given orders with its own reply prefix and exactly its permissions, and a neighbour
    # allowed to subscribe to its own prefix only
    config = users_config(
        {"orders": consumer_set(), "payments": publisher_set(), "neighbour": NEIGHBOUR}
    )
    async with EmbeddedNatsServer(config=config) as server:
        await declare_as_admin(server.url)
        neighbour = _Listener()
        nc = await nats.connect(
            server.url, user="neighbour", password="neighbour", error_cb=neighbour.on_error
        )
        try:
            # When the neighbour tries to listen to orders' replies and to every _INBOX
            for subject in (f"{ORDERS_PREFIX}.>", "_INBOX.>"):
                await nc.subscribe(subject, cb=neighbour.on_message)
            await nc.flush()
            await nc.flush()
            orders = orders_app(server.url)
            payments = payments_app(server.url)
            async with running_broker(payments.broker), running_broker(orders.pubsub.broker):
                for _ in range(3):
                    await payments.publish("payment.done", {"kind": "ok"})
                await wait_until(lambda: orders.attempts["ok"] == 3, message="orders consumed")
                await nc.flush()
        finally:
            await nc.close()

    # Then the server refused both subscriptions, and the neighbour saw nothing
    assert any(f'"{ORDERS_PREFIX.lower()}.>"' in e for e in neighbour.refused), neighbour.refused
    assert any('"_inbox.>"' in e for e in neighbour.refused), neighbour.refused
    assert neighbour.received == []


async def test_with_the_shared_default_prefix_a_neighbour_reads_another_apps_pulled_events() -> (
    None
):
    # Why the prefix matters: orders on the default _INBOX, a neighbour allowed _INBOX.>
    config = users_config(
        {
            "orders": None,
            "neighbour": NEIGHBOUR.replace("_INBOX_neighbour.>", "_INBOX.>"),
        }
    )
    async with EmbeddedNatsServer(config=config) as server:
        neighbour = _Listener()
        nc = await nats.connect(server.url, user="neighbour", password="neighbour")
        try:
            await nc.subscribe("_INBOX.>", cb=neighbour.on_message)
            await nc.flush()
            orders = NatsPubsub(broker_as(server.url, "orders"), env="test", app="orders")
            seen: list[Any] = []

            @orders.subscriber("order.created")
            async def created(body: dict[str, Any]) -> None:
                seen.append(body)

            async with running_broker(orders.broker):
                await orders.publish("order.created", {"secret": 1})
                await wait_until(lambda: len(seen) == 1, message="orders consumed")
                await wait_until(lambda: len(neighbour.received) > 0, message="a leaked reply")
        finally:
            await nc.close()
    assert neighbour.received  # the pulled event and PubAcks went past the neighbour


async def test_a_prefix_set_on_the_broker_only_reaches_the_facades_subscribers() -> None:
    # Given a user allowed replies on its own prefix only, set on the broker alone
    config = users_config({"orders": consumer_set(), "payments": publisher_set()})
    async with EmbeddedNatsServer(config=config) as server:
        await declare_as_admin(server.url)
        broker = broker_as(server.url, "orders", inbox_prefix=ORDERS_PREFIX)
        pubsub = NatsPubsub(broker, env="test", app="orders")
        paid: list[Any] = []

        @pubsub.subscriber("payment.done", app="payments")
        async def on_paid(body: dict[str, Any]) -> None:
            paid.append(body)

        payments = payments_app(server.url)
        async with running_broker(payments.broker), running_broker(broker):
            await payments.publish("payment.done", {"kind": "ok"})
            # Then its pull subscriber gets the event (FastStream alone would pull on _INBOX.)
            await wait_until(lambda: len(paid) == 1, message="the event pulled on the prefix")
    assert pubsub.inbox_prefix == ORDERS_PREFIX


async def test_a_consumer_cannot_read_topics_of_its_source_stream_it_does_not_subscribe_to() -> (
    None
):
    # Given orders, allowed exactly its set, and an event on a payments topic it ignores
    config = users_config({"orders": consumer_set(), "payments": publisher_set()})
    async with EmbeddedNatsServer(config=config) as server:
        await declare_as_admin(server.url)
        payments = payments_app(server.url)
        async with running_broker(payments.broker):
            secret = await payments.publish("payment.refunded", {"card": "4111"})
        refused: list[str] = []

        async def on_error(exc: Exception) -> None:
            refused.append(str(exc))

        nc = await nats.connect(
            server.url,
            user="orders",
            password="orders",
            inbox_prefix=ORDERS_PREFIX,
            error_cb=on_error,
        )
        try:
            # When it asks for that message by sequence, or through its advisory reader with
            # another filter
            get = json.dumps({"seq": secret.seq}).encode()
            reader = reader_name(PAID)
            other = "test.payments.payment.refunded"
            create = json.dumps(
                {
                    "stream_name": "TEST_PAYMENTS",
                    "config": {"name": reader, "filter_subject": other},
                }
            ).encode()
            for subject, body in (
                ("$JS.API.STREAM.MSG.GET.TEST_PAYMENTS", get),
                ("$JS.API.DIRECT.GET.TEST_PAYMENTS", get),
                (f"$JS.API.CONSUMER.CREATE.TEST_PAYMENTS.{reader}.{other}", create),
                (f"$JS.API.CONSUMER.CREATE.TEST_PAYMENTS.{reader}", create),
            ):
                await nc.publish(subject, body, reply=nc.new_inbox())
            await nc.flush()
            await nc.flush()
        finally:
            await nc.close()

    # Then the server refused every one of them
    assert len(refused) == 4, refused
    assert all("permissions violation for publish" in e for e in refused)


def test_an_app_cannot_take_another_prefix_than_its_brokers() -> None:
    broker = broker_as("nats://127.0.0.1:1", ADMIN, inbox_prefix="_INBOX_a")
    with pytest.raises(ConfigurationError, match="_INBOX_a"):
        NatsPubsub(broker, env="test", app="orders", inbox_prefix="_INBOX_b")


def test_a_later_app_cannot_change_the_prefix_the_first_one_uses() -> None:
    broker = broker_as("nats://127.0.0.1:1", ADMIN)
    NatsPubsub(broker, env="test", app="orders")
    with pytest.raises(ConfigurationError, match="first NatsPubsub"):
        NatsPubsub(broker, env="test", app="payments", inbox_prefix="_INBOX_payments")


def test_the_prefix_is_one_setting_not_a_subscriber_argument() -> None:
    pubsub = NatsPubsub(
        broker_as("nats://127.0.0.1:1", ADMIN), env="test", app="orders", inbox_prefix="_INBOX_o"
    )
    with pytest.raises(ConfigurationError, match="inbox_prefix"):
        pubsub.subscriber("order.created", inbox_prefix=b"_INBOX_x.")


@pytest.mark.parametrize("prefix", ["", "_INBOX.>", "a..b", "has space", "trailing."])
def test_an_invalid_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="inbox_prefix"):
        NatsPubsub(
            broker_as("nats://127.0.0.1:1", ADMIN), env="test", app="orders", inbox_prefix=prefix
        )
