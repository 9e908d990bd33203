"""The console's view of one app on one NATS connection: its DLQ, index and JetStream."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..dlq_admin import DeadLetterQueue
from ..subjects import dlq_stream_name, dlq_subject_prefix, normalize_app, normalize_env
from .errors import ConsoleError
from .index import DEFAULT_INDEX_LIMIT, DeadLetterIndex

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = ("ConsoleBackend", "NotConnectedError")


class NotConnectedError(ConsoleError):
    """The console has no usable NATS connection (the broker is not started, or closed)."""


class ConsoleBackend:
    """Connection, DLQ and index of ``app`` in ``env``.

    ``connection`` returns the current client: the broker's when the console is mounted in an
    app, the console's own when it runs alone. It may raise when there is none.
    """

    def __init__(
        self,
        connection: Callable[[], Client],
        *,
        env: str,
        app: str,
        index_limit: int = DEFAULT_INDEX_LIMIT,
    ) -> None:
        self._connection = connection
        self.env = normalize_env(env)
        self.app = normalize_app(app)
        self.stream = dlq_stream_name(self.env, self.app)
        self.prefix = dlq_subject_prefix(self.env, self.app)
        self.index = DeadLetterIndex(
            self.stream, subject_filter=f"{self.prefix}.>", limit=index_limit
        )
        self._js: tuple[Client, JetStreamContext] | None = None

    def nc(self) -> Client:
        """The connection, or :class:`NotConnectedError`."""
        try:
            client = self._connection()
        except Exception as exc:  # any failure to get one means "not connected"
            raise NotConnectedError(f"no NATS connection: {exc}") from exc
        if client is None or client.is_closed or not client.is_connected:
            raise NotConnectedError("not connected to NATS (yet, or any more)")
        return client

    def js(self) -> JetStreamContext:
        """One JetStream context per connection (each new one subscribes a reply inbox)."""
        client = self.nc()
        if self._js is None or self._js[0] is not client:
            self._js = (client, client.jetstream())
        return self._js[1]

    def dlq(self) -> DeadLetterQueue:
        """The package's DLQ API on the current connection."""
        return DeadLetterQueue(self.js(), env=self.env, app=self.app)
