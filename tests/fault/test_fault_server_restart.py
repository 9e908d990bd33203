"""A server restarted mid-stream (SIGTERM, or SIGKILL with ``sync_interval: always``).

Pass criterion (both tests): every acknowledged publish is handled, nothing is handled that
was not published, and with the KV inbox each event's effect happens once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from harness.apps import publisher, settle
from harness.consumers import ConsumerProcess, stop_all
from harness.history import History
from support import wait_until

from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = [pytest.mark.fault, pytest.mark.nats]

EVENTS = 3000


async def _restart_mid_stream(server: EmbeddedNatsServer, tmp_path: Path, *, kill: bool) -> None:
    consumers = [ConsumerProcess([server.url], tmp_path, f"c{n}", inbox="kv") for n in range(2)]
    async with publisher([server.url]) as pubsub:
        try:
            await asyncio.gather(*(c.start() for c in consumers))
            history = History()

            async def publish_all() -> None:
                for _ in range(EVENTS):
                    await history.publish(pubsub, timeout=2.0)

            # Given a steady stream of publishes that the consumers are working through
            publishing = asyncio.create_task(publish_all())
            await wait_until(
                lambda: len(history.acknowledged) >= EVENTS // 4 or publishing.done(),
                timeout=60,
                message="a quarter of the events acknowledged",
            )
            # When the server goes down mid-stream and comes back on the same store
            if kill:
                await server.kill()
                await server.start()
            else:
                await server.restart()
            await publishing
            verdict = await settle(pubsub, history, consumers, timeout=90)
        finally:
            await stop_all(consumers)

    # Then every acknowledged event was handled, once, and nothing else happened
    assert len(history.acknowledged) >= EVENTS // 4
    verdict.check()


async def test_a_sigterm_restart_mid_stream_loses_no_acknowledged_event(
    durable_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    await _restart_mid_stream(durable_server, tmp_path, kill=False)


async def test_a_sigkill_mid_stream_with_sync_always_loses_no_acknowledged_event(
    durable_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    await _restart_mid_stream(durable_server, tmp_path, kill=True)
