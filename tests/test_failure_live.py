"""Retries, classification, dead-lettering, heartbeats and crash loops on a real server."""

from __future__ import annotations

import asyncio
import gzip
import logging
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from pydantic import BaseModel
from support import consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import (
    DeadLetterQueue,
    DeadLetterRecord,
    EventMetadata,
    NatsPubsub,
    PermanentError,
    RetryLater,
    RetryPolicy,
)
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

APPS = Path(__file__).parent / "apps"


class Order(BaseModel):
    order_id: str
    total: float


def dlq_of(pubsub: NatsPubsub) -> DeadLetterQueue:
    return DeadLetterQueue(pubsub.broker.connection.jetstream(), env=pubsub.env, app=pubsub.app)


async def dlq_count(pubsub: NatsPubsub) -> int:
    return len(await dlq_of(pubsub).list())


async def test_fails_twice_then_succeeds_with_policy_delays(
    server: EmbeddedNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a handler that fails on its first two deliveries
    policy = RetryPolicy(max_attempts=5, backoff=(0.4, 0.8))
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders", retry=policy)
    seen: list[tuple[int, float]] = []

    @pubsub.subscriber("order.created")
    async def flaky(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append((meta.deliveries, time.monotonic()))
        if meta.deliveries < 3:
            raise ConnectionError("database unavailable")

    caplog.set_level(logging.WARNING, logger="faststream_natspubsub")
    async with running(pubsub.broker):
        published = await pubsub.publish("order.created", {"id": 1})
        await wait_until(lambda: len(seen) == 3, message="three deliveries")
        js = pubsub.broker.connection.jetstream()
        durable = consumer_name("orders", "test.orders.order.created")
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="ack")
        assert await dlq_count(pubsub) == 0

    # Then it was delivered three times with the policy's gaps (loaded-machine tolerance)
    assert [n for n, _ in seen] == [1, 2, 3]
    gaps = [seen[1][1] - seen[0][1], seen[2][1] - seen[1][1]]
    assert 0.4 * 0.9 <= gaps[0] <= 0.4 + 1.0
    assert 0.8 * 0.9 <= gaps[1] <= 0.8 + 1.0
    # And each retry decision was logged as one line naming the event and the error; the
    # traceback only at DEBUG (it is logged once, with a dead letter)
    retries = [r for r in caplog.records if r.name == "faststream_natspubsub.failure"]
    assert len(retries) == 2
    for attempt, record in enumerate(retries, start=1):
        assert record.levelno == logging.WARNING
        assert record.natspubsub_event_id == published.event_id  # type: ignore[attr-defined]
        assert record.natspubsub_subject == "test.orders.order.created"  # type: ignore[attr-defined]
        assert record.natspubsub_attempt == attempt  # type: ignore[attr-defined]
        assert record.natspubsub_delay == policy.delay_for(attempt)  # type: ignore[attr-defined]
        assert record.exc_info is None
        assert "ConnectionError: database unavailable" in record.getMessage()
        assert "\n" not in record.getMessage()


async def test_always_failing_ends_in_the_dlq_with_every_field(
    server: EmbeddedNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RetryPolicy(max_attempts=3, backoff=(0.1,))
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders", retry=policy)
    deliveries: list[int] = []

    @pubsub.subscriber("order.created")
    async def broken(body: dict[str, Any], meta: EventMetadata) -> None:
        deliveries.append(meta.deliveries)
        raise RuntimeError("boom " + "x" * 3_000)

    caplog.set_level(logging.WARNING, logger="faststream_natspubsub")
    async with running(pubsub.broker):
        published = await pubsub.publish(
            "order.created", {"id": 7}, metadata={"correlation_id": "c-7"}
        )
        await wait_until(lambda: dlq_count(pubsub), message="a DLQ record")
        js = pubsub.broker.connection.jetstream()
        durable = consumer_name("orders", "test.orders.order.created")
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="idle")
        records = await dlq_of(pubsub).list()
        info = await js.consumer_info("TEST_ORDERS", durable)
        stored = await js.get_msg("TEST_ORDERS", published.seq)

    assert deliveries == [1, 2, 3]
    assert len(records) == 1
    record = records[0]
    assert record.event_id == published.event_id
    assert record.reason == "max_attempts_exceeded"
    assert record.original_subject == "test.orders.order.created"
    assert record.original_stream == "TEST_ORDERS"
    assert record.original_seq == published.seq
    assert record.consumer == durable
    assert record.headers["Nats-Msg-Id"] == published.event_id
    assert record.envelope is not None
    assert record.envelope["message"] == {"id": 7}
    assert record.envelope["metadata"]["correlation_id"] == "c-7"
    assert record.original_bytes == stored.data  # exactly the bytes that were received
    assert record.raw_size == len(stored.data)
    assert record.raw_truncated is False
    assert record.error_type == "RuntimeError"
    assert record.error_message is not None
    assert record.error_message.startswith("boom")
    assert len(record.error_message) <= 2_000
    assert record.traceback is not None
    assert "RuntimeError" in record.traceback
    assert record.attempts == 3
    assert record.first_failure_at is not None
    assert record.first_failure_at < record.last_failure_at
    assert record.app == "orders"
    assert record.host
    assert info.num_pending == 0
    assert info.num_ack_pending == 0
    assert info.ack_floor.stream_seq == published.seq
    decisions = [r for r in caplog.records if r.name == "faststream_natspubsub.failure"]
    assert [r.levelno for r in decisions] == [logging.WARNING, logging.WARNING, logging.ERROR]
    dead = decisions[-1]
    assert dead.natspubsub_reason == "max_attempts_exceeded"  # type: ignore[attr-defined]
    assert dead.natspubsub_event_id == published.event_id  # type: ignore[attr-defined]
    assert dead.exc_info is not None
    assert isinstance(dead.exc_info[1], RuntimeError)


@pytest.mark.parametrize("kind", ["validation", "permanent"])
async def test_permanent_failures_skip_retries(server: EmbeddedNatsServer, kind: str) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    deliveries: list[int] = []

    @pubsub.subscriber("order.created")
    async def handle(order: Order, meta: EventMetadata) -> None:
        deliveries.append(meta.deliveries)
        raise PermanentError("order cannot be fulfilled")

    body: dict[str, Any] = {"order_id": "O-1", "total": 1.0}
    if kind == "validation":
        body = {"order_id": "O-1", "total": "not a number"}

    async with running(pubsub.broker):
        await pubsub.publish("order.created", body)
        await wait_until(lambda: dlq_count(pubsub), message="a DLQ record")
        js = pubsub.broker.connection.jetstream()
        durable = consumer_name("orders", "test.orders.order.created")
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="idle")
        record = (await dlq_of(pubsub).list())[0]
        info = await js.consumer_info("TEST_ORDERS", durable)

    assert record.reason == "permanent_error"
    assert info.num_redelivered == 0
    if kind == "validation":
        assert deliveries == []  # validation failed before the handler ran
        assert record.error_type == "ValidationError"
    else:
        assert deliveries == [1]
        assert record.error_type == "PermanentError"


