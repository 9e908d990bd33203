"""Several NatsPubsub apps on one broker: each event wrapped once, by the app that publishes
it; each app's subscribers with their own retry policy and DLQ."""

from __future__ import annotations

from typing import Any

import pytest
from faststream.nats import NatsBroker
from pydantic_core import from_json
from support import new_broker, running, wait_until

from faststream_natspubsub import (
    ConfigurationError,
    DeadLetterQueue,
    EventMetadata,
    NatsPubsub,
    PermanentError,
    RetryPolicy,
    SubjectError,
)
from faststream_natspubsub.testing import EmbeddedNatsServer, TestNatsPubsub


def two_apps(broker: NatsBroker) -> tuple[NatsPubsub, NatsPubsub]:
    orders = NatsPubsub(
        broker, env="t", app="orders", retry=RetryPolicy(max_attempts=2, backoff=(0.05,))
    )
    payments = NatsPubsub(
        broker, env="t", app="payments", retry=RetryPolicy(max_attempts=3, backoff=(0.05,))
    )
    return orders, payments


async def test_in_memory_each_app_wraps_its_own_events_once_and_keeps_its_own_policy() -> None:
    # Given two apps on one broker, each consuming the other's events
    broker = NatsBroker()
    orders, payments = two_apps(broker)
    charged: list[tuple[dict[str, Any], EventMetadata]] = []
    shipped: list[tuple[dict[str, Any], EventMetadata]] = []
    failing: list[int] = []

    @payments.subscriber("order.created", app="orders")
    async def charge(body: dict[str, Any], meta: EventMetadata) -> None:
        charged.append((body, meta))
        await payments.publish("payment.settled", {"order": body["id"]})

    @orders.subscriber("payment.settled", app="payments")
    async def ship(body: dict[str, Any], meta: EventMetadata) -> None:
        shipped.append((body, meta))

    @payments.subscriber("refund.requested", app="orders")
    async def refund(body: dict[str, Any], meta: EventMetadata) -> None:
        failing.append(meta.deliveries)
        raise ConnectionError("bank down")

    async with TestNatsPubsub(orders) as tp:
        # When orders publishes, payments handles it and publishes in turn
        created = await orders.publish("order.created", {"id": 7}, correlation_id="req-1")
        await orders.publish("refund.requested", {"id": 8})

    # Then every handler got the message itself, not a second envelope around it
    assert [body for body, _ in charged] == [{"id": 7}]
    assert [body for body, _ in shipped] == [{"order": 7}]
    charge_meta, ship_meta = charged[0][1], shipped[0][1]
    assert charge_meta.app_name == "orders"
    assert charge_meta.event_id == created.event_id
    assert charge_meta.correlation_id == "req-1"
    # ... the event payments published is stamped by payments and continues the chain
    assert ship_meta.app_name == "payments"
    assert ship_meta.correlation_id == "req-1"
    assert ship_meta.causation_id == created.event_id
    # And the failing handler of payments used payments' policy (3 attempts) and its DLQ
    assert failing == [1, 2, 3]
    assert [(r.reason, r.app) for r in tp.dead_letters] == [("max_attempts_exceeded", "payments")]


@pytest.mark.nats
async def test_live_one_broker_hosts_two_apps_each_event_wrapped_once(
    server: EmbeddedNatsServer,
) -> None:
    # Given two apps on one broker against a real server
    broker = new_broker(server)
    orders, payments = two_apps(broker)
    charged: list[EventMetadata] = []
    rejected: list[int] = []

    @payments.subscriber("order.created", app="orders")
    async def charge(body: dict[str, Any], meta: EventMetadata) -> None:
        charged.append(meta)

    @orders.subscriber("payment.failed", app="payments")
    async def reject(body: dict[str, Any], meta: EventMetadata) -> None:
        rejected.append(meta.deliveries)
        raise PermanentError("cannot cancel")

    async with running(broker):
        created = await orders.publish("order.created", {"id": 1}, correlation_id="req-9")
        await payments.publish("payment.failed", {"id": 1})
        await wait_until(lambda: len(charged) == 1, message="the charge")
        js = broker.connection.jetstream()
        # Then the stored event is one envelope, stamped by orders
        stored = await js.get_msg("T_ORDERS", created.seq)
        envelope = from_json(stored.data or b"")
        assert envelope["message"] == {"id": 1}
        assert envelope["metadata"]["app_name"] == "orders"
        assert envelope["metadata"]["correlation_id"] == "req-9"
        assert charged[0].correlation_id == "req-9"
        # And the permanent failure went to the DLQ of orders (the consuming app), not payments'
        orders_dlq = DeadLetterQueue(js, env="t", app="orders")
        payments_dlq = DeadLetterQueue(js, env="t", app="payments")

        async def dead_lettered() -> bool:
            return len(await orders_dlq.list()) == 1

        await wait_until(dead_lettered, message="the dead letter")
        assert rejected == [1]
        assert await payments_dlq.list() == []
        record = (await orders_dlq.list())[0]
        assert record.reason == "permanent_error"
        assert record.envelope is not None
        assert record.envelope["message"] == {"id": 1}


def test_one_app_cannot_be_hosted_twice_on_a_broker() -> None:
    broker = NatsBroker()
    NatsPubsub(broker, env="t", app="orders")
    with pytest.raises(ConfigurationError, match="already on this broker"):
        NatsPubsub(broker, env="t", app="orders")


async def test_publishing_to_a_subject_no_hosted_app_owns_is_refused_when_ambiguous() -> None:
    broker = NatsBroker()
    two_apps(broker)
    async with TestNatsPubsub(NatsPubsub(broker, env="other", app="x")):
        with pytest.raises(SubjectError, match="no topic of the apps on this broker"):
            await broker.publish({"id": 1}, "t.shipping.order.created")
