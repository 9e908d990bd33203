"""Benchmark: console page times with many dead-letter records on an embedded nats-server.

Usage: ``python bench/console_pages.py [--records 100000] [--repeat 5] [--json PATH]``.
Needs the dev extra (uvicorn, httpx). Seeds the DLQ with records written exactly as
``DeadLetterWriter`` writes them (JSON body with envelope, error and an 8-frame traceback,
about 1.6 kB each), mounts the console in an ``AsgiFastStream`` app served by uvicorn on
127.0.0.1, and times each page over HTTP (median, min, max of ``--repeat`` requests; the server's
own time is in the ``Server-Timing`` header and reported too). The first overview builds the
index (a headers-only scan of the whole DLQ); every later request only reads what is new.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import nats
import uvicorn
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.dlq import DeadLetterReason, DeadLetterWriter, FailedDelivery
from faststream_natspubsub.envelope import EnvelopeCodec
from faststream_natspubsub.subjects import dlq_stream_name, dlq_subject_prefix
from faststream_natspubsub.testing import EmbeddedNatsServer

ENV, APP = "bench", "billing"
TOKEN = "bench-console-token-0123456789"  # noqa: S105 - a local, throw-away console
TOPICS = ("order.created", "order.paid", "payment.captured", "invoice.sent")
REASONS = tuple(DeadLetterReason)


class PaymentDeclinedError(Exception):
    """The error of every seeded record."""


def _raise(depth: int, message: str) -> None:
    if depth:
        _raise(depth - 1, message)
    raise PaymentDeclinedError(message)


async def seed(nc: Any, count: int, *, start: int = 0) -> float:
    """Write ``count`` records, pipelined; returns the seconds it took until all were stored."""
    started = time.perf_counter()
    writer = DeadLetterWriter(
        app=APP,
        stream=dlq_stream_name(ENV, APP),
        subject_prefix=dlq_subject_prefix(ENV, APP),
        codec=EnvelopeCodec(),
    )
    codec = EnvelopeCodec()
    pending: list[tuple[str, bytes, dict[str, str]]] = []

    async def capture(body: bytes, subject: str, *, headers: dict[str, str], **_: Any) -> None:
        pending.append((subject, body, headers))

    for i in range(start, start + count):
        topic = TOPICS[i % len(TOPICS)]
        body, _ = codec.encode(
            {
                "event_id": f"00000000-0000-4000-8000-{i:012d}",
                "topic": topic,
                "occurred_at": "2025-01-17T10:30:00.000Z",
                "message": {"order_id": f"ORD-{i}", "total": 10.5},
            }
        )
        message = f"card declined for ORD-{i}" if i % 100 else f"bank timeout for ORD-{i}"
        try:
            _raise(6, message)
        except PaymentDeclinedError as exc:
            error = exc
        await writer.write(
            FailedDelivery(
                subject=f"{ENV}.orders.{topic}",
                body=body,
                headers={"Nats-Msg-Id": f"ev-{i}"},
                stream="BENCH_ORDERS",
                stream_seq=i + 1,
                consumer=f"{APP}__{topic}",
                deliveries=5,
                reason=REASONS[(i // 4) % len(REASONS)],
                error=error,
            ),
            capture,
        )
        if len(pending) >= 5000:
            await _flush(nc, pending)
    await _flush(nc, pending)
    js = nc.jetstream()
    await until(
        lambda: _stored(js, start + count), what=f"{start + count} records stored", timeout=300
    )
    return time.perf_counter() - started


async def _stored(js: Any, count: int) -> bool:
    return bool((await js.stream_info(dlq_stream_name(ENV, APP))).state.messages >= count)


async def until(condition: Any, *, what: str, timeout: float) -> None:
    """Poll ``condition`` (sync or async) until true; give up loudly at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:g}s")
        await asyncio.sleep(0.05)


async def _flush(nc: Any, pending: list[tuple[str, bytes, dict[str, str]]]) -> None:
    for subject, body, headers in pending:
        await nc.publish(subject, body, headers=headers)
    await nc.flush()
    pending.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def timed(client: httpx.AsyncClient, params: dict[str, Any]) -> tuple[float, float, str]:
    """Wall time (ms), server time (ms) and body of one GET."""
    started = time.perf_counter()
    response = await client.get("/natspubsub", params=params)
    wall = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{params}: HTTP {response.status_code}: {response.text[:300]}")
    server = float(response.headers["server-timing"].split("dur=")[1])
    return wall, server, response.text


