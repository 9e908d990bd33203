"""Fixtures of the console tests: a live console built by ``console_support.live_console``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from console_support import SKIP_BROWSER_ENV, BrowserUnavailableError, chromium, live_console

from faststream_natspubsub.testing import EmbeddedNatsServer


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedNatsServer]:
    """A private server per console test: consoles leave background scans and jobs behind
    for a moment after a test, which must not reach the next test's DLQ."""
    async with EmbeddedNatsServer() as embedded:
        yield embedded


@pytest.fixture
def make_console(
    server: EmbeddedNatsServer,
) -> Callable[..., Any]:
    """``async with make_console(**options) as live:`` a console with these options."""

    def make(**options: Any) -> Any:
        return live_console(server, **options)

    return make


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium; a missing browser fails the test unless skipping is asked for."""
    if os.environ.get(SKIP_BROWSER_ENV) == "1":
        pytest.skip(f"browser tests skipped: {SKIP_BROWSER_ENV}=1")
    try:
        async with chromium() as instance:
            yield instance
    except BrowserUnavailableError as exc:
        pytest.fail(f"{exc} (or set {SKIP_BROWSER_ENV}=1 to skip the browser tests)")