async def test_retry_later_delay_is_honoured(server: EmbeddedNatsServer) -> None:
    pubsub = NatsPubsub(
        new_broker(server), env="test", app="orders", retry=RetryPolicy(backoff=(30,))
    )
    seen: list[float] = []

    @pubsub.subscriber("order.created")
    async def later(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append(time.monotonic())
        if meta.deliveries == 1:
            raise RetryLater(delay=0.8)

    async with running(pubsub.broker):
        await pubsub.publish("order.created", {"id": 1})
        await wait_until(lambda: len(seen) == 2, message="the delayed redelivery")
    assert 0.8 * 0.9 <= seen[1] - seen[0] <= 0.8 + 1.0  # not the policy's 30 s


@pytest.mark.parametrize(
    "payload",
    [b"\x00\x01 definitely not json", gzip.compress(b"{" + b" " * 20_000_000 + b"}")],
    ids=["garbage", "gzip-bomb"],
)
async def test_malformed_bytes_go_to_the_dlq_without_the_handler(
    server: EmbeddedNatsServer, payload: bytes
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    pubsub.codec.__init__(max_decompressed_size=1_000_000)  # type: ignore[misc]
    calls: list[Any] = []

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None:
        calls.append(body)

    async with running(pubsub.broker):
        nc = await nats.connect(server.url)
        await nc.jetstream().publish("test.orders.order.created", payload)
        await nc.close()
        await wait_until(lambda: dlq_count(pubsub), message="a DLQ record")
        record = (await dlq_of(pubsub).list())[0]

    assert calls == []
    assert record.reason == "malformed"
    assert record.event_id is None
    assert record.raw_base64 is not None
    assert record.original_bytes == payload
    assert record.attempts == 1


@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_a_handler_running_past_ack_wait_is_delivered_once(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    deliveries: list[int] = []

    # Two workers: a redelivery could be fetched while the first delivery still runs.
    @pubsub.subscriber("report.build", ack_wait=1.0, max_workers=2)
    async def slow(body: dict[str, Any], meta: EventMetadata) -> None:
        deliveries.append(meta.deliveries)
        await asyncio.sleep(2.5)

    async with running(pubsub.broker):
        await pubsub.publish("report.build", {"id": 1})
        js = pubsub.broker.connection.jetstream()
        durable = consumer_name("orders", "test.orders.report.build")
        await wait_until(lambda: len(deliveries) == 1, message="the delivery")
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="the ack")
        info = await js.consumer_info("TEST_ORDERS", durable)
    assert deliveries == [1]
    assert info.delivered.consumer_seq == 1  # the server never delivered it again


@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_without_heartbeat_the_same_handler_would_be_redelivered(
    server: EmbeddedNatsServer,
) -> None:
    # Control for the test above: it proves the setup can fail.
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    pubsub.heartbeat.fraction = 100.0  # first beat long after the handler ends
    deliveries: list[int] = []

    # Two workers: a redelivery could be fetched while the first delivery still runs.
    @pubsub.subscriber("report.build", ack_wait=1.0, max_workers=2)
    async def slow(body: dict[str, Any], meta: EventMetadata) -> None:
        deliveries.append(meta.deliveries)
        await asyncio.sleep(2.5)

    async with running(pubsub.broker):
        await pubsub.publish("report.build", {"id": 1})
        await wait_until(lambda: len(deliveries) >= 2, message="a redelivery")


async def test_a_missing_dlq_keeps_the_message_until_a_restart_stores_it_once(
    server: EmbeddedNatsServer,
) -> None:
    policy = RetryPolicy(max_attempts=1, backoff=(0.5,))
    first = NatsPubsub(new_broker(server), env="test", app="orders", retry=policy)
    attempts: list[int] = []

    @first.subscriber("order.created")
    async def doomed(body: dict[str, Any], meta: EventMetadata) -> None:
        attempts.append(meta.deliveries)
        raise PermanentError("never")

    durable = consumer_name("orders", "test.orders.order.created")
    async with running(first.broker):
        js = first.broker.connection.jetstream()
        await js.delete_stream("DLQ_TEST_ORDERS")
        published = await first.publish("order.created", {"id": 1})
        await wait_until(lambda: len(attempts) == 1, message="the first attempt")
        # The DLQ write fails, so the message is NAKed with a delay: redelivered, never acked
        await wait_until(lambda: _redelivered(js, "TEST_ORDERS", durable), message="a redelivery")
        info = await js.consumer_info("TEST_ORDERS", durable)
        assert info.ack_floor.stream_seq < (published.seq or 0)

    second = NatsPubsub(new_broker(server), env="test", app="orders", retry=policy)

    @second.subscriber("order.created")
    async def still_doomed(body: dict[str, Any], meta: EventMetadata) -> None:
        raise PermanentError("never")

    async with running(second.broker):
        await wait_until(lambda: dlq_count(second), message="the DLQ record after restart")
        js = second.broker.connection.jetstream()
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="idle")
        records = await dlq_of(second).list()
    assert [r.event_id for r in records] == [published.event_id]
    assert attempts == [1]  # later deliveries went straight to the DLQ path


async def _redelivered(js: Any, stream: str, durable: str) -> bool:
    info = await js.consumer_info(stream, durable)
    return bool(info.num_redelivered >= 1)


async def _run_crash_loop(
    server: EmbeddedNatsServer, mode: str, policy: RetryPolicy
) -> tuple[str, int]:
    """Publish a poison event, then start crashing consumers until one stops crashing."""
    probe = NatsPubsub(new_broker(server), env="test", app="crashy", retry=policy)

    @probe.subscriber("job.run", ack_wait=1.0)
    async def never_started(body: dict[str, Any]) -> None: ...

    await probe.broker.connect()
    await probe.declare_topology()
    published = await probe.publish("job.run", {"poison": True})
    await probe.broker.stop()

    crashes = 0
    for _ in range(policy.max_deliver + 2):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(APPS / "crashing_consumer.py"),
            server.url,
            mode,
            stdout=asyncio.subprocess.DEVNULL,
        )
        try:
            code = await asyncio.wait_for(process.wait(), timeout=6)
        except TimeoutError:
            process.kill()
            await process.wait()
            break  # this process got no delivery to crash on
        assert code == 3
        crashes += 1
    return published.event_id, crashes


