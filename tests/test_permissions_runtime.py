"""A permission withdrawn while the app runs stops what needs it, loudly (issue 19.4).

Before: without the ack right handlers ran twice and handled events were dead-lettered;
without the pull, dead-letter or advisory right nothing was consumed or recorded while
``health()`` said healthy; without KV rights every event was dead-lettered. Now the first
refusal stops the subscribers that need the right, logs it at ERROR once and makes
``health()`` unhealthy; events stay in their stream for when the right is back.

The server's config is reloaded (``SIGHUP``) with the right removed, as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from permission_support import (
    PAID,
    consumer_set,
    consumer_state,
    dlq_records,
    orders_app,
    payments_app,
    publisher_set,
    running_broker,
    stream_messages,
    users_config,
)
from support import wait_until

from faststream_natspubsub import HealthStatus, PermissionDeniedError
from faststream_natspubsub.host import BrokerHost
from faststream_natspubsub.permissions import PermissionSet
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

ACK_WAIT = 1.0


def _less(permissions: PermissionSet, subject: str) -> PermissionSet:
    found = next(p for p in permissions.permissions if p.subject.startswith(subject))
    return permissions.without(found)


async def _run_then_withdraw(
    inbox: str | None, subject: str, events: list[str], caplog: pytest.LogCaptureFixture
) -> dict[str, Any]:
    """Start orders with its full set, withdraw the permission starting with ``subject``,
    publish ``events``, and wait until orders stopped consuming."""
    full = consumer_set(inbox)
    payments_rights = publisher_set()
    caplog.set_level(logging.ERROR, logger="faststream_natspubsub")
    config = users_config({"orders": full, "payments": payments_rights})
    async with EmbeddedNatsServer(config=config) as server:
        orders = orders_app(server.url, inbox=inbox, ack_wait=ACK_WAIT)
        payments = payments_app(server.url)
        async with running_broker(payments.broker), running_broker(orders.pubsub.broker):
            # When the operator withdraws one right and events arrive
            withdrawn = _less(full, subject)
            await server.reload(users_config({"orders": withdrawn, "payments": payments_rights}))
            for kind in events:
                await payments.publish("payment.done", {"kind": kind})
            lifecycle = orders.pubsub._registrar.lifecycle
            monitor = lifecycle.monitor
            assert monitor is not None

            await wait_until(lambda: PAID in monitor.stopped, message="the subscriber stopped")
            subscriber = lifecycle.by_durable[PAID]
            await wait_until(lambda: not subscriber.running, message="it stopped")
            # Twice the ack wait: a delivery that was not acked would be delivered again now
            await asyncio.sleep(2 * ACK_WAIT)
            health = await orders.pubsub.health()
            heard = BrokerHost.of(orders.pubsub.broker).permissions.count
        records = await dlq_records(server.url)
        state = await consumer_state(server.url, "TEST_PAYMENTS", PAID)
    logged = [r.getMessage() for r in caplog.records if r.name.endswith(".permissions")]
    return {
        "attempts": dict(orders.attempts),
        "health": health,
        "records": records,
        "state": state,
        "logged": logged,
        "heard": heard,
        "subject": next(p.subject for p in full.permissions if p.subject.startswith(subject)),
    }


def _assert_stopped_loudly(outcome: dict[str, Any]) -> None:
    subject = outcome["subject"]
    health = outcome["health"]
    assert health.status is HealthStatus.UNHEALTHY
    assert subject in json.dumps(health.components["permissions"].to_dict())
    assert PAID in health.components["permissions"].data["stopped"]
    # ERROR once, however often the server refused it
    assert len([line for line in outcome["logged"] if subject in line]) == 1, outcome["logged"]
    assert outcome["records"] == []  # nothing dead-lettered for lack of a right


@pytest.mark.slow
async def test_without_the_ack_right_a_handler_runs_once_and_nothing_is_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome = await _run_then_withdraw(None, "$JS.ACK.", ["ok"], caplog)

    # Then the handler ran once (its ack was refused), and the event waits in its stream
    assert outcome["attempts"] == {"ok": 1}
    _assert_stopped_loudly(outcome)


@pytest.mark.slow
async def test_without_the_dlq_right_a_failing_event_stays_and_consuming_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome = await _run_then_withdraw(None, "dlq.", ["bad"], caplog)

    assert outcome["attempts"] == {"bad": 1}
    _assert_stopped_loudly(outcome)
    assert outcome["state"].num_pending + outcome["state"].num_ack_pending == 1


@pytest.mark.slow
async def test_without_the_kv_rights_an_event_is_not_dead_lettered_and_consuming_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome = await _run_then_withdraw("kv", "$KV.", ["ok"], caplog)

    assert outcome["attempts"] == {}  # its claim was refused: the handler never ran
    _assert_stopped_loudly(outcome)
    assert outcome["state"].num_pending + outcome["state"].num_ack_pending == 1


@pytest.mark.slow
async def test_without_the_pull_right_health_says_so_instead_of_healthy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome = await _run_then_withdraw(None, "$JS.API.CONSUMER.MSG.NEXT.", ["ok"], caplog)

    _assert_stopped_loudly(outcome)


@pytest.mark.slow
async def test_without_the_advisory_subscription_consuming_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome = await _run_then_withdraw(
        None, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.", [], caplog
    )

    _assert_stopped_loudly(outcome)


async def test_publish_many_after_its_replies_were_refused_reports_every_item_failed() -> None:
    # Given a publisher whose right to its inbox prefix is withdrawn while it runs
    rights = publisher_set()
    async with EmbeddedNatsServer(config=users_config({"payments": rights})) as server:
        payments = payments_app(server.url)
        async with running_broker(payments.broker):
            first = await payments.publish_many([("payment.done", {"n": 0})])
            await server.reload(users_config({"payments": _less(rights, "_INBOX_payments")}))
            watch = BrokerHost.of(payments.broker).permissions
            await wait_until(lambda: watch.reply_refusal is not None, message="refusal heard")

            # When it publishes a window (no PubAck can reach it any more)
            results = await payments.publish_many([("payment.done", {"n": n}) for n in range(1, 4)])
        stored = await stream_messages(server.url, "TEST_PAYMENTS")

    # Then no item says it was stored, each says why, and only the first event is stored
    assert first[0].ok
    assert [r.ok for r in results] == [False, False, False]
    assert all(isinstance(r.error, PermissionDeniedError) for r in results), results
    assert "_INBOX_payments" in str(results[0].error)
    assert stored == 1
