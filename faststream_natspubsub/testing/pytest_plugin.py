"""pytest fixtures that give each test its own throw-away ``nats-server``.

Registered through the ``pytest11`` entry point, so installing the package makes
``nats_server`` and ``nats_url`` available to every test suite. The fixtures are
async and need ``pytest-asyncio``; without it, pytest still starts and only the
tests that use them fail, with a message saying what to install.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, NoReturn

import pytest

from faststream_natspubsub.testing.server import EmbeddedNatsServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ("nats_server", "nats_url")


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def nats_server() -> AsyncIterator[EmbeddedNatsServer]:
        """A started ``EmbeddedNatsServer`` with JetStream, private to this test.

        It listens on a free port on 127.0.0.1 with its store in a temporary
        directory; both are gone after the test.
        """
        async with EmbeddedNatsServer() as server:
            yield server

else:

    @pytest.fixture(name="nats_server")
    def _nats_server_unavailable() -> NoReturn:
        """Unavailable: install ``pytest-asyncio`` to use this fixture."""
        pytest.fail(
            "the nats_server fixture needs pytest-asyncio: pip install pytest-asyncio",
            pytrace=False,
        )


@pytest.fixture
def nats_url(nats_server: EmbeddedNatsServer) -> str:
    """The ``nats://127.0.0.1:<port>`` URL of this test's ``nats_server``."""
    return nats_server.url