CRASH_POLICY = RetryPolicy(max_attempts=1, backoff=(0.1,))


@pytest.mark.slow
async def test_a_process_crashing_before_any_middleware_ends_in_the_dlq_via_max_deliver(
    server: EmbeddedNatsServer,
) -> None:
    # Given a consumer that dies while parsing every delivery: no code of ours runs
    event_id, crashes = await _run_crash_loop(server, "parser", CRASH_POLICY)
    assert crashes == CRASH_POLICY.max_deliver  # the server gave up after max_deliver

    # When a healthy instance of the app starts, it hears the MAX_DELIVERIES advisory
    healthy = NatsPubsub(new_broker(server), env="test", app="crashy", retry=CRASH_POLICY)
    handled: list[Any] = []

    @healthy.subscriber("job.run", ack_wait=1.0)
    async def run(body: dict[str, Any]) -> None:
        handled.append(body)

    async with running(healthy.broker):
        await wait_until(lambda: dlq_count(healthy), timeout=15, message="the DLQ record")
        records = await dlq_of(healthy).list()

    # Then the healthy process moved the event to the DLQ, without handling it
    assert handled == []
    assert len(records) == 1
    assert records[0].event_id == event_id
    assert records[0].reason == "max_deliver_exceeded"
    assert records[0].attempts == CRASH_POLICY.max_deliver


