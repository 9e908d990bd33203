"""Test helpers: a throw-away ``nats-server -js`` and, as a pytest plugin, its fixtures."""

from .server import (
    EmbeddedNatsServer,
    NatsServerError,
    NatsServerNotFoundError,
    NatsServerStartError,
    find_nats_server_binary,
)

__all__ = (
    "EmbeddedNatsServer",
    "NatsServerError",
    "NatsServerNotFoundError",
    "NatsServerStartError",
    "find_nats_server_binary",
)
