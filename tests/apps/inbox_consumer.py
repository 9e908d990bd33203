"""A consumer with the KV inbox whose handler's effect is a line appended to a file.

``python inbox_consumer.py NATS_URL EFFECTS_FILE MODE``; MODE ``die-before-ack`` exits the
process once the server has stored the inbox's processed mark, before the ack is sent (the
ack follows the stored mark). Prints ``ready`` once its subscriber runs.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from faststream.nats import NatsBroker

from faststream_natspubsub import EventMetadata, KvInboxStore, NatsPubsub
from faststream_natspubsub.inbox import inbox_bucket_name


class DieAfterMark(KvInboxStore):
    """The KV inbox, but the process exits as soon as a processed mark is stored."""

    async def mark_started(self, event_id: str) -> Any:
        stored = await super().mark_started(event_id)
        stored.add_done_callback(lambda _: os._exit(4))  # before the ack that follows it
        return stored


async def main(url: str, effects_file: str, mode: str) -> None:
    broker = NatsBroker(url, logger=None)
    bucket = inbox_bucket_name("test", "ledger")
    inbox = DieAfterMark(bucket=bucket) if mode == "die-before-ack" else "kv"
    pubsub = NatsPubsub(broker, env="test", app="ledger", inbox=inbox)

    @pubsub.subscriber("entry.posted", ack_wait=1.0, max_workers=4)
    async def post(body: dict[str, Any], meta: EventMetadata) -> None:
        with open(effects_file, "a", encoding="utf-8") as effects:  # noqa: ASYNC230
            effects.write(f"{meta.event_id}\n")

    await broker.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
