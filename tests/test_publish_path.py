"""``publish`` takes ``broker.publish``'s path with the PubAck router as its last step: every
broker middleware sees it in FastStream's order, the server stores the same message, and
the router's errors are read by the retry as nats-py's are. Against a real nats-server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from faststream import BaseMiddleware
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError
from support import new_broker, running, wait_until

from faststream_natspubsub import MessageTooLargeError, NatsPubsub, OutgoingEvent
from faststream_natspubsub.envelope import EnvelopeCodec
from faststream_natspubsub.pipeline import PubAckRouter, header_block
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

SUBJECT = "test.orders.order.created"

Calls = list[tuple[str, ...]]


def recording(name: str, calls: Calls, *, body: Any = None, header: bool = False) -> Any:
    """A broker middleware that notes what its ``publish_scope`` sees and returns; it can
    replace the body or add a header on the way."""

    class Recording(BaseMiddleware):
        async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any) -> Any:
            calls.append((name, "in", type(cmd.body).__name__, cmd.destination))
            if body is not None:
                cmd.body = body
            if header:
                cmd.headers["x-seen-by"] = name
            result = await call_next(cmd)
            calls.append((name, "out", type(result).__name__))
            return result

    return Recording


async def test_every_broker_middleware_sees_a_publish_as_broker_publish_shows_it(
    server: EmbeddedNatsServer,
) -> None:
    # Given a middleware given to the broker and one added after the facade installed its own
    calls: Calls = []
    broker = new_broker(server, middlewares=[recording("outer", calls)])
    pubsub = NatsPubsub(broker, env="test", app="orders")
    broker.add_middleware(recording("inner", calls, header=True))
    async with running(broker):
        # When the facade publishes, and broker.publish sends an event the same way
        result = await pubsub.publish("order.created", {"n": 1})
        by_facade, calls[:] = list(calls), []
        ack = await broker.publish(
            OutgoingEvent(message={"n": 2}),
            SUBJECT,
            stream="TEST_ORDERS",
            correlation_id="c-2",
        )
        by_broker = list(calls)
        js = broker.connection.jetstream()
        stored = await js.get_msg("TEST_ORDERS", result.seq)
        other = await js.get_msg("TEST_ORDERS", ack.seq)

    # Then both ran every middleware in the same order, saw the envelope wrapped inside
    # NatsPubsub's layer, and got nats-py's PubAck back
    expected = [
        ("outer", "in", "OutgoingEvent", SUBJECT),
        ("inner", "in", "bytes", SUBJECT),
        ("inner", "out", "PubAck"),
        ("outer", "out", "PubAck"),
    ]
    assert by_facade == by_broker == expected
    assert isinstance(ack, PubAck) and ack.seq == result.seq + 1
    # and the server stored the same headers, the inner middleware's among them
    assert stored.headers is not None and other.headers is not None
    assert sorted(stored.headers) == sorted(other.headers)
    assert stored.headers["x-seen-by"] == "inner"
    assert stored.headers["Nats-Expected-Stream"] == "TEST_ORDERS"
    assert stored.headers["Nats-Msg-Id"] == result.event_id
    assert stored.headers["correlation_id"] == result.event_id  # it starts its own chain
    assert stored.headers["content-type"] == other.headers["content-type"] == "application/json"
    envelope = EnvelopeCodec().decode(stored.data or b"")
    assert envelope.event_id == result.event_id and envelope.message == {"n": 1}


async def test_a_body_a_later_middleware_made_text_is_encoded_by_faststream(
    server: EmbeddedNatsServer,
) -> None:
    # A middleware added after the facade's may replace the envelope's bytes with anything
    # FastStream can encode; FastStream's producer encodes it, as broker.publish would
    calls: Calls = []
    broker = new_broker(server)
    pubsub = NatsPubsub(broker, env="test", app="orders")
    broker.add_middleware(recording("inner", calls, body="plain text"))
    async with running(broker):
        result = await pubsub.publish("order.created", {"n": 1})
        stored = await broker.connection.jetstream().get_msg("TEST_ORDERS", result.seq)
    assert stored.data == b"plain text"
    # the envelope middleware's content type stays, as FastStream's producer keeps it
    assert stored.headers is not None and stored.headers["content-type"] == "application/json"
    assert stored.headers["Nats-Msg-Id"] == result.event_id


async def _publish_answered(
    server: EmbeddedNatsServer, answers: list[dict[str, Any] | None]
) -> tuple[Any, list[str]]:
    """``pubsub.publish`` while a responder stands in for the app's stream, answering
    ``answers`` in turn (None: no answer) and noting each attempt's Nats-Msg-Id."""
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    seen: list[str] = []
    probed: list[Msg] = []
    async with running(pubsub.broker):
        nc = pubsub.broker.connection
        await nc.jetstream().delete_stream("TEST_ORDERS")
        responder = await nats.connect(server.url)

        async def answer(msg: Msg) -> None:
            if msg.headers and "probe" in msg.headers:
                probed.append(msg)
                return
            seen.append(msg.headers["Nats-Msg-Id"] if msg.headers else "")
            reply = answers[len(seen) - 1]
            if reply is not None:
                await msg.respond(json.dumps(reply).encode())

        async def routed() -> bool:
            # nats-server may answer "no responders" just after a SUB: wait until it routes
            await nc.publish(SUBJECT, b"", headers={"probe": "1"})
            await nc.flush()
            return bool(probed)

        await responder.subscribe(SUBJECT, cb=answer)
        await wait_until(routed, message="the responder's subscription")
        try:
            return await pubsub.publish("order.created", {"n": 1}, timeout=0.5), seen
        finally:
            await responder.close()


