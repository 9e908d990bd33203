"""Many consumer processes at once, and every event published more than once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest
from harness.apps import publisher, settle
from harness.consumers import ConsumerProcess, stop_all
from harness.history import SUBJECT, TOPIC, History

from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = [pytest.mark.fault, pytest.mark.nats]

PROCESSES = 5
EVENTS = 600


async def test_five_processes_and_triplicated_events_give_one_effect_per_event_id(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    consumers = [
        ConsumerProcess([server.url], tmp_path, f"c{n}", inbox="kv", workers=4)
        for n in range(PROCESSES)
    ]
    async with publisher([server.url]) as pubsub:
        copies = await nats.connect(server.url)
        try:
            await asyncio.gather(*(c.start() for c in consumers))
            history = History()
            # Given every event published once through the facade...
            for _ in range(EVENTS):
                await history.publish(pubsub)
            js = copies.jetstream()
            for n, event_id in enumerate(sorted(history.acknowledged)):
                envelope = json.dumps(
                    {"event_id": event_id, "topic": TOPIC, "message": {"kind": "normal"}}
                ).encode()
                # ...again by another publisher under its own Nats-Msg-Id (past de-duplication)
                await js.publish(SUBJECT, envelope, headers={"Nats-Msg-Id": f"{event_id}/copy"})
                # ...and a third of them a third time, later, under yet another id
                if n % 3 == 0:
                    await js.publish(SUBJECT, envelope, headers={"Nats-Msg-Id": f"{event_id}/3"})
            verdict = await settle(pubsub, history, consumers, timeout=90)
        finally:
            await copies.close()
            await stop_all(consumers)

    # Then each event id had exactly one effect, and the work was shared by the processes
    verdict.check("concurrent consumers, duplicated events")
    assert sorted(verdict.effects) == sorted(history.acknowledged)
    assert sum(1 for c in consumers if c.effects()) >= 3
