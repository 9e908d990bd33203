"""The dispatch's bookkeeping without a server: what it hands back when its task ends.

Its behaviour against a real server is in tests/test_dispatch.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from nats.aio.msg import Msg
from support import wait_until

from faststream_natspubsub.compat import PullParts
from faststream_natspubsub.dispatch import DispatchSettings, _Run


class _Client:
    """Records the protocol lines the dispatch writes."""

    is_closed = False
    is_connected = True

    def __init__(self) -> None:
        self.stats = {"reconnects": 0}
        self.written = b""

    async def publish(self, subject: str, data: bytes = b"", reply: str = "") -> None:
        pass

    async def _send_command(self, data: bytes, priority: bool = False) -> None:
        self.written += data

    async def _flush_pending(self, *args: Any, **kwargs: Any) -> None:
        pass


async def test_messages_waiting_for_recovery_are_handed_back_when_the_task_ends() -> None:
    # Given an ordered subscriber waiting at start for a message pending from before
    client = _Client()
    parts = PullParts(
        client=client,  # type: ignore[arg-type]
        subscription=SimpleNamespace(_pending_size=0),
        queue=asyncio.Queue(),
        next_subject="$JS.API.CONSUMER.MSG.NEXT.S.C",
        deliver_subject="_INBOX.x",
    )
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
