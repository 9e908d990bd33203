"""A consumer with the KV inbox whose handler's effect is a line appended to a file.

``python inbox_consumer.py NATS_URL EFFECTS_FILE MODE``; MODE ``die-before-ack`` exits the
process after the handler (and the inbox's processed mark) but before the ack is sent.
Prints ``ready`` once its subscriber runs.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from faststream import BaseMiddleware
from faststream.nats import NatsBroker

from faststream_natspubsub import EventMetadata, NatsPubsub


class DieBeforeAck(BaseMiddleware):
    """Outermost middleware: the ack is sent after it returns, so exiting here skips it."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        await call_next(msg)
        os._exit(4)


async def main(url: str, effects_file: str, mode: str) -> None:
    broker = NatsBroker(url, logger=None)
    if mode == "die-before-ack":
        broker.insert_middleware(DieBeforeAck)
    pubsub = NatsPubsub(broker, env="test", app="ledger", inbox="kv")

    @pubsub.subscriber("entry.posted", ack_wait=1.0, max_workers=4)
    async def post(body: dict[str, Any], meta: EventMetadata) -> None:
        with open(effects_file, "a", encoding="utf-8") as effects:  # noqa: ASYNC230
            effects.write(f"{meta.event_id}\n")

    await broker.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
