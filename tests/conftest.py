"""Shared fixtures: a real nats-server per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from faststream_natspubsub.testing import EmbeddedNatsServer


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedNatsServer]:
    """A throw-away ``nats-server -js`` for one test."""
    async with EmbeddedNatsServer() as embedded:
        yield embedded
