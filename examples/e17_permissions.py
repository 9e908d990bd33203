"""Least-privilege NATS users for two apps, generated from the apps themselves.

``payments`` publishes ``payment.done``; ``orders`` consumes it with retries, a DLQ and a KV
inbox. Each app gets a reply prefix of its own, and each user exactly the permissions its
app's topology needs. ``python examples/e17_permissions.py`` prints the blocks; the tests
run :func:`main` on a server whose users have exactly them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faststream.nats import NatsBroker
from faststream.security import SASLPlaintext

from faststream_natspubsub import EventMetadata, NatsPubsub, RetryPolicy
from faststream_natspubsub.testing import EmbeddedNatsServer


def create_apps(
    url: str, *, inbox: str | None = "kv", topology: str = "create"
) -> tuple[NatsPubsub, NatsPubsub, asyncio.Queue[str]]:
    """The two apps, each logged in as its own user (``inbox`` and ``topology`` of orders
    vary for the permissions page)."""
    # --8<-- [start:apps]
    payments = NatsPubsub(
        NatsBroker(url, security=SASLPlaintext("payments", "payments"), logger=None),
        env="production",
        app="payments",
        inbox_prefix="_INBOX_payments",  # replies to this app only
    )
    orders = NatsPubsub(
        NatsBroker(url, security=SASLPlaintext("orders", "orders"), logger=None),
        env="production",
        app="orders",
        retry=RetryPolicy(max_attempts=3),
        inbox=inbox,  # "kv" here
        inbox_prefix="_INBOX_orders",
        topology=topology,  # "create" here
    )
    # --8<-- [end:apps]
    handled: asyncio.Queue[str] = asyncio.Queue()

    @orders.subscriber("payment.done", app="payments")
    async def paid(body: dict[str, Any], meta: EventMetadata) -> None:
        await handled.put(body["order_id"])

    return payments, orders, handled


def server_config(payments: NatsPubsub, orders: NatsPubsub) -> str:
    """A nats-server ``authorization`` block: each user exactly what its app needs."""
    # --8<-- [start:generate]
    publisher = payments.permissions("publisher")
    consumer = orders.permissions("consumer", "health")
    # Each block goes into its user's entry in the server's authorization users
    users = [
        f"{{user: payments, password: payments\n{publisher.to_config()}}}",
        f"{{user: orders, password: orders\n{consumer.to_config()}}}",
    ]
    # --8<-- [end:generate]
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"


async def main() -> list[str]:
    """Run both apps on a server whose users have exactly the generated permissions."""
    payments, orders, handled = create_apps("nats://127.0.0.1:1")  # only to generate
    async with EmbeddedNatsServer(config=server_config(payments, orders)) as server:
        payments, orders, handled = create_apps(server.url)
        await payments.broker.start()
        await orders.broker.start()
        try:
            await payments.publish("payment.done", {"order_id": "ORD-1"})
            return [await asyncio.wait_for(handled.get(), 10)]
        finally:
            await orders.broker.stop()
            await payments.broker.stop()


if __name__ == "__main__":
    payments, orders, _ = create_apps("nats://127.0.0.1:4222")
    print(payments.permissions("publisher").to_config())
    print(orders.permissions("consumer", "health").to_config())
