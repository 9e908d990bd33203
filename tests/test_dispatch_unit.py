"""The dispatch's bookkeeping without a server: what it hands back when its task ends.

Its behaviour against a real server is in tests/test_dispatch.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from nats.aio.msg import Msg
from support import FakeNatsClient, fake_pull_parts, wait_until

from faststream_natspubsub.dispatch import DispatchSettings, _Run


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