async def measure(
    client: httpx.AsyncClient, name: str, params: dict[str, Any], repeat: int
) -> dict[str, Any]:
    walls, servers = [], []
    for _ in range(repeat):
        wall, server, _ = await timed(client, params)
        walls.append(wall)
        servers.append(server)
    row = {
        "page": name,
        "params": params,
        "median_ms": round(statistics.median(walls), 1),
        "min_ms": round(min(walls), 1),
        "max_ms": round(max(walls), 1),
        "server_median_ms": round(statistics.median(servers), 1),
    }
    print(
        f"{name:<44} {row['median_ms']:>8.1f} ms  (min {row['min_ms']:.1f}, "
        f"max {row['max_ms']:.1f}; server {row['server_median_ms']:.1f})"
    )
    return row


async def main(records: int, repeat: int) -> dict[str, Any]:
    async with EmbeddedNatsServer() as server:
        broker = NatsBroker(server.url, logger=None)
        pubsub = NatsPubsub(broker, env=ENV, app=APP)

        @pubsub.subscriber("order.created", app="orders")
        async def handle(body: dict[str, Any]) -> None:
            return None

        console = pubsub.console(token=TOKEN, actions=True)
        app = AsgiFastStream(broker, asgi_routes=[("/natspubsub", console)])
        await broker.start()
        nc = await nats.connect(server.url)
        try:
            seconds = await seed(nc, records)
            info = await nc.jetstream().stream_info(dlq_stream_name(ENV, APP))
            size = info.state.bytes / 1e6
            print(f"seeded {records:,} records ({size:.0f} MB) in {seconds:.1f} s")
            port = free_port()
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
            uv = uvicorn.Server(config)
            task = asyncio.create_task(uv.serve())
            await until(lambda: uv.started, what="uvicorn started", timeout=30)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            rows: list[dict[str, Any]] = []
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120
            ) as client:
                started = time.perf_counter()
                wall, _, body = await timed(client, {})
                first = wall
                while "Reading the dead-letter queue" in body:
                    await asyncio.sleep(0.2)
                    _, _, body = await timed(client, {})
                build = (time.perf_counter() - started) * 1000
                index_bytes = console.backend.index.approximate_bytes()
                print(
                    f"{'first overview (index build)':<44} {build:>8.1f} ms  "
                    f"(the first response, a progress page, came after {first:.0f} ms)"
                )
                rows.append({"page": "first overview (index build)", "median_ms": round(build, 1)})
                middle = records // 2
                since = datetime.now(timezone.utc).isoformat()
                pages = [
                    ("overview", {}),
                    ("list, first page", {"view": "dlq"}),
                    ("list, page at the middle (cursor)", {"view": "dlq", "before": middle}),
                    ("list, oldest page (cursor)", {"view": "dlq", "before": 60}),
                    ("filter: reason", {"view": "dlq", "reason": "malformed"}),
                    ("filter: topic", {"view": "dlq", "topic": "payment.*"}),
                    (
                        "filter: reason + topic, middle",
                        {
                            "view": "dlq",
                            "reason": "permanent_error",
                            "topic": "order.paid",
                            "before": middle,
                        },
                    ),
                    ("filter: time range (nothing newer)", {"view": "dlq", "since": since}),
                    ("filter: error text (1 in 100 match)", {"view": "dlq", "q": "bank timeout"}),
                    ("filter: error text, no match", {"view": "dlq", "q": "no such text"}),
                    ("record page", {"view": "record", "seq": middle}),
                    (
                        "confirm page, bulk (counts the set)",
                        {
                            "view": "confirm",
                            "action": "replay",
                            "reason": "malformed",
                            "upto": records,
                        },
                    ),
                ]
                for name, params in pages:
                    rows.append(await measure(client, name, params, repeat))
                added = await seed(nc, 1000, start=records)
                print(f"added 1,000 records in {added:.1f} s")
                rows.append(await measure(client, "overview after 1,000 new records", {}, 1))
                rows.append(await measure(client, "overview (again)", {}, repeat))
            uv.should_exit = True
            await task
            summary = {
                "records": records,
                "dlq_bytes": info.state.bytes,
                "index_bytes": index_bytes,
                "pages": rows,
            }
            print(f"index size: {index_bytes / 1e6:.1f} MB")
            return summary
        finally:
            await nc.close()
            await console.shutdown()
            await broker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = asyncio.run(main(args.records, args.repeat))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
