"""Servers whose users have exactly the permissions the generator prints, and the apps and
scenarios the permission tests run as those users."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import nats
from faststream.nats import NatsBroker
from faststream.security import SASLPlaintext

from faststream_natspubsub import (
    DeadLetterQueue,
    EventMetadata,
    NatsPubsub,
    PermanentError,
    RetryPolicy,
)
from faststream_natspubsub.host import BrokerHost
from faststream_natspubsub.permissions import Permission, PermissionSet
from faststream_natspubsub.subjects import consumer_name

ADMIN = "admin"
ORDERS_PREFIX = "_INBOX_orders"
PAYMENTS_PREFIX = "_INBOX_payments"
PAID = consumer_name("orders", "test.payments.payment.done")
# Two attempts, a short pause: a retry and a dead letter within a second.
FAST_RETRY = RetryPolicy(max_attempts=2, backoff=(0.05,))


def users_config(users: dict[str, PermissionSet | str | None], *, extra: str = "") -> str:
    """An ``authorization`` block: ``admin`` may do anything, each other user gets its set
    (a generated :class:`PermissionSet`, a raw ``permissions {}`` text, or nothing)."""
    entries = [f"{{user: {ADMIN}, password: {ADMIN}}}"]
    for name, permissions in users.items():
        block = permissions.to_config() if isinstance(permissions, PermissionSet) else permissions
        entries.append(f"{{user: {name}, password: {name}\n{block or ''}\n}}")
    return extra + "authorization {\n  users = [\n" + "\n".join(entries) + "\n  ]\n}\n"


# A URL for apps that are only declared (to compute their permissions), never started.
NOWHERE = "nats://127.0.0.1:1"


def broker_as(url: str, user: str, **kwargs: Any) -> NatsBroker:
    """A broker logged in as ``user`` (password = name), FastStream's per-message log off."""
    return NatsBroker(url, logger=None, security=SASLPlaintext(user, user), **kwargs)


@dataclass
class Orders:
    """The consuming app of the tests and what its handler saw."""

    pubsub: NatsPubsub
    attempts: Counter[str] = field(default_factory=Counter)

    @property
    def watch_count(self) -> int:
        """Permission violations heard on its connection."""
        return BrokerHost.of(self.pubsub.broker).permissions.count


def orders_app(
    url: str,
    *,
    user: str = "orders",
    inbox: str | None = None,
    topology: str = "create",
    ack_wait: float = 30.0,
) -> Orders:
    """``orders`` reads payments' ``payment.done``: ``ok`` is handled, ``flaky`` fails once,
    ``bad`` is dead-lettered at once (PermanentError)."""
    pubsub = NatsPubsub(
        broker_as(url, user),
        env="test",
        app="orders",
        retry=FAST_RETRY,
        inbox=inbox,
        inbox_prefix=ORDERS_PREFIX,
        topology=topology,
    )
    orders = Orders(pubsub)

    @pubsub.subscriber("payment.done", app="payments", ack_wait=ack_wait)
    async def paid(body: dict[str, Any], meta: EventMetadata) -> None:
        kind = body["kind"]
        orders.attempts[kind] += 1
        if kind == "flaky" and orders.attempts[kind] == 1:
            raise ConnectionError("the ledger is away")
        if kind == "bad":
            raise PermanentError("unknown currency")

    return orders


def payments_app(url: str, *, user: str = "payments") -> NatsPubsub:
    """``payments`` publishes ``payment.done``."""
    return NatsPubsub(
        broker_as(url, user), env="test", app="payments", inbox_prefix=PAYMENTS_PREFIX
    )


def consumer_set(inbox: str | None = None, topology: str = "create") -> PermissionSet:
    """What ``orders`` needs to consume and report its health, from the app itself."""
    app = orders_app(NOWHERE, inbox=inbox, topology=topology)
    return app.pubsub.permissions("consumer", "health")


def publisher_set() -> PermissionSet:
    return payments_app(NOWHERE).permissions("publisher")


async def push_to_max_deliver(url: str, *, body: dict[str, Any]) -> None:
    """Publish an event (as payments, through its app) and, as admin, deliver it until the
    consumer gives up, without acking: what a consumer crashing on it would cause. The
    server sends the MAX_DELIVERIES advisory on the next pull (the app's, at its start)."""
    payments = NatsPubsub(
        NatsBroker(url, logger=None, security=SASLPlaintext(ADMIN, ADMIN)),
        env="test",
        app="payments",
    )
    async with running_broker(payments.broker):
        await payments.publish("payment.done", body)
    nc = await nats.connect(url, user=ADMIN, password=ADMIN)
    try:
        js = nc.jetstream()
        subscription = await js.pull_subscribe_bind(PAID, "TEST_PAYMENTS")
        for _ in range(FAST_RETRY.max_deliver):
            for msg in await subscription.fetch(1, timeout=5):
                await msg.nak()
        await subscription.unsubscribe()
    finally:
        await nc.close()


@asynccontextmanager
async def running_broker(broker: NatsBroker) -> AsyncIterator[None]:
    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


async def declare_as_admin(url: str, inbox: str | None = None) -> None:
    """The topology of ``orders`` and ``payments``, declared by an admin."""
    orders = orders_app(url, user=ADMIN, inbox=inbox)
    payments = payments_app(url, user=ADMIN)
    async with running_broker(payments.broker), running_broker(orders.pubsub.broker):
        pass


async def dlq_records(url: str) -> list[Any]:
    nc = await nats.connect(url, user=ADMIN, password=ADMIN)
    try:
        return await DeadLetterQueue(nc.jetstream(), env="test", app="orders").list()
    finally:
        await nc.close()


async def consumer_state(url: str, stream: str, durable: str) -> Any:
    nc = await nats.connect(url, user=ADMIN, password=ADMIN)
    try:
        return await nc.jsm().consumer_info(stream, durable)
    finally:
        await nc.close()


async def stream_messages(url: str, stream: str) -> int:
    """How many messages ``stream`` stores, asked as the admin."""
    nc = await nats.connect(url, user=ADMIN, password=ADMIN)
    try:
        return int((await nc.jsm().stream_info(stream)).state.messages)
    finally:
        await nc.close()


def param_id(permission: Permission) -> str:
    return f"{permission.action}:{permission.subject}"
