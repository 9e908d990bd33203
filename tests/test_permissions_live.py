"""Each role works with exactly the permissions the generator prints, on a server that
grants nothing more; without any one of them it fails, naming it (issue 19.2, 19.3)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import pytest
from permission_support import (
    NOWHERE,
    PAID,
    consumer_set,
    consumer_state,
    declare_as_admin,
    dlq_records,
    orders_app,
    param_id,
    payments_app,
    publisher_set,
    push_to_max_deliver,
    running_broker,
    users_config,
)
from support import wait_until

from faststream_natspubsub import (
    HealthStatus,
    PermissionDeniedError,
    PublishError,
    TopologyError,
)
from faststream_natspubsub.permissions import Permission, PermissionSet
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

VARIANTS = pytest.mark.parametrize(
    ("inbox", "topology"),
    [(None, "create"), ("kv", "create"), ("kv", "verify")],
    ids=["no-inbox", "kv-inbox", "kv-inbox-verify"],
)


async def _scenario(
    server: EmbeddedNatsServer, inbox: str | None, topology: str = "create"
) -> tuple[Any, Any]:
    """A poison event the consumer gave up on, then ok, flaky and bad events; orders runs
    until each is handled or dead-lettered. Returns the app and its health."""
    await push_to_max_deliver(server.url, body={"kind": "poison"})
    payments = payments_app(server.url)
    async with running_broker(payments.broker):
        for kind in ("ok", "flaky", "bad"):
            await payments.publish("payment.done", {"kind": kind})
        orders = orders_app(server.url, inbox=inbox, topology=topology)
        async with running_broker(orders.pubsub.broker):
            await wait_until(
                lambda: orders.attempts["flaky"] == 2 and orders.attempts["ok"] == 1,
                message="ok and flaky handled",
            )

            async def two_records() -> bool:
                return len(await dlq_records(server.url)) == 2

            await wait_until(two_records, message="bad and poison dead-lettered")
            health = await orders.pubsub.health()
    return orders, health


@VARIANTS
async def test_a_consumer_retries_dead_letters_and_hears_advisories_with_exactly_its_set(
    inbox: str | None, topology: str
) -> None:
    # Given a server whose users have exactly the generated sets (and, for an app that only
    # verifies its topology, an operator who declared it)
    rights = consumer_set(inbox, topology)
    config = users_config({"orders": rights, "payments": publisher_set()})
    async with EmbeddedNatsServer(config=config) as server:
        await declare_as_admin(server.url, inbox)

        # When payments publishes and orders consumes, with a retry, a permanent failure and
        # an event its consumer gave up on (MAX_DELIVERIES)
        orders, health = await _scenario(server, inbox, topology)
        records = await dlq_records(server.url)
        state = await consumer_state(server.url, "TEST_PAYMENTS", PAID)

    # Then everything worked, and the server refused nothing
    assert orders.attempts == {"ok": 1, "flaky": 2, "bad": 1}  # poison never reached it
    reasons = sorted(r.reason for r in records)
    assert reasons == ["max_deliver_exceeded", "permanent_error"]
    # (degraded at most: the flaky event may still count as redelivered)
    assert health.status is not HealthStatus.UNHEALTHY, health.to_dict()
    assert health.components["permissions"].status is HealthStatus.HEALTHY
    assert orders.watch_count == 0
    assert state.num_ack_pending == 0
    assert state.num_pending == 0


def _entries(permissions: PermissionSet) -> list[Any]:
    return [pytest.param(p, id=param_id(p)) for p in permissions.permissions]


KV_CONSUMER = consumer_set("kv")


async def _start_or_run(server: EmbeddedNatsServer, fresh: bool) -> TopologyError | Any:
    """The start's TopologyError, or the app's health after the scenario ran."""
    try:
        if fresh:
            orders = orders_app(server.url, inbox="kv")
            async with running_broker(orders.pubsub.broker):
                pass
        else:
            _, health = await _scenario(server, "kv")
    except TopologyError as exc:
        return exc
    return health if not fresh else None


@pytest.mark.parametrize("missing", _entries(KV_CONSUMER))
async def test_a_consumer_without_any_one_permission_fails_naming_it(
    missing: Permission, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the consumer's set without one entry
    config = users_config({"orders": KV_CONSUMER.without(missing), "payments": publisher_set()})
    # Creating is only tried when nothing exists yet; everything else on a declared topology
    fresh = ".CREATE." in missing.subject and "advisory-read" not in missing.subject
    async with EmbeddedNatsServer(config=config) as server:
        if not fresh:
            await declare_as_admin(server.url, "kv")
        caplog.set_level(logging.ERROR, logger="faststream_natspubsub")
        started = time.monotonic()
        # When the app starts (and runs the scenario)
        outcome = await _start_or_run(server, fresh)

    if isinstance(outcome, TopologyError):
        # Then either its start fails at once, naming the permission
        assert _names(str(outcome), missing), str(outcome)
        assert time.monotonic() - started < 3.0
        return
    # or it runs, and health() is unhealthy naming the permission (and an ERROR log too)
    assert outcome is not None, f"the app started without {missing.subject}"
    assert outcome.status is HealthStatus.UNHEALTHY
    assert _names(json.dumps(outcome.to_dict()), missing), outcome.to_dict()
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(_names(line, missing) for line in logged), logged


async def test_a_publisher_publishes_with_exactly_its_set() -> None:
    config = users_config({"payments": publisher_set()})
    async with EmbeddedNatsServer(config=config) as server:
        payments = payments_app(server.url)
        async with running_broker(payments.broker):
            one = await payments.publish("payment.done", {"kind": "ok"})
            many = await payments.publish_many([("payment.done", {"n": n}) for n in range(3)])
    assert one.ok
    assert all(result.ok for result in many), many


PUBLISHER = publisher_set()


@pytest.mark.parametrize("missing", _entries(PUBLISHER))
async def test_a_publisher_without_any_one_permission_fails_naming_it(missing: Permission) -> None:
    config = users_config({"payments": PUBLISHER.without(missing)})
    async with EmbeddedNatsServer(config=config) as server:
        payments = payments_app(server.url)
        started = time.monotonic()
        with pytest.raises((TopologyError, PublishError)) as raised:
            async with running_broker(payments.broker):
                await payments.publish("payment.done", {"kind": "ok"})
    assert _names(str(raised.value), missing)
    assert time.monotonic() - started < 3.0
    if isinstance(raised.value, PublishError):
        assert isinstance(raised.value, PermissionDeniedError)


def _names(message: str, permission: Permission) -> bool:
    """Whether ``message`` names the permission, or for a wildcard one a subject under it."""
    return permission.subject in message or (
        permission.subject.endswith(".>") and f'"{permission.subject[:-1]}' in message
    )


def _done_only() -> PermissionSet:
    """The publisher's set, allowed to publish ``payment.done`` only of its topics."""
    allowed = publisher_set()
    events = next(p for p in allowed.permissions if p.subject == "test.payments.>")
    narrower = dataclasses.replace(events, subject="test.payments.payment.done")
    return dataclasses.replace(
        allowed,
        permissions=tuple(narrower if p == events else p for p in allowed.permissions),
    )


