"""The operations console: dead letters, consumers and outbox lag in a browser.

An ASGI application, mounted in a FastStream app or served alone by ``natspubsub console``::

    app = AsgiFastStream(broker, asgi_routes=[("/natspubsub", pubsub.console())])

Server-rendered pages, a little JavaScript, no build step and nothing fetched from elsewhere:
the stylesheet and script are served by the console itself.
"""

from .actions import ActionKind, Job
from .app import OperationsConsole
from .errors import ConsoleConfigError, ConsoleError
from .idempotency import IdempotencyStore, KvIdempotencyStore, MemoryIdempotencyStore
from .outbox import OutboxProvider, OutboxStats, OutboxStatsProvider
from .query import DeadLetterFilter
from .security import AuthDependency, ConsoleRequest

__all__ = (
    "ActionKind",
    "AuthDependency",
    "ConsoleConfigError",
    "ConsoleError",
    "ConsoleRequest",
    "DeadLetterFilter",
    "IdempotencyStore",
    "Job",
    "KvIdempotencyStore",
    "MemoryIdempotencyStore",
    "OperationsConsole",
    "OutboxProvider",
    "OutboxStats",
    "OutboxStatsProvider",
)