@pytest.mark.slow
async def test_a_handler_that_kills_its_process_is_dead_lettered_after_max_attempts(
    server: EmbeddedNatsServer,
) -> None:
    # Given a handler that kills its process: the delivery after max_attempts skips it
    event_id, crashes = await _run_crash_loop(server, "handler", CRASH_POLICY)
    assert crashes == CRASH_POLICY.max_attempts

    reader = NatsPubsub(new_broker(server), env="test", app="crashy", retry=CRASH_POLICY)
    await reader.broker.connect()
    records = await dlq_of(reader).list()
    await reader.broker.stop()
    assert len(records) == 1
    assert records[0].event_id == event_id
    assert records[0].reason == "max_attempts_exceeded"
    assert records[0].attempts == CRASH_POLICY.max_attempts + 1
    assert records[0].error_type is None
    assert records[0].error_message is not None
    assert "did not finish" in records[0].error_message


async def test_a_replayed_record_is_handled_once_and_shows_the_replay(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    fixed = False
    handled: list[EventMetadata] = []

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
        if not fixed:
            raise PermanentError("bug in the handler")
        handled.append(meta)

    async with running(pubsub.broker):
        published = await pubsub.publish("order.created", {"id": 1})
        await wait_until(lambda: dlq_count(pubsub), message="a DLQ record")
        fixed = True
        dlq = dlq_of(pubsub)
        record: DeadLetterRecord = await dlq.get(published.event_id)
        replay = await dlq.replay(record)
        await wait_until(lambda: len(handled) == 1, message="the replayed event")
        remaining = await dlq.list()
        js = pubsub.broker.connection.jetstream()
        durable = consumer_name("orders", "test.orders.order.created")
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="idle")

    meta = handled[0]
    assert replay.event_id == published.event_id
    assert meta.event_id == published.event_id
    assert meta.headers["Natspubsub-Replayed-From"] == f"DLQ_TEST_ORDERS:{record.dlq_seq}"
    assert meta.headers["Natspubsub-Replay-Reason"] == "permanent_error"
    assert meta.replay_count == 1
    assert "dlq_replay" not in meta.metadata  # the body is republished unchanged
    assert remaining == []
    assert len(handled) == 1


async def test_purge_removes_old_records(server: EmbeddedNatsServer) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None:
        raise PermanentError("no")

    async with running(pubsub.broker):
        await pubsub.publish_many([("order.created", {"n": n}) for n in range(3)])
        await wait_until(lambda: _count_is(pubsub, 3), message="three DLQ records")
        dlq = dlq_of(pubsub)
        from datetime import datetime, timedelta, timezone

        assert await dlq.purge(older_than=datetime.now(timezone.utc) - timedelta(hours=1)) == 0
        assert await dlq.purge(older_than=datetime.now(timezone.utc) + timedelta(seconds=1)) == 3
        assert await dlq.list() == []


async def _count_is(pubsub: NatsPubsub, expected: int) -> bool:
    return await dlq_count(pubsub) == expected


async def test_a_foreign_message_in_the_dlq_does_not_hide_the_records(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None:
        raise PermanentError("no")

    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        await js.publish("dlq.test.orders.stray", b"not a record")
        published = await pubsub.publish("order.created", {"id": 1})
        await wait_until(lambda: dlq_count(pubsub), message="the real record")
        dlq = dlq_of(pubsub)
        records = await dlq.list()
        by_seq = await dlq.get_by_seq(records[0].dlq_seq or 0)
    assert [r.event_id for r in records] == [published.event_id]
    assert by_seq.event_id == published.event_id
