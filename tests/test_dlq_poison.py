"""Every poison event ends in the DLQ exactly once, with its true reason (issue 19.8, 14.8b).

A record that would exceed the server's maximum payload keeps the head of the received
bytes, their size and SHA-256; the handler runs once.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from typing import Any

import nats
import pytest
from support import NATSPUBSUB_TS_ENVELOPE, consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import DeadLetterQueue, NatsPubsub, PermanentError
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

SUBJECT = "test.orders.order.created"
DURABLE = consumer_name("orders", SUBJECT)


class PoisonApp:
    """An orders app whose handler fails permanently and counts its calls."""

    def __init__(self, server: EmbeddedNatsServer) -> None:
        self.pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
        self.calls = 0

        @self.pubsub.subscriber("order.created")
        async def created(body: dict[str, Any]) -> None:
            self.calls += 1
            raise PermanentError("cannot charge this order")

    @property
    def dlq(self) -> DeadLetterQueue:
        js = self.pubsub.broker.connection.jetstream()
        return DeadLetterQueue(js, env="test", app="orders")

    async def send(self, payload: bytes) -> int:
        """Publish raw bytes as another client would; the stream sequence."""
        nc = await nats.connect(self.pubsub.broker.connection.connected_url.geturl())
        try:
            ack = await nc.jetstream().publish(SUBJECT, payload, timeout=10)
        finally:
            await nc.close()
        return ack.seq

    async def settled(self) -> bool:
        js = self.pubsub.broker.connection.jetstream()
        return bool(await self.dlq.list()) and await consumer_idle(js, "TEST_ORDERS", DURABLE)


async def test_900_kb_of_garbage_is_dead_lettered_once_as_malformed_with_its_head(
    server: EmbeddedNatsServer,
) -> None:
    garbage = os.urandom(900_000)
    app = PoisonApp(server)
    async with running(app.pubsub.broker):
        seq = await app.send(garbage)
        await wait_until(app.settled, timeout=30, message="the record and an idle consumer")
        records = await app.dlq.list()
        info = await app.pubsub.broker.connection.jetstream().consumer_info("TEST_ORDERS", DURABLE)

    [record] = records
    assert record.reason == "malformed"
    assert record.original_seq == seq
    assert (record.raw_size, record.raw_sha256) == (900_000, hashlib.sha256(garbage).hexdigest())
    assert record.raw_truncated is True
    assert 500_000 < len(record.raw_head) < 800_000
    assert garbage.startswith(record.raw_head)
    assert info.num_redelivered == 0  # written at the first delivery
    assert app.calls == 0


async def test_a_time_without_a_utc_form_is_dead_lettered_once_as_malformed(
    server: EmbeddedNatsServer,
) -> None:
    # Before: the envelope was read, and writing its DLQ record failed (no UTC form), so the
    # event was redelivered at once until max_deliver, and never recorded.
    body = b'{"event_id": "e1", "message": {}, "occurred_at": "0001-01-01T00:00:00+01:00"}'
    app = PoisonApp(server)
    async with running(app.pubsub.broker):
        seq = await app.send(body)
        await wait_until(app.settled, timeout=30, message="the record and an idle consumer")
        records = await app.dlq.list()
        info = await app.pubsub.broker.connection.jetstream().consumer_info("TEST_ORDERS", DURABLE)

    [record] = records
    assert record.reason == "malformed"
    assert "occurred_at" in record.error_message
    assert record.original_seq == seq
    assert info.num_redelivered == 0
    assert app.calls == 0


async def test_a_small_gzip_body_that_inflates_to_7_mb_runs_once_and_is_kept_whole(
    server: EmbeddedNatsServer,
) -> None:
    inflated = b'{"event_id":"big-1","message":{"pad":"' + b"a" * 7_000_000 + b'"}}'
    body = gzip.compress(inflated)
    assert len(body) < 10_000
    app = PoisonApp(server)
    async with running(app.pubsub.broker):
        await app.send(body)
        await wait_until(app.settled, timeout=30, message="the record and an idle consumer")
        records = await app.dlq.list()

    [record] = records
    assert app.calls == 1
    assert record.reason == "permanent_error"
    assert record.event_id == "big-1"
    assert record.raw_truncated is False
    assert record.original_bytes == body
    assert record.envelope is None  # 7 MB decoded would not fit; the bytes are enough


async def test_an_event_just_under_the_limit_fails_once_and_keeps_its_true_reason(
    server: EmbeddedNatsServer,
) -> None:
    app = PoisonApp(server)
    async with running(app.pubsub.broker):
        published = await app.pubsub.publish("order.created", {"pad": "p" * 1_047_000})
        await wait_until(app.settled, timeout=30, message="the record and an idle consumer")
        [record] = await app.dlq.list()
        calls_before_replay = app.calls
        original = await app.pubsub.broker.connection.jetstream().get_msg(
            "TEST_ORDERS", published.seq
        )
        # A replay still sends the whole event: the original is read back from its stream.
        replay = await app.dlq.replay(record, keep=True)
        copy = await app.pubsub.broker.connection.jetstream().get_msg("TEST_ORDERS", replay.seq)

    assert calls_before_replay == 1
    assert record.reason == "permanent_error"
    assert record.error_type == "PermanentError"
    assert record.raw_truncated is True
    assert record.raw_size == len(original.data) > 1_047_000
    assert copy.data == original.data


async def test_records_fit_a_server_whose_maximum_payload_is_small() -> None:
    async with EmbeddedNatsServer(config="max_payload: 65536") as server:
        app = PoisonApp(server)
        async with running(app.pubsub.broker):
            await app.pubsub.publish("order.created", {"pad": "p" * 60_000})
            await wait_until(app.settled, timeout=30, message="the record and an idle consumer")
            [record] = await app.dlq.list()

    assert app.calls == 1
    assert record.reason == "permanent_error"
    assert record.raw_truncated is True


async def test_a_natspubsub_1_event_is_dead_lettered_with_its_exact_bytes(
    server: EmbeddedNatsServer,
) -> None:
    app = PoisonApp(server)
    async with running(app.pubsub.broker):
        await app.send(NATSPUBSUB_TS_ENVELOPE)
        await wait_until(app.settled, timeout=30, message="the record and an idle consumer")
        [record] = await app.dlq.list()

    assert record.original_bytes == NATSPUBSUB_TS_ENVELOPE
    assert record.envelope is not None
    assert record.envelope["message"] == {"order_id": "ORD-123", "total": 99.99}
