"""One consumer contender, run in its own process so CPU time and peak RSS are its own.

Started by ``bench/run.py``; prints ``READY`` once subscribed and then one ``RESULT {json}``
line. Contenders: ``plugin`` (NatsPubsub full stack), ``plugin-inbox`` (plus the memory
inbox), ``faststream`` (plain subscriber, same pull settings), ``raw`` (nats-py fetch + ack);
``plugin-sql-inbox`` and ``plugin-batch-sql-inbox`` use ``SqlInboxStore`` on ``--database``.

What users get without tuning: ``plugin-default`` is ``pubsub.subscriber(topic)`` as the README
writes it; ``plugin-io-N`` the same with ``max_workers=N`` and a handler awaiting 5 ms of I/O;
``plugin-ordered-N`` that with ``order_by`` (1,000 keys); ``plugin-kv-inbox`` and
``plugin-batch-kv-inbox`` the default and batch subscribers with ``inbox="kv"``;
``faststream-io-100`` plain FastStream's subscriber with ``max_workers=100`` and that handler.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import sys
import time
from typing import Any

import nats
from common import (
    DEFAULT_KINDS,
    FASTSTREAM_IO_KIND,
    IO_HANDLER_SECONDS,
    cpu_seconds,
    loop_name,
    now,
    peak_rss_mb,
    percentile,
    rss_now_mb,
    run,
)
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from pydantic import BaseModel

from faststream_natspubsub import BatchSettings, MemoryInboxStore, NatsPubsub


class Sample(BaseModel):
    """The benchmark's message, validated per item by batch mode."""

    order_id: str
    customer_id: str
    total: float
    currency: str
    sent_ns: int


KINDS = (
    "plugin",
    "plugin-inbox",
    "plugin-batch",
    "plugin-batch-inbox",
    "plugin-sql-inbox",
    "plugin-batch-sql-inbox",
    "faststream",
    "raw",
    *DEFAULT_KINDS,
    FASTSTREAM_IO_KIND,
)


class Probe:
    """Counts handled messages; notes times, CPU, latencies and RSS samples."""

    def __init__(self, target: int, *, warmup: int = 0, rss_marks: tuple[int, ...] = ()) -> None:
        self.target = target
        self.warmup = warmup
        self.count = 0
        self.first = self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.latencies_us: list[float] = []
        self.rss_marks = set(rss_marks)
        self.rss_samples: dict[int, float] = {}
        self.done = asyncio.Event()

    def hit(self, sent_ns: int | None = None) -> None:
        """Record one handled message (``sent_ns`` from the publisher for latency runs)."""
        if sent_ns is not None and self.count >= self.warmup:
            # The wall clock, because the publisher runs in another process.
            self.latencies_us.append((time.time_ns() - sent_ns) / 1000)
        self.count += 1
        if self.count == 1:
            self.first, self.cpu_first = now(), cpu_seconds()
        if self.count in self.rss_marks:
            self.rss_samples[self.count] = rss_now_mb()
        if self.count == self.target:
            self.last, self.cpu_last = now(), cpu_seconds()
            self.done.set()

    def result(self) -> dict[str, Any]:
        """Throughput over first→last handled message, CPU per message, memory, latency."""
        spans = max(self.count - 1, 1)
        elapsed = max(self.last - self.first, 1e-9)
        out: dict[str, Any] = {
            "count": self.count,
            "elapsed_s": round(elapsed, 4),
            "msgs_per_s": round(spans / elapsed, 1),
            "cpu_us_per_msg": round((self.cpu_last - self.cpu_first) / spans * 1e6, 2),
            "peak_rss_mb": round(peak_rss_mb(), 2),
            "rss_samples_mb": {str(k): round(v, 2) for k, v in sorted(self.rss_samples.items())},
            "loop": loop_name(),
        }
        if self.latencies_us:
            out["latency_us"] = {
                "count": len(self.latencies_us),
                "p50": round(percentile(self.latencies_us, 50), 1),
                "p90": round(percentile(self.latencies_us, 90), 1),
                "p99": round(percentile(self.latencies_us, 99), 1),
                "max": round(max(self.latencies_us), 1),
            }
        return out