async def test_publish_many_reports_a_refused_subject_per_item() -> None:
    # Given a publisher that may publish one of its topics only
    async with EmbeddedNatsServer(config=users_config({"payments": _done_only()})) as server:
        payments = payments_app(server.url)
        async with running_broker(payments.broker):
            started = time.monotonic()
            results = await payments.publish_many(
                [("payment.done", {"n": 1}), ("payment.refunded", {"n": 2})]
            )
    assert results[0].ok
    assert isinstance(results[1].error, PermissionDeniedError)
    assert "test.payments.payment.refunded" in str(results[1].error)
    assert time.monotonic() - started < 3.0


@pytest.mark.slow
async def test_a_window_over_the_clients_buffer_with_a_refused_item_returns_every_result() -> None:
    # Over 2 MiB the client flushes as it writes, and swallowed the refusal's interruption;
    # the retry round's then escaped publish_many as CancelledError, results and all lost
    async with EmbeddedNatsServer(config=users_config({"payments": _done_only()})) as server:
        payments = payments_app(server.url)
        async with running_broker(payments.broker):
            filler = "x" * 700
            items = [("payment.refunded", {"n": 0, "b": filler})]
            items += [("payment.done", {"n": n, "b": filler}) for n in range(1, 4000)]
            results = await payments.publish_many(items, timeout=2)
    assert isinstance(results[0].error, PermissionDeniedError)
    assert all(r.ok and r.seq is not None for r in results[1:])


def _health_set() -> PermissionSet:
    return orders_app(NOWHERE).pubsub.permissions("health")


HEALTH = _health_set()


async def _health_as_monitor(server: EmbeddedNatsServer) -> Any:
    """``health()`` of orders, from a process that only connects (a probe's own user)."""
    orders = orders_app(server.url, user="monitor")
    await orders.pubsub.broker.connect()
    try:
        return await orders.pubsub.health()
    finally:
        await orders.pubsub.broker.stop()


async def test_health_works_with_exactly_its_set() -> None:
    async with EmbeddedNatsServer(config=users_config({"monitor": HEALTH})) as server:
        await declare_as_admin(server.url)
        report = await _health_as_monitor(server)
    assert report.status is HealthStatus.HEALTHY, report.to_dict()


@pytest.mark.parametrize("missing", _entries(HEALTH))
async def test_health_without_any_one_permission_is_unhealthy_naming_it(
    missing: Permission,
) -> None:
    config = users_config({"monitor": HEALTH.without(missing)})
    async with EmbeddedNatsServer(config=config) as server:
        await declare_as_admin(server.url)
        started = time.monotonic()
        report = await _health_as_monitor(server)
    assert report.status is HealthStatus.UNHEALTHY
    assert _names(json.dumps(report.to_dict()), missing), report.to_dict()
    assert time.monotonic() - started < 1.5  # the refusal, not a timeout, ended each check
