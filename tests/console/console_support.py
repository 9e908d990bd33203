"""Helpers of the console tests: records in a real DLQ stream, the console on a real HTTP port."""

from __future__ import annotations

import asyncio
import html
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import nats
import uvicorn
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from support import wait_until

from faststream_natspubsub import EventMetadata, NatsPubsub
from faststream_natspubsub.console import OperationsConsole
from faststream_natspubsub.dlq import DeadLetterReason, DeadLetterWriter, FailedDelivery
from faststream_natspubsub.envelope import EnvelopeCodec
from faststream_natspubsub.subjects import dlq_stream_name, dlq_subject_prefix
from faststream_natspubsub.testing import EmbeddedNatsServer

CONSOLE_TOKEN = "console-token-for-tests-0123456789"
REASONS = (
    DeadLetterReason.PERMANENT_ERROR,
    DeadLetterReason.MAX_ATTEMPTS_EXCEEDED,
    DeadLetterReason.MALFORMED,
    DeadLetterReason.MAX_DELIVER_EXCEEDED,
)
TOPICS = ("order.created", "order.paid", "payment.captured", "invoice.sent")


class _Failure(Exception):
    """The error recorded in seeded records."""


@dataclass(frozen=True, slots=True)
class Seeded:
    """What a seeded record was made of (index ``i`` is its position in the seeding)."""

    i: int
    topic: str
    reason: str
    error: str


def seeded(i: int) -> Seeded:
    """The record ``seed_records`` writes at position ``i``: topics and reasons rotate."""
    return Seeded(
        i=i,
        topic=TOPICS[i % len(TOPICS)],
        reason=REASONS[(i // len(TOPICS)) % len(REASONS)].value,
        error=f"card declined for ORD-{i}" if i % 10 else f"timeout talking to bank for ORD-{i}",
    )


async def ensure_dlq(nc: Client, env: str, app: str) -> str:
    """The DLQ stream of ``app`` (created as the facade would)."""
    stream = dlq_stream_name(env, app)
    js = nc.jetstream()
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"{dlq_subject_prefix(env, app)}.>"])
        )
    return stream


async def record_messages(
    env: str, app: str, count: int, *, start: int = 0, source_app: str = "orders"
) -> list[tuple[str, bytes, dict[str, str]]]:
    """``(subject, body, headers)`` of records exactly as ``DeadLetterWriter`` writes them."""
    writer = DeadLetterWriter(
        app=app,
        stream=dlq_stream_name(env, app),
        subject_prefix=dlq_subject_prefix(env, app),
        codec=EnvelopeCodec(),
    )
    out: list[tuple[str, bytes, dict[str, str]]] = []

    async def capture(body: bytes, subject: str, *, headers: dict[str, str], **_: Any) -> None:
        out.append((subject, body, headers))

    codec = EnvelopeCodec()
    for i in range(start, start + count):
        item = seeded(i)
        envelope = {
            "event_id": f"00000000-0000-4000-8000-{i:012d}",
            "schema_version": 1,
            "topic": item.topic,
            "occurred_at": "2025-01-17T10:30:00.000Z",
            "message": {"order_id": f"ORD-{i}", "total": 10.5},
            "metadata": {"app_name": source_app, "environment": env},
        }
        body, _ = codec.encode(envelope)
        try:
            raise _Failure(item.error)
        except _Failure as exc:
            error = exc
        failure = FailedDelivery(
            subject=f"{env}.{source_app}.{item.topic}",
            body=body,
            headers={"Nats-Msg-Id": envelope["event_id"]},
            stream=f"{env.upper()}_{source_app.upper()}",
            stream_seq=i + 1,
            consumer=f"{app}__{item.topic.replace('.', '_')}",
            deliveries=5,
            reason=DeadLetterReason(item.reason),
            error=error,
            first_failure_at=datetime(2025, 1, 17, 10, 30, tzinfo=timezone.utc),
        )
        await writer.write(failure, capture)
    return out


async def seed_records(
    nc: Client, env: str, app: str, count: int, *, start: int = 0, source_app: str = "orders"
) -> None:
    """Write ``count`` records to the DLQ, pipelined, and wait until all are stored."""
    stream = await ensure_dlq(nc, env, app)
    js = nc.jetstream()
    before = (await js.stream_info(stream)).state.messages
    messages = await record_messages(env, app, count, start=start, source_app=source_app)
    for n, (subject, body, headers) in enumerate(messages):
        await nc.publish(subject, body, headers=headers)
        if n % 2000 == 1999:
            await nc.flush()
    await nc.flush()

    async def stored() -> bool:
        return bool((await js.stream_info(stream)).state.messages >= before + count)

    await wait_until(stored, timeout=60, message=f"{count} records stored")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def http_server(app: Any, *, lifespan: str = "off") -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free port of 127.0.0.1; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan=lifespan, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


