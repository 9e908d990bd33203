"""The dispatch's bookkeeping without a server: what it hands back when its task ends.

Its behaviour against a real server is in tests/test_dispatch.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from nats.aio.msg import Msg
from support import FakeNatsClient, fake_pull_parts, wait_until

from faststream_natspubsub import CircuitBreaker
from faststream_natspubsub.breaker import SubscriberBreaker
from faststream_natspubsub.dispatch import DispatchSettings, _Run
from faststream_natspubsub.metrics import PubsubMetrics


async def test_messages_waiting_for_recovery_are_handed_back_when_the_task_ends() -> None:
    # Given an ordered subscriber waiting at start for a message pending from before
    client = FakeNatsClient()
    parts = fake_pull_parts(client)
    handled: list[Msg] = []

    async def consume(msg: Msg) -> None:
        handled.append(msg)

    run = _Run(DispatchSettings(ack_wait=30.0, order_by=lambda msg: "k"), parts, consume)

    async def consumer_info() -> Any:
        return SimpleNamespace(num_ack_pending=1, delivered=SimpleNamespace(stream_seq=9))

    await run.start_recovery(SimpleNamespace(consumer_info=consumer_info))
    task = asyncio.ensure_future(run.serve())
    reply = "$JS.ACK.S.C.1.12.12.0.0"
    parts.queue.put_nowait(Msg(_client=client, subject="s", reply=reply))  # type: ignore[arg-type]
    await wait_until(lambda: run.recovery is not None and bool(run.recovery.buffer), message="held")

    # When its task ends without a stop (cancelled)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    # Then the held message is NAKed for redelivery, not left for ack_wait
    assert handled == []
    assert f"PUB {reply} 4\r\n-NAK\r\n".encode() in client.written


async def test_a_key_goes_back_in_stream_order_when_the_task_ends_with_its_first_held() -> None:
    # Given an ordered subscriber whose circuit breaker is open: the first message of key k
    # waits for its turn to start, the key's later ones wait behind it
    breaker = SubscriberBreaker(
        CircuitBreaker(failures=1, cooldown=5.0),
        subject="s",
        durable="d",
        metrics=PubsubMetrics(),
        clock=lambda: 100.0,
    )
    client = FakeNatsClient()
    parts = fake_pull_parts(client)
    settings = DispatchSettings(ack_wait=30.0, order_by=lambda msg: "k", breaker=breaker)
    run = _Run(settings, parts, lambda msg: asyncio.sleep(0))
    task = asyncio.ensure_future(run.serve())
    await wait_until(lambda: bool(run._idle), message="the workers wait")
    breaker.failed(object(), "e0", RuntimeError("down"))
    replies = [f"$JS.ACK.S.C.1.{seq}.{seq}.0.0" for seq in (1, 2, 3)]
    for reply in replies:
        parts.queue.put_nowait(Msg(_client=client, subject="s", reply=reply))  # type: ignore[arg-type]
    await wait_until(lambda: run.held + run.waiting + len(run.ready) >= 3, message="all held")

    # When its task ends without a stop (cancelled)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    # Then the key's messages are NAKed in stream order: the server redelivers them so
    naks = [line for line in client.written.split(b"\r\n") if line.startswith(b"PUB ")]
    assert naks == [f"PUB {reply} 4".encode() for reply in replies]


async def test_a_retried_message_goes_back_before_its_keys_others_when_the_task_ends() -> None:
    # Given an ordered subscriber whose handler asked for message 1 to be retried later:
    # its key's messages 2 and 3 wait for it
    client = FakeNatsClient()
    parts = fake_pull_parts(client)
    run = _Run(DispatchSettings(ack_wait=30.0, order_by=lambda msg: "k"), parts, _retry_first)
    task = asyncio.ensure_future(run.serve())
    replies = [f"$JS.ACK.S.C.1.{seq}.{seq}.0.0" for seq in (1, 2, 3)]
    for reply in replies:
        parts.queue.put_nowait(Msg(_client=client, subject="s", reply=reply))  # type: ignore[arg-type]
    await wait_until(lambda: run.held == 2, message="2 and 3 held behind the retry")

    # When its task ends without a stop (cancelled)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    # Then message 1 is NAKed again at once, before 2 and 3: none overtakes it
    naks = [line for line in client.written.split(b"\r\n") if line.startswith(b"PUB ")]
    assert naks == [f"PUB {reply} 4".encode() for reply in replies]


async def _retry_first(msg: Msg) -> None:
    if msg.reply.split(".")[5] == "1":
        await msg.nak(delay=30)
