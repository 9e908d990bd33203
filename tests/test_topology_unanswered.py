"""Declaring asks again when a JetStream API request gets no answer in time.

In a cluster a stream or consumer that was just created (by this process, or by another
instance of the app starting at the same moment) answers only once its leader is elected;
tests/fault/test_fault_cluster.py starts two consumers at once on a fresh R3 stream against
three real servers. Here, the retry itself: a stand-in manager whose first answers time out.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError

from faststream_natspubsub.errors import TopologyError
from faststream_natspubsub.topology import (
    UNANSWERED_RETRIES,
    ConsumerSpec,
    StreamSpec,
    ensure_consumer,
    ensure_stream,
)

CONSUMER = ConsumerSpec(
    stream="TEST_ORDERS",
    durable="orders-c",
    filter_subject="test.orders.x",
    ack_wait=30,
    max_deliver=5,
)


class SilentFirst:
    """Answers each kind of request only after ``silent`` timeouts."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.calls: list[str] = []
        self.info: Any = object()

    def _maybe_silent(self, name: str) -> None:
        self.calls.append(name)
        if self.calls.count(name) <= self.silent:
            raise NatsTimeoutError

    async def consumer_info(self, stream: str, durable: str) -> Any:
        self._maybe_silent("consumer_info")
        raise NotFoundError

    async def add_consumer(self, stream: str, config: Any) -> Any:
        self._maybe_silent("add_consumer")
        return self.info

    async def stream_info(self, name: str) -> Any:
        self._maybe_silent("stream_info")
        raise NotFoundError

    async def add_stream(self, config: Any) -> Any:
        self._maybe_silent("add_stream")
        return self.info


async def test_a_consumer_is_declared_once_the_server_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    jsm = SilentFirst(silent=2)
    with caplog.at_level(logging.INFO, logger="faststream_natspubsub.topology"):
        await ensure_consumer(jsm, CONSUMER)  # type: ignore[arg-type]
    assert jsm.calls == ["consumer_info"] * 3 + ["add_consumer"] * 3
    assert "no answer about consumer 'orders-c' on stream 'TEST_ORDERS'" in caplog.text


async def test_a_stream_is_declared_once_the_server_answers() -> None:
    jsm = SilentFirst(silent=1)
    info = await ensure_stream(jsm, StreamSpec(name="TEST_ORDERS", subjects=("test.orders.>",)))  # type: ignore[arg-type]
    assert info is jsm.info
    assert jsm.calls == ["stream_info"] * 2 + ["add_stream"] * 2


async def test_a_server_that_never_answers_fails_with_a_topology_error_naming_it() -> None:
    jsm = SilentFirst(silent=100)
    with pytest.raises(TopologyError, match="consumer 'orders-c' on stream 'TEST_ORDERS'"):
        await ensure_consumer(jsm, CONSUMER)  # type: ignore[arg-type]
    assert jsm.calls == ["consumer_info"] * (UNANSWERED_RETRIES + 1)