CONSOLE_PATH = "/natspubsub"


@dataclass
class LiveConsole:
    """The app (``billing``, consuming every topic of ``orders``) and its mounted console."""

    server: EmbeddedNatsServer
    env: str
    app: str
    broker: NatsBroker
    pubsub: NatsPubsub
    console: OperationsConsole
    base_url: str
    handled: list[EventMetadata] = field(default_factory=list)
    """Events the app's consumer handled (replays arrive here)."""

    @property
    def nc(self) -> Client:
        connection = self.broker.connection
        assert isinstance(connection, Client)
        return connection

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client on the console's origin (cookies kept, redirects not followed)."""
        kwargs.setdefault("follow_redirects", False)
        return httpx.AsyncClient(base_url=self.base_url, timeout=30.0, **kwargs)

    @property
    def dlq_stream(self) -> str:
        return f"DLQ_{self.env.upper()}_{self.app.upper()}"


@asynccontextmanager
async def live_console(
    server: EmbeddedNatsServer,
    *,
    setup: Callable[[NatsPubsub], object] | None = None,
    env: str | None = None,
    **console_options: Any,
) -> AsyncIterator[LiveConsole]:
    """Start the app with the console mounted at ``/natspubsub`` in an ``AsgiFastStream``.

    ``setup`` may declare more subscribers on the app before it starts.
    """
    env = env or f"t{uuid.uuid4().hex[:8]}"
    broker = NatsBroker(server.url, logger=None)
    pubsub = NatsPubsub(broker, env=env, app="billing")
    handled: list[EventMetadata] = []

    @pubsub.subscriber(">", app="orders")
    async def on_order_event(body: dict[str, Any], meta: EventMetadata) -> None:
        handled.append(meta)

    if setup is not None:
        setup(pubsub)
    console_options.setdefault("token", CONSOLE_TOKEN)
    console_options.setdefault("actions", True)
    console = pubsub.console(**console_options)
    asgi = AsgiFastStream(broker, asgi_routes=[(CONSOLE_PATH, console)])
    await broker.start()
    try:
        async with http_server(asgi) as base_url:
            yield LiveConsole(
                server=server,
                env=env,
                app="billing",
                broker=broker,
                pubsub=pubsub,
                console=console,
                base_url=base_url,
                handled=handled,
            )
    finally:
        await console.shutdown()
        await broker.stop()


_CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
_KEY_RE = re.compile(r'name="key" value="([^"]+)"')


def form_fields(html: str, *names: str) -> dict[str, str]:
    """The hidden fields of the first form on a page that has them all."""
    for form in re.findall(r"<form[^>]*>(.*?)</form>", html, flags=re.S):
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))
        if all(name in fields for name in names):
            return {k: _unescape(v) for k, v in fields.items()}
    raise AssertionError(f"no form with {names} on the page")


def _unescape(value: str) -> str:
    return html.unescape(value)


async def login(client: httpx.AsyncClient, token: str = CONSOLE_TOKEN) -> httpx.Response:
    """Log in through the console's form (CSRF cookie and token included)."""
    page = await client.get("/natspubsub", params={"view": "login"})
    csrf = form_fields(page.text, "csrf", "next")["csrf"]
    return await client.post(
        "/natspubsub", data={"do": "login", "csrf": csrf, "token": token, "next": "?view=dlq"}
    )


def seqs_on_page(html: str) -> list[int]:
    """Record sequences listed on a list page, in order."""
    return [int(s) for s in re.findall(r'<a href="\?view=record&amp;seq=(\d+)">\1</a>', html)]


def all_seqs(pages: Sequence[list[int]]) -> list[int]:
    return [seq for page in pages for seq in page]


# -- a real browser ------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium (``apt-get install chromium``; ``.ci/run`` installs it)."""
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root in CI containers
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SKIP_BROWSER_ENV = "NATSPUBSUB_SKIP_BROWSER_TESTS"


class BrowserUnavailableError(RuntimeError):
    """Playwright or Chromium is missing; the message says how to get them."""


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium driven by Playwright (its own browser download is not used)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        raise BrowserUnavailableError(
            "Playwright is not installed: pip install -e '.[dev]'"
        ) from None
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserUnavailableError(
            f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run installs it)"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
