"""Each access to FastStream's and nats-py's internals works on the installed versions, and
fails loudly (CompatError naming the supported versions) on something else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from faststream.nats import JStream, NatsBroker, PullSub
from nats.js import JetStreamContext
from support import wait_until

from faststream_natspubsub import NatsPubsubError
from faststream_natspubsub.compat import (
    SUPPORTED,
    CompatError,
    pull_parts,
    record_naks,
    replace_pull_loop,
    settle_locally,
    stop_interest,
    stop_recording_naks,
    subscribe_direct,
    took_from_queue,
    wrap_stop,
    write_protocol,
)
from faststream_natspubsub.testing import EmbeddedNatsServer

STREAM, SUBJECT = "COMPAT", "compat.items"


@pytest.fixture
async def js(server: EmbeddedNatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(server.url)
    jetstream = nc.jetstream()
    await jetstream.add_stream(name=STREAM, subjects=[SUBJECT])
    yield jetstream
    await nc.close()


async def _request(parts: Any, count: int) -> None:
    await parts.client.publish(
        parts.next_subject, b'{"batch": %d, "expires": 5000000000}' % count, parts.deliver_subject
    )


@pytest.mark.nats
async def test_pull_parts_reach_the_queue_and_the_request_subjects(js: JetStreamContext) -> None:
    subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    parts = pull_parts(subscription)
    await js.publish(SUBJECT, b"one")
    # A request sent to the parts' subjects fills the parts' queue
    await _request(parts, 1)
    msg = await asyncio.wait_for(parts.queue.get(), 5)
    assert msg.data == b"one"
    # took_from_queue keeps nats-py's accounting as its own fetch does
    took_from_queue(parts, msg)
    assert subscription.pending_bytes == 0
    assert subscription.pending_msgs == 0


@pytest.mark.nats
async def test_write_protocol_and_settle_locally_acknowledge_like_ack(
    js: JetStreamContext,
) -> None:
    subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    await js.publish(SUBJECT, b"one")
    (msg,) = await subscription.fetch(1, timeout=5)
    await write_protocol(msg._client, b"PUB %s 4\r\n+ACK\r\n" % msg.reply.encode())
    settle_locally(msg)
    assert msg.is_acked
    await wait_until(lambda: _ack_pending(js, 0), message="the server to see the acknowledgement")


async def _ack_pending(js: JetStreamContext, count: int) -> bool:
    return bool((await js.consumer_info(STREAM, "d")).num_ack_pending == count)


@pytest.mark.nats
async def test_record_naks_sees_the_delay_and_still_naks(js: JetStreamContext) -> None:
    subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    await js.publish(SUBJECT, b"one")
    (msg,) = await subscription.fetch(1, timeout=5)
    seen: list[float | None] = []
    record_naks(msg, seen.append)
    await msg.nak(delay=0.2)
    assert seen == [0.2]
    assert msg.is_acked
    stop_recording_naks(msg)
    assert "nak" not in vars(msg)  # the message's own nak again
    (again,) = await subscription.fetch(1, timeout=5)
    assert again.metadata.num_delivered == 2


@pytest.mark.nats
async def test_stop_interest_ends_deliveries_but_keeps_what_came(js: JetStreamContext) -> None:
    subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    parts = pull_parts(subscription)
    for n in range(3):
        await js.publish(SUBJECT, str(n).encode())
    # Given a request still waiting on the server after delivering three messages
    await _request(parts, 10)
    await wait_until(lambda: parts.queue.qsize() == 3, message="three deliveries")
    # When the interest stops
    await stop_interest(parts)
    # Then the server sends no more to the inbox, and what came is still there
    await js.publish(SUBJECT, b"after")
    await asyncio.sleep(0.3)
    assert parts.queue.qsize() == 3
    info = await js.consumer_info(STREAM, "d")
    assert info.num_waiting == 0
    assert info.num_pending == 1


@pytest.mark.nats
async def test_a_direct_subscription_hands_each_message_over_as_it_is_read(
    server: EmbeddedNatsServer,
) -> None:
    nc = await nats.connect(server.url)
    try:
        seen: list[bytes] = []
        subscription = await subscribe_direct(nc, "direct.>", lambda msg: seen.append(msg.data))
        for n in range(100):
            await nc.publish(f"direct.{n}", str(n).encode())
        await nc.flush()
        await wait_until(lambda: len(seen) == 100, message="every message")
        assert seen == [str(n).encode() for n in range(100)]
        # Nothing is kept pending (no slow-consumer limit is ever reached), and it closes
        assert subscription.pending_msgs == 0
        assert subscription.pending_bytes == 0
        await subscription.unsubscribe()
        await nc.publish("direct.after", b"x")
        await nc.flush()
        assert len(seen) == 100
    finally:
        await nc.close()


@pytest.mark.nats
async def test_the_pull_loop_and_stop_of_a_faststream_subscriber_can_be_replaced(
    server: EmbeddedNatsServer, js: JetStreamContext
) -> None:
    broker = NatsBroker(server.url, logger=None)
    subscriber = broker.subscriber(
        SUBJECT,
        stream=JStream(STREAM, declare=False),
        durable="fs",
        pull_sub=PullSub(batch_size=1, timeout=1.0),
    )

    @subscriber
    async def handle(body: bytes) -> None: ...

    looped: list[Any] = []
    calls: list[str] = []

    async def loop(consume: Any) -> None:
        looped.append(consume)
        await asyncio.Event().wait()

    async def before() -> None:
        calls.append("before")

    async def after() -> None:
        calls.append("after")

    replace_pull_loop(subscriber, loop)
    wrap_stop(subscriber, before=before, after=after)
    await broker.start()
    await wait_until(lambda: len(looped) == 1, message="the replaced loop")
    assert looped[0] == subscriber.consume
    await broker.stop()
    assert calls == ["before", "after"]


def test_each_access_fails_loudly_on_objects_it_does_not_know() -> None:
    class Unknown:
        async def stop(self) -> None: ...

    with pytest.raises(CompatError, match=r"supports faststream 0\.7"):
        pull_parts(object())
    with pytest.raises(CompatError):
        settle_locally(object())  # type: ignore[arg-type]
    with pytest.raises(CompatError):
        record_naks(object(), print)  # type: ignore[arg-type]
    with pytest.raises(CompatError):
        replace_pull_loop(Unknown(), lambda consume: asyncio.sleep(0))
    with pytest.raises(CompatError):
        wrap_stop(object(), before=Unknown().stop, after=Unknown().stop)
    with pytest.raises(CompatError):
        asyncio.run(write_protocol(object(), b""))  # type: ignore[arg-type]
    assert issubclass(CompatError, NatsPubsubError)
    assert "nats-py" in SUPPORTED
