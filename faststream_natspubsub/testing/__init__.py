"""Test helpers: in-memory failure testing, a throw-away ``nats-server -js`` and its fixtures."""

from .memory import Redelivery, TestNatsPubsub
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
    "Redelivery",
    "TestNatsPubsub",
    "find_nats_server_binary",
)