async def _consume_faststream(args: argparse.Namespace, probe: Probe) -> None:
    broker = NatsBroker(args.url, logger=None)
    pull = PullSub(batch_size=args.batch, timeout=args.fetch_timeout)
    latency = args.mode == "latency"
    if args.kind in ("faststream", FASTSTREAM_IO_KIND):
        io_bound = args.kind == FASTSTREAM_IO_KIND
        subscriber = broker.subscriber(
            f"{args.env}.{args.app}.{args.topic}",
            stream=JStream(args.stream, declare=False),
            durable=args.durable,
            pull_sub=pull,
            max_workers=int(args.kind.rsplit("-", 1)[1]) if io_bound else args.workers,
            ack_policy=AckPolicy.NACK_ON_ERROR,
        )

        @subscriber  # type: ignore[untyped-decorator]
        async def plain(body: dict[str, Any]) -> None:
            if io_bound:
                await asyncio.sleep(IO_HANDLER_SECONDS)
            probe.hit(body["message"]["sent_ns"] if latency else None)

    elif args.kind.startswith("plugin-batch"):
        pubsub = NatsPubsub(broker, env=args.env, app=args.app, inbox=_inbox(args))
        # Every item is decoded and validated into a model, per event outcome kept.
        batch_subscriber = pubsub.subscriber(
            args.topic,
            durable=args.durable,
            # A short fill wait: a partial batch at the end must not idle for a second.
            batch=BatchSettings(max_messages=args.batch, max_wait=0.05),
        )

        @batch_subscriber
        async def batch(items: list[Sample]) -> None:
            for item in items:
                probe.hit(item.sent_ns if latency else None)

    elif args.kind in PER_MESSAGE_DEFAULT_KINDS:
        _subscribe_default(args, broker, probe)
    else:
        pubsub = NatsPubsub(broker, env=args.env, app=args.app, inbox=_inbox(args))
        subscriber = pubsub.subscriber(
            args.topic, durable=args.durable, pull_sub=pull, max_workers=args.workers
        )

        @subscriber
        async def wrapped(body: dict[str, Any]) -> None:
            probe.hit(body["sent_ns"] if latency else None)

    await broker.start()
    try:
        _settle()
        _say("READY")
        await asyncio.wait_for(probe.done.wait(), args.deadline)
    finally:
        await broker.stop()


# The default rows with a per-message subscriber (batch + KV inbox is a batch subscriber).
PER_MESSAGE_DEFAULT_KINDS = tuple(kind for kind in DEFAULT_KINDS if "batch" not in kind)


def _subscribe_default(args: argparse.Namespace, broker: NatsBroker, probe: Probe) -> None:
    """The facade's subscriber without pull settings: what a user writes."""
    kind = args.kind
    pubsub = NatsPubsub(
        broker, env=args.env, app=args.app, inbox="kv" if kind == "plugin-kv-inbox" else None
    )
    options: dict[str, Any] = {}
    io_bound = kind.startswith(("plugin-io-", "plugin-ordered-"))
    if io_bound:
        options["max_workers"] = int(kind.rsplit("-", 1)[1])
    if kind.startswith("plugin-ordered-"):
        options["order_by"] = lambda message: message["customer_id"]
    latency = args.mode == "latency"
    subscriber = pubsub.subscriber(args.topic, durable=args.durable, **options)

    @subscriber
    async def handle(body: dict[str, Any]) -> None:
        if io_bound:
            await asyncio.sleep(IO_HANDLER_SECONDS)
        probe.hit(body["sent_ns"] if latency else None)


def _inbox(args: argparse.Namespace) -> Any:
    """The contender's inbox: none, memory (with the bound asked for), or SQL."""
    if args.kind.endswith("sql-inbox"):
        from sqlalchemy.ext.asyncio import create_async_engine

        from faststream_natspubsub.sql import SqlInboxStore, use_sqlite_wal

        engine = create_async_engine(args.database)
        use_sqlite_wal(engine)
        return SqlInboxStore(engine)
    if args.kind.endswith("kv-inbox"):
        return "kv"
    if not args.kind.endswith("inbox"):
        return None
    return MemoryInboxStore(max_entries=args.inbox_entries) if args.inbox_entries else "memory"


async def _consume_raw(args: argparse.Namespace, probe: Probe) -> None:
    nc = await nats.connect(args.url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        f"{args.env}.{args.app}.{args.topic}", durable=args.durable, stream=args.stream
    )
    latency = args.mode == "latency"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.deadline
    _settle()
    _say("READY")
    try:
        while not probe.done.is_set():
            if loop.time() > deadline:
                raise TimeoutError("raw consumer did not get every message in time")
            try:
                msgs = await sub.fetch(args.batch, timeout=args.fetch_timeout)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                probe.hit(json.loads(msg.data)["message"]["sent_ns"] if latency else None)
                await msg.ack()
    finally:
        await nc.close()


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    marks = tuple(max(1, args.count * p // 100) for p in (10, 50, 100)) if args.rss else ()
    probe = Probe(args.count + args.warmup, warmup=args.warmup, rss_marks=marks)
    consume = _consume_raw if args.kind == "raw" else _consume_faststream
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        await consume(args, probe)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    return probe.result()


def _settle() -> None:
    """Collect and freeze start-up garbage, for every contender alike.

    Otherwise the first full collection of the import-time heap (~35 ms) lands in the
    middle of a measurement and dominates a latency tail.
    """
    gc.collect()
    gc.freeze()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of one consumer run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--mode", choices=("throughput", "latency"), default="throughput")
    parser.add_argument("--url", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--durable", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--fetch-timeout", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=240.0)
    parser.add_argument(
        "--warmup", type=int, default=0, help="leading messages left out of latency stats"
    )
    parser.add_argument("--rss", action="store_true", help="sample RSS at 10/50/100%%")
    parser.add_argument(
        "--inbox-entries", type=int, default=0, help="bound of the memory inbox (0: default)"
    )
    parser.add_argument("--profile", help="write cProfile stats of the whole run here")
    parser.add_argument("--database", help="SQLAlchemy URL for the SQL inbox contenders")
    return parser.parse_args(argv)


def main() -> None:
    """Entry point: consume, then print the result line."""
    args = parse_args()
    result = run(_main(args))
    result["kind"] = args.kind
    _say("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
