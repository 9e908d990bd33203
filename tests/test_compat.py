"""Every access of faststream_natspubsub.compat works on the installed hosts, or fails loudly.

One test per access: if FastStream, nats-py or OpenTelemetry moves what the access relies on,
the test of that access fails here, not somewhere deep in a flow.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from faststream import BaseMiddleware
from faststream.nats import JStream, NatsBroker, PullSub, TestNatsBroker
from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import APIError, ServiceUnavailableError
from packaging.version import Version
from support import wait_until

from faststream_natspubsub import NatsPubsubError, compat
from faststream_natspubsub.compat import (
    SUPPORTED_VERSIONS,
    HostVersionError,
    mark_settled,
    mark_unsettled,
    pull_parts,
    record_naks,
    replace_pull_loop,
    stop_interest,
    stop_recording_naks,
    subscribe_direct,
    took_from_queue,
    wrap_stop,
    write_protocol,
)
from faststream_natspubsub.testing import EmbeddedNatsServer

STREAM, SUBJECT = "COMPAT", "compat.items"


async def test_current_subscriber_is_the_subscriber_whose_message_is_handled() -> None:
    seen: list[Any] = []

    class Probe(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            seen.append(compat.current_subscriber(self.context))
            return await call_next(msg)

    broker = NatsBroker(middlewares=[Probe])
    subscriber = broker.subscriber("probe")

    @subscriber
    async def handle(body: dict[str, Any]) -> None: ...

    async with TestNatsBroker(broker) as test_broker:
        await test_broker.publish({"a": 1}, "probe")
    assert seen == [subscriber]


def test_subscriber_durable_and_ack_wait_are_read_from_its_consumer_config() -> None:
    broker = NatsBroker()
    subscriber = broker.subscriber(
        "a.b",
        stream=JStream("S", declare=False),
        durable="the-durable",
        config=ConsumerConfig(ack_wait=12.5),
        pull_sub=PullSub(batch_size=1),
    )
    assert compat.subscriber_durable(subscriber) == "the-durable"
    assert compat.subscriber_ack_wait(subscriber) == 12.5


def test_reading_the_config_of_something_else_fails_loudly() -> None:
    with pytest.raises(HostVersionError, match=r"faststream 0\.7"):
        compat.subscriber_durable(object())


def test_handler_function_is_the_declared_function() -> None:
    broker = NatsBroker()

    async def handle(body: dict[str, Any]) -> None: ...

    subscriber = broker.subscriber("x")
    assert compat.handler_function(subscriber) is None  # no handler yet
    subscriber(handle)
    assert compat.handler_function(subscriber) is handle


def test_handler_function_reads_the_name_this_faststream_release_has() -> None:
    # 0.7.6 split the declared function (`_declared_call`) from the composed one; on an older
    # release only `_original_call` exists. A release that drops the name its range promises
    # fails here rather than quietly using the other.
    subscriber = NatsBroker().subscriber("x")

    @subscriber
    async def handle(body: dict[str, Any]) -> None: ...

    handler = subscriber.calls[0].handler
    declared_since = Version("0.7.6")
    assert hasattr(handler, "_declared_call") == (Version(version("faststream")) >= declared_since)
    assert hasattr(handler, "_original_call")


def test_handler_function_falls_back_to_the_name_before_faststream_0_7_6() -> None:
    async def handle(body: dict[str, Any]) -> None: ...

    subscriber = SimpleNamespace(
        calls=[SimpleNamespace(handler=SimpleNamespace(_original_call=handle))]
    )
    assert compat.handler_function(subscriber) is handle


def test_a_handler_without_a_function_fails_loudly() -> None:
    subscriber = SimpleNamespace(calls=[SimpleNamespace(handler=SimpleNamespace())])
    with pytest.raises(
        HostVersionError, match=r"function of a FastStream handler.*faststream 0\.7"
    ):
        compat.handler_function(subscriber)


def test_mark_settled_makes_a_message_count_as_acknowledged() -> None:
    msg = compat.new_in_memory_message(subject="a", reply="r", data=b"", headers=None)
    assert not msg.is_acked
    compat.mark_settled(msg)
    assert msg.is_acked


def test_an_in_memory_message_has_no_client() -> None:
    msg = compat.new_in_memory_message(subject="a", reply="", data=b"x", headers={"h": "v"})
    assert isinstance(msg, Msg)
    assert compat.in_memory_message(msg)
    assert compat.message_client(msg) is None
    assert not compat.in_memory_message(object())


@pytest.mark.nats
async def test_send_raw_and_flush_pending_deliver_protocol_frames(
    server: EmbeddedNatsServer,
) -> None:
    nc = await nats.connect(server.url)
    received: list[bytes] = []
    try:

        async def on_message(msg: Msg) -> None:
            received.append(msg.data)

        await nc.subscribe("raw.frames", cb=on_message)
        await nc.flush()
        await compat.send_raw(nc, b"PUB raw.frames 3\r\none\r\nPUB raw.frames 3\r\ntwo\r\n")
        await compat.flush_pending(nc)
        await wait_until(lambda: len(received) == 2, message="both frames")
        assert received == [b"one", b"two"]
        assert compat.outbound_buffer_room(nc) > 0
        # A message that arrived on the connection knows it
        sub = await nc.subscribe("raw.back")
        await nc.publish("raw.back", b"x")
        msg = await sub.next_msg(timeout=2)
        assert compat.message_client(msg) is nc
        assert not compat.in_memory_message(msg)
    finally:
        await nc.close()


def test_a_client_without_the_expected_internals_fails_loudly() -> None:
    class NotAClient:
        is_connected = True

    with pytest.raises(HostVersionError, match="nats-py"):
        compat.outbound_buffer_room(NotAClient())  # type: ignore[arg-type]


async def test_send_raw_on_a_client_without_it_fails_loudly() -> None:
    class NotAClient:
        is_connected = True

    with pytest.raises(HostVersionError, match="_send_command"):
        await compat.send_raw(NotAClient(), b"")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("", "False"),  # the API's proxy provider, before any SDK is set
        (
            "from opentelemetry.sdk.metrics import MeterProvider\n"
            "metrics.set_meter_provider(MeterProvider())\n",
            "True",
        ),
        (
            "metrics.set_meter_provider(metrics.NoOpMeterProvider())\n",
            "False",
        ),
    ],
)
def test_sdk_meter_provider_installed_tells_a_real_provider_from_the_apis_own(
    setup: str, expected: str
) -> None:
    # A fresh interpreter: the global meter provider can be set only once per process.
    code = (
        "from opentelemetry import metrics\n"
        f"{setup}"
        "from faststream_natspubsub.compat import sdk_meter_provider_installed\n"
        "print(sdk_meter_provider_installed())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == expected


@pytest.mark.nats
async def test_kv_reads_directly_follows_the_buckets_allow_direct(
    server: EmbeddedNatsServer,
) -> None:
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        plain = await js.create_key_value(bucket="compat_plain")
        await js.add_stream(
            name="KV_compat_direct",
            subjects=["$KV.compat_direct.>"],
            allow_direct=True,
            max_msgs_per_subject=1,
        )
        direct = await js.key_value("compat_direct")
        assert compat.kv_reads_directly(plain) is False
        assert compat.kv_reads_directly(direct) is True
    finally:
        await nc.close()


def test_kv_reads_directly_on_something_else_fails_loudly() -> None:
    with pytest.raises(HostVersionError, match="_direct"):
        compat.kv_reads_directly(object())  # type: ignore[arg-type]


# -- the consume path: pull subscriptions, protocol writes, KV answers, the pull loop ------


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
async def test_write_protocol_and_mark_settled_acknowledge_like_ack(
    js: JetStreamContext,
) -> None:
    subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    await js.publish(SUBJECT, b"one")
    (msg,) = await subscription.fetch(1, timeout=5)
    await write_protocol(msg._client, b"PUB %s 4\r\n+ACK\r\n" % msg.reply.encode())
    mark_settled(msg)
    assert msg.is_acked
    await wait_until(lambda: _ack_pending(js, 0), message="the server to see the acknowledgement")


@pytest.mark.nats
async def test_mark_unsettled_lets_a_message_counted_as_acknowledged_be_nakked(
    js: JetStreamContext,
) -> None:
    subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    await js.publish(SUBJECT, b"one")
    (msg,) = await subscription.fetch(1, timeout=5)
    mark_settled(msg)
    with pytest.raises(MsgAlreadyAckdError):
        await msg.nak()
    mark_unsettled(msg)
    assert not msg.is_acked
    await msg.nak()  # sent now: the server delivers it again
    (again,) = await subscription.fetch(1, timeout=5)
    assert again.data == b"one"
    assert again.metadata.num_delivered == 2


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
async def test_jetstream_client_and_kv_subject_prefix_name_where_kv_writes_go(
    js: JetStreamContext,
) -> None:
    kv = await js.create_key_value(bucket="compat_prefix")
    assert compat.jetstream_client(js).is_connected
    assert compat.kv_subject_prefix(kv) == "$KV.compat_prefix."


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


def test_each_consume_path_access_fails_loudly_on_objects_it_does_not_know() -> None:
    class Unknown:
        async def stop(self) -> None: ...

    with pytest.raises(HostVersionError, match=r"supports faststream 0\.7"):
        pull_parts(object())
    with pytest.raises(HostVersionError):
        record_naks(object(), print)  # type: ignore[arg-type]
    with pytest.raises(HostVersionError):
        replace_pull_loop(Unknown(), lambda consume: asyncio.sleep(0))
    with pytest.raises(HostVersionError):
        wrap_stop(object(), before=Unknown().stop, after=Unknown().stop)
    with pytest.raises(HostVersionError):
        asyncio.run(write_protocol(object(), b""))  # type: ignore[arg-type]
    with pytest.raises(HostVersionError):
        compat.jetstream_client(object())
    with pytest.raises(HostVersionError):
        compat.kv_subject_prefix(object())
    assert issubclass(HostVersionError, NatsPubsubError)
    assert "nats-py" in SUPPORTED_VERSIONS


def test_api_error_gives_the_typed_error_of_a_jetstream_answer() -> None:
    unavailable = compat.api_error({"code": 503, "err_code": 10008, "description": "busy"})
    other = compat.api_error({"code": 400, "err_code": 10071, "description": "wrong sequence"})
    assert isinstance(unavailable, ServiceUnavailableError)
    assert isinstance(other, APIError) and not isinstance(other, ServiceUnavailableError)
    assert other.err_code == 10071


# -- the publish path: FastStream's command, middlewares and JetStream producer ------------


def _recorder(name: str, seen: list[Any]) -> Any:
    class Recorder(BaseMiddleware):
        async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
            seen.append((name, cmd))
            return await call_next(cmd)

    return Recorder


@pytest.mark.nats
async def test_default_stream_producer_is_faststreams_own_with_its_default_codec(
    server: EmbeddedNatsServer,
) -> None:
    broker = NatsBroker(server.url, logger=None)
    await broker.start()
    try:
        producer = compat.default_stream_producer(broker)
        assert producer is broker.config.js_producer
        assert type(producer).__name__ == "NatsJSFastProducer"
        # another codec may encode bytes its own way: only broker.publish knows
        default_codec, producer.codec = producer.codec, object()
        assert compat.default_stream_producer(broker) is None
        producer.codec = default_codec
    finally:
        await broker.stop()
    async with TestNatsBroker(NatsBroker()) as fake:
        assert compat.default_stream_producer(fake) is None  # the in-memory producer


async def test_stream_publish_command_and_middlewares_are_broker_publishs() -> None:
    # What broker.publish hands its middlewares, and in which order it runs them, against
    # what the package builds and runs itself
    seen: list[Any] = []
    broker = NatsBroker(middlewares=[_recorder("outer", seen)])
    broker.add_middleware(_recorder("inner", seen))
    async with TestNatsBroker(broker):
        await broker.publish(
            b"body", "a.b", headers={"h": "1"}, correlation_id="c-1", stream="S", timeout=2.0
        )
        by_broker, seen[:] = list(seen), []
        cmd = compat.stream_publish_command(
            b"body",
            subject="a.b",
            headers={"h": "1"},
            correlation_id="c-1",
            stream="S",
            timeout=2.0,
        )
        ends: list[Any] = []

        async def last_step(sent: Any) -> str:
            ends.append(sent)
            return "ack"

        assert await compat.through_publish_middlewares(broker, cmd, last_step) == "ack"
    assert [name for name, _ in seen] == [name for name, _ in by_broker] == ["outer", "inner"]
    assert ends == [cmd]
    built, made = cmd, by_broker[0][1]
    assert type(built) is type(made)
    for field in ("body", "destination", "correlation_id", "headers", "stream", "timeout"):
        assert getattr(built, field) == getattr(made, field), field
    assert built.publish_type == made.publish_type
    assert built.headers_to_publish(js=True) == made.headers_to_publish(js=True)
