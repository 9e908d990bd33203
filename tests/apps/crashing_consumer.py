"""A consumer that kills its own process on every delivery (a crash loop).

Run as ``python crashing_consumer.py NATS_URL MODE``. MODE ``handler`` dies inside the
handler; MODE ``parser`` dies while FastStream parses the message, before any middleware
of this package has run (as an out-of-memory kill during decoding would).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from faststream.nats import NatsBroker

from faststream_natspubsub import NatsPubsub, RetryPolicy


async def main(url: str, mode: str) -> None:
    broker = NatsBroker(url, logger=None)
    pubsub = NatsPubsub(
        broker, env="test", app="crashy", retry=RetryPolicy(max_attempts=1, backoff=(0.1,))
    )

    async def crash_while_parsing(msg: Any, original: Any) -> Any:
        os._exit(3)

    parser = crash_while_parsing if mode == "parser" else None

    @pubsub.subscriber("job.run", ack_wait=1.0, parser=parser)
    async def run(body: dict[str, Any]) -> None:
        os._exit(3)  # dies before any code can dead-letter the event

    await broker.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
