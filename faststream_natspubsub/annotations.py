"""Handler parameter annotations, injected from FastStream's context.

FastStream reads a parameter annotated with a plain class as a field of the message body;
context values need an ``Annotated[..., Context(...)]`` alias, as FastStream's own
``faststream.opentelemetry.annotations.CurrentSpan`` is.
"""

from typing import TYPE_CHECKING, Annotated, Any

from faststream import Context

from .envelope import Envelope
from .metadata import EVENT_CONTEXT_KEY
from .metadata import EventMetadata as _EventMetadata
from .transactional import INBOX_SESSION_KEY

__all__ = ("CurrentEnvelope", "EventMetadata", "InboxSession")

EventMetadata = Annotated[_EventMetadata, Context(f"{EVENT_CONTEXT_KEY}.metadata")]
"""Delivery facts and envelope metadata of the event being handled."""

CurrentEnvelope = Annotated[Envelope, Context(f"{EVENT_CONTEXT_KEY}.envelope")]
"""The whole decoded envelope of the event being handled."""

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    InboxSession = Annotated[AsyncSession, Context(INBOX_SESSION_KEY)]
else:
    # The base install has no SQLAlchemy; FastStream does not check a context value's type.
    InboxSession = Annotated[Any, Context(INBOX_SESSION_KEY)]
    """The ``AsyncSession`` of the SQL inbox's transaction (``SqlInboxStore``): what the handler
    writes through it commits together with the event's processed mark."""
