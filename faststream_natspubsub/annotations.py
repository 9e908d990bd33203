"""Handler parameter annotations, injected from FastStream's context.

FastStream reads a parameter annotated with a plain class as a field of the message body;
context values need an ``Annotated[..., Context(...)]`` alias, as FastStream's own
``faststream.opentelemetry.annotations.CurrentSpan`` is.
"""

from typing import Annotated

from faststream import Context

from .envelope import Envelope
from .metadata import EVENT_CONTEXT_KEY
from .metadata import EventMetadata as _EventMetadata

__all__ = ("CurrentEnvelope", "EventMetadata")

EventMetadata = Annotated[_EventMetadata, Context(f"{EVENT_CONTEXT_KEY}.metadata")]
"""Delivery facts and envelope metadata of the event being handled."""

CurrentEnvelope = Annotated[Envelope, Context(f"{EVENT_CONTEXT_KEY}.envelope")]
"""The whole decoded envelope of the event being handled."""
