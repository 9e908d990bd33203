"""The inbox's part in the fetch-ahead dispatch: claims travel before their handlers start.

When messages arrive, their claims go out in one write, so by the time a handler's turn comes
its claim is (usually) answered: one round trip per arrival instead of one per message. A
message handed back unstarted (a graceful stop) gives its claim up first, so whoever gets it
next is not held back for a lease; and a stopping subscriber waits for the processed marks
still on their way, so their acknowledgements are sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from pydantic_core import from_json

from .codecs.reader import CodecReader, content_type_of
from .compat import wrap_stop
from .envelope import MalformedEnvelopeError
from .inbox import inbox_key

if TYPE_CHECKING:
    from typing import Any

    from nats.aio.msg import Msg

    from .codecs.base import Codec
    from .middlewares.inbox import InboxMiddleware

__all__ = ("InboxAhead", "drain_on_stop")

_GZIP_MAGIC: Final = b"\x1f\x8b"


class InboxAhead:
    """:class:`~faststream_natspubsub.dispatch.DispatchHooks` for one subscriber's inbox."""

    def __init__(
        self,
        inbox: InboxMiddleware,
        *,
        codec: Codec | CodecReader | None = None,
        durable: str | None,
        ack_wait: float,
    ) -> None:
        self.inbox = inbox
        self.reader = codec if isinstance(codec, CodecReader) else CodecReader(codec)
        # The same keys and lease as the inbox middleware uses for this subscriber.
        self.prefix, self.lease = inbox.scope(durable, ack_wait)
        self._claim_ahead = getattr(inbox.store, "claim_ahead", None)
        self._release_ahead = getattr(inbox.store, "release_ahead", None)

    async def fetched(self, msgs: Sequence[Msg]) -> None:
        if self._claim_ahead is not None:
            await self._claim_ahead(self._keys(msgs), lease=self.lease)

    async def unstarted(self, msgs: Sequence[Msg]) -> None:
        if self._release_ahead is not None:
            await self._release_ahead(self._keys(msgs))

    async def stopped(self) -> None:
        await self.inbox.drain()

    def _keys(self, msgs: Sequence[Msg]) -> list[str]:
        keys: list[str] = []
        for msg in msgs:
            event_id = self._event_id(msg)
            if event_id is not None:
                keys.append(inbox_key(self.prefix, msg.subject, event_id))
        return keys

    def _event_id(self, msg: Msg) -> str | None:
        """The envelope's event id, as the envelope middleware will read it; None for what
        it will find malformed (dead-lettered: the inbox never sees it)."""
        data = msg.data
        reader = self.reader
        if reader.by_type.get(content_type_of(msg.headers)) is not reader.json or (
            data[:2] == _GZIP_MAGIC
        ):
            try:
                return reader.decode_headers(data, msg.headers).event_id
            except MalformedEnvelopeError:
                return None
        # The JSON alone: an envelope object is only built once, by the envelope middleware.
        try:
            envelope = from_json(data)
        except ValueError:
            return None
        if not isinstance(envelope, dict) or not ("message" in envelope or "payload" in envelope):
            return None
        event_id = envelope.get("event_id")
        return event_id if isinstance(event_id, str) and event_id else None


def drain_on_stop(subscriber: Any, inbox: InboxMiddleware) -> None:
    """A subscriber without the dispatch (batch mode) also waits, once stopped, for the
    processed marks on their way (or the SQL inbox's batch commit in flight), so their
    acknowledgements are sent."""

    async def nothing() -> None:
        return None

    wrap_stop(subscriber, before=nothing, after=inbox.drain)
