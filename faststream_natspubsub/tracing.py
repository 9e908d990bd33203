"""Trace ids in the envelope, and trace continuation from them.

With FastStream's ``NatsTelemetryMiddleware`` the W3C ``traceparent`` header carries the
trace; the envelope's ``metadata.trace_id`` / ``span_id`` carry it too, so consumers that
only see the body (or messages from NatsPubsub 1.0, which has a top-level ``trace_id`` and no
header) can continue it. FastStream's telemetry reads the header in its ``consume_scope``;
:class:`TraceContextMiddleware` fills it in ``on_receive``, which runs before every
``consume_scope``.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any, Final

from faststream import BaseMiddleware
from opentelemetry import trace
from pydantic_core import from_json

if TYPE_CHECKING:
    from faststream import ContextRepo

__all__ = (
    "TraceContextMiddleware",
    "current_trace_metadata",
    "record_span_event",
    "tracing_configured",
)

TRACEPARENT: Final = "traceparent"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_INVALID_TRACE: Final = "0" * 32


def tracing_configured() -> bool:
    """True when an OpenTelemetry SDK tracer provider is installed globally."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def current_trace_metadata() -> dict[str, str]:
    """``trace_id``, ``span_id`` and ``parent_span_id`` of the current span, if any."""
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return {}
    ids = {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }
    parent = getattr(span, "parent", None)  # the SDK's spans know their parent
    if parent is not None and getattr(parent, "is_valid", False):
        ids["parent_span_id"] = format(parent.span_id, "016x")
    return ids


def record_span_event(name: str, attributes: dict[str, Any]) -> None:
    """Add an event to the current (consume) span when something records it."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, {k: v for k, v in attributes.items() if v is not None})


def traceparent_from_envelope(body: bytes) -> str | None:
    """A ``traceparent`` built from ``metadata.trace_id`` (or a top-level ``trace_id``)."""
    try:
        data = from_json(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    metadata = data.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    trace_id = metadata.get("trace_id") or data.get("trace_id")
    if not isinstance(trace_id, str):
        return None
    trace_id = trace_id.lower().replace("-", "")
    if not _TRACE_ID.fullmatch(trace_id) or trace_id == _INVALID_TRACE:
        return None
    span_id = metadata.get("span_id")
    if not (isinstance(span_id, str) and _SPAN_ID.fullmatch(span_id.lower())):
        # The publisher's span is unknown; a random parent keeps the trace id, which is
        # what joins the two sides in a trace view.
        span_id = secrets.token_hex(8)
    return f"00-{trace_id}-{span_id.lower()}-01"


class TraceContextMiddleware:
    """Gives a message without ``traceparent`` one made from its envelope's trace id.

    Install it before ``NatsTelemetryMiddleware``; :class:`NatsPubsub` does so when the
    broker has a telemetry middleware.
    """

    def __init__(self, *, subject_prefix: str = "") -> None:
        # Subjects whose envelopes may carry a trace: ``<env>.`` of each app on the broker.
        self.subject_prefixes: tuple[str, ...] = (subject_prefix,)

    def add_prefix(self, prefix: str) -> None:
        """Also look at messages on subjects starting with ``prefix``."""
        if prefix not in self.subject_prefixes:
            self.subject_prefixes = (*self.subject_prefixes, prefix)

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _TraceContext:
        return _TraceContext(msg, context=context, config=self)


class _TraceContext(BaseMiddleware):
    __slots__ = ("_config",)

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: TraceContextMiddleware):
        super().__init__(msg, context=context)
        self._config = config

    async def on_receive(self) -> None:
        raw: Any = self.msg
        subject = getattr(raw, "subject", None)
        data = getattr(raw, "data", None)
        if not isinstance(subject, str) or not subject.startswith(self._config.subject_prefixes):
            return
        headers = raw.headers
        if (headers and TRACEPARENT in headers) or not data or b'"trace_id"' not in data:
            return  # the cheap checks keep this off the common path
        traceparent = traceparent_from_envelope(data)
        if traceparent is None:
            return
        if headers is None:
            raw.headers = {TRACEPARENT: traceparent}
        else:
            headers[TRACEPARENT] = traceparent
