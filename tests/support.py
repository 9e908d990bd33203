"""Helpers shared by the tests: waiting on conditions, running brokers, sample payloads."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from faststream.nats import NatsBroker

from faststream_natspubsub.testing import EmbeddedNatsServer

# Exactly what NatsPubsub 1.0 (TypeScript) publishes for a topic event.
NATSPUBSUB_TS_ENVELOPE = (
    b'{"event_id":"0b9b8f3c-1f3e-4a57-b7a5-0c6a86e3a111","schema_version":1,'
    b'"topic":"order.created","message_type":"OrderCreated","producer":"orders",'
    b'"occurred_at":"2025-01-17T10:30:00.123Z","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",'
    b'"message":{"order_id":"ORD-123","total":99.99}}'
)


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,
    message: str = "condition",
) -> None:
    """Poll ``condition`` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(*brokers: NatsBroker) -> AsyncIterator[None]:
    """Start brokers (topology declared by the facade's start hook) and stop them after."""
    started: list[NatsBroker] = []
    try:
        for broker in brokers:
            await broker.start()
            started.append(broker)
        yield
    finally:
        for broker in reversed(started):
            await broker.stop()


def new_broker(server: EmbeddedNatsServer, **kwargs: Any) -> NatsBroker:
    """A broker with FastStream's per-message INFO logging off (tests read our own logs)."""
    kwargs.setdefault("logger", None)
    return NatsBroker(server.url, **kwargs)


async def consumer_idle(js: Any, stream: str, durable: str) -> bool:
    """True when the consumer has nothing pending and nothing waiting for an ack."""
    info = await js.consumer_info(stream, durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


# -- the natspubsub command, run as a shell runs it ---------------------------------------


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def natspubsub(*args: str, timeout: float = 60.0) -> Result:
    """Run the CLI in a child process without blocking the running loop."""
    # The operator's own NATS settings must not leak into the tests.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSPUBSUB_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "faststream_natspubsub.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def at(server: EmbeddedNatsServer, *args: str) -> tuple[str, ...]:
    return (*args, "--servers", server.url, "--env", "test", "--app", "orders")


def assert_one_line_error(result: Result, code: int, text: str) -> None:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert text in lines[0]
    assert "Traceback" not in result.out + result.err


class FakeNatsClient:
    """Stands in for nats-py's client where the fetch and dispatch write: records the
    protocol lines they send (NAKs, +WPI), answers nothing."""

    is_closed = False
    is_connected = True

    def __init__(self) -> None:
        self.stats = {"reconnects": 0}
        self.written = b""

    async def publish(self, subject: str, data: bytes = b"", reply: str = "") -> None:
        pass

    async def _send_command(self, data: bytes, priority: bool = False) -> None:
        self.written += data

    async def _flush_pending(self, *args: Any, **kwargs: Any) -> None:
        pass


def fake_pull_parts(client: Any) -> Any:
    """The parts of a pull subscription (``compat.PullParts``) around a queue of one's own."""
    from types import SimpleNamespace

    from faststream_natspubsub.compat import PullParts

    return PullParts(
        client=client,
        subscription=SimpleNamespace(_pending_size=0),
        queue=asyncio.Queue(),
        next_subject="$JS.API.CONSUMER.MSG.NEXT.S.C",
        deliver_subject="_INBOX.x",
    )
