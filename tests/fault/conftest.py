"""Fixtures and the ``--soak-seconds`` option of the fault tests.

pytest reads ``pytest_addoption`` only from conftest files it loads at start-up: this one is
among them when the command line names ``tests/fault`` (or a file in it). A plain ``pytest``
from the repository root does not load it early, so the soak length can also come from the
``NATSPUBSUB_SOAK_SECONDS`` environment variable.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from harness.nodes import sync_always_server

from faststream_natspubsub.testing import EmbeddedNatsServer

DEFAULT_SOAK_SECONDS = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=None,
        help="length of the fault soak test in seconds (default 60, or $NATSPUBSUB_SOAK_SECONDS)",
    )


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    """How long the soak publishes and injects faults."""
    value = request.config.getoption("--soak-seconds", default=None)
    if value is None:
        value = os.environ.get("NATSPUBSUB_SOAK_SECONDS", DEFAULT_SOAK_SECONDS)
    return float(value)


@pytest.fixture
async def durable_server() -> AsyncIterator[EmbeddedNatsServer]:
    """A single JetStream server with ``sync_interval: always`` (survives SIGKILL)."""
    async with sync_always_server() as server:
        yield server