async def test_publish_retries_a_503_and_a_lost_pub_ack_with_the_same_id(
    server: EmbeddedNatsServer,
) -> None:
    # "503 temporarily unavailable" (a leader election), then no answer at all, then the
    # PubAck: the envelope's retry reads the router's errors as nats-py's and keeps the id
    unavailable = {"error": {"code": 503, "err_code": 10008, "description": "unavailable"}}
    stored = {"stream": "TEST_ORDERS", "seq": 7, "duplicate": True}
    result, seen = await _publish_answered(server, [unavailable, None, stored])
    assert (result.seq, result.stream, result.duplicate) == (7, "TEST_ORDERS", True)
    assert seen == [result.event_id] * 3


async def test_a_refusal_the_server_gives_reaches_the_caller_unretried(
    server: EmbeddedNatsServer,
) -> None:
    # A JetStream error that is not retriable (here: a wrong expected stream) is raised as
    # nats-py's typed error after one attempt, as broker.publish raised it
    wrong = {"error": {"code": 400, "err_code": 10060, "description": "expected stream"}}
    with pytest.raises(nats.js.errors.BadRequestError, match="expected stream"):
        await _publish_answered(server, [wrong])  # a second attempt would get no answer


async def test_the_router_publishes_one_event_and_refuses_what_nats_py_refuses(
    server: EmbeddedNatsServer,
) -> None:
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="ROUTED", subjects=["routed.>"])
        router = PubAckRouter(nc)
        block = header_block({"Nats-Msg-Id": "id-1"}) + b"\r\n"
        first = await router.publish("routed.a", block, b"{}", 2.0)
        again = await router.publish("routed.a", block, b"{}", 2.0)
        with pytest.raises(NoStreamResponseError):  # no stream stores the subject
            await router.publish("elsewhere.a", block, b"{}", 2.0)
        with pytest.raises(MessageTooLargeError):
            await router.publish("routed.a", block, b"x" * nc.max_payload, 2.0)
        stored = await js.stream_info("ROUTED")
    finally:
        await nc.close()
    assert isinstance(first, PubAck) and (first.stream, first.seq) == ("ROUTED", 1)
    assert again.duplicate and again.seq == 1
    assert stored.state.messages == 1
    with pytest.raises(ConnectionClosedError):
        await router.publish("routed.a", block, b"{}", 2.0)


async def test_a_pub_ack_after_its_publish_timed_out_is_dropped(
    server: EmbeddedNatsServer,
) -> None:
    # The first request gets its answer late; the router drops it, and the next publish
    # gets its own answer, not the late one
    nc = await nats.connect(server.url)
    responder = await nats.connect(server.url)
    late: list[Msg] = []

    async def answer(msg: Msg) -> None:
        if not late:
            late.append(msg)
            return
        await late[0].respond(b'{"stream": "S", "seq": 1}')
        await msg.respond(b'{"stream": "S", "seq": 2}')

    try:
        await responder.subscribe("slow.a", cb=answer)
        await responder.flush()
        router = PubAckRouter(nc)
        block = header_block({}) + b"\r\n"
        for _ in range(10):  # nats-server may answer "no responders" right after a SUB
            with contextlib.suppress(NoStreamResponseError):
                with pytest.raises(NatsTimeoutError):
                    await router.publish("slow.a", block, b"{}", 0.2)
                break
        assert len(late) == 1
        second = await router.publish("slow.a", block, b"{}", 2.0)
    finally:
        await responder.close()
        await nc.close()
    assert second.seq == 2
