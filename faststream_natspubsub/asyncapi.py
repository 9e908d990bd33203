"""AsyncAPI documents that show what is really on the wire: the envelope, and the DLQ.

FastStream documents a handler's payload as its annotated model, but NatsPubsub subjects
carry that model inside the envelope. FastStream's ``AsyncAPI`` offers no hook for that, so
this drop-in subclass post-processes the generated document (AsyncAPI 3.0 and 2.6)::

    from faststream_natspubsub import AsyncAPI

    app = FastStream(broker, specification=AsyncAPI(title="Payments"))
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from faststream.specification import AsyncAPI as FastStreamAsyncAPI
from pydantic import TypeAdapter

from .codecs.asyncapi import annotate_message
from .dlq import DeadLetterRecord
from .host import BrokerHost

if TYPE_CHECKING:
    from faststream.specification.base import Specification

    from .runtime import AppRuntime

__all__ = ("AsyncAPI", "envelope_schema", "wrap_document")

_ENVELOPE_MARK: Final = "x-natspubsub-envelope"
_CORRELATION_LOCATION: Final = "$message.payload#/metadata/correlation_id"
_METADATA_SCHEMA: Final = "NatsPubsubEventMetadata"
_RECORD_SCHEMA: Final = "NatsPubsubDeadLetterRecord"
_METADATA_FIELDS: Final = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "correlation_id",
    "causation_id",
    "user_id",
    "tenant_id",
    "session_id",
    "app_name",
    "app_version",
    "environment",
)


class AsyncAPI(FastStreamAsyncAPI):
    """FastStream's ``AsyncAPI`` with envelope-wrapped payloads and DLQ channels.

    The NatsPubsub apps are those on the document's brokers (each broker's NatsPubsub
    middleware knows the apps it serves).
    """

    def to_specification(self) -> Specification:
        specification = super().to_specification()
        document = specification.to_jsonable()
        apps = [
            app
            for broker in self.brokers
            if (host := BrokerHost.find(broker)) is not None
            for app in host.apps
        ]
        wrap_document(document, apps)
        return _Document(document, title=specification.title)


def envelope_schema(payload: dict[str, Any], *, metadata_ref: str) -> dict[str, Any]:
    """The envelope around ``payload`` (a JSON schema or a ``$ref`` to one)."""
    return {
        "title": "Envelope",
        "type": "object",
        "required": ["event_id", "message"],
        "properties": {
            "event_id": {"type": "string", "description": "Unique id; also Nats-Msg-Id"},
            "schema_version": {"type": "integer", "default": 1},
            "topic": {"type": "string", "description": "Topic without env and app"},
            "occurred_at": {"type": "string", "format": "date-time"},
            "message": payload,
            "metadata": {"$ref": metadata_ref},
        },
    }


def wrap_document(document: dict[str, Any], apps: list[AppRuntime]) -> None:
    """Wrap the payloads of NatsPubsub channels and add each app's DLQ channel."""
    if not apps:
        return
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    messages = components.setdefault("messages", {})
    schemas[_METADATA_SCHEMA] = {
        "title": "EventMetadata",
        "type": "object",
        "properties": {name: {"type": "string"} for name in _METADATA_FIELDS},
        "additionalProperties": True,
    }
    metadata_ref = f"#/components/schemas/{_METADATA_SCHEMA}"
    for channel in document.get("channels", {}).values():
        owner = _owner(_subject(channel), apps)
        if owner is None:
            continue
        for ref in _message_refs(channel):
            message = messages.get(ref.rsplit("/", 1)[-1])
            if message is None or message.get(_ENVELOPE_MARK):
                continue
            message["payload"] = envelope_schema(
                message.get("payload", {}), metadata_ref=metadata_ref
            )
            # One correlation id: the envelope's, which FastStream's correlation_id mirrors.
            message["correlationId"] = {
                "location": _CORRELATION_LOCATION,
                "description": "The envelope's metadata.correlation_id (its event_id if none)",
            }
            message[_ENVELOPE_MARK] = True
            annotate_message(message, owner.envelope.codec, document)
    if any(app.dead_letters for app in apps):
        _add_record_schema(schemas)
    for app in apps:
        if app.dead_letters is not None:
            _add_dlq_channel(
                document, app.app, app.dead_letters.stream, app.dead_letters.subject_prefix
            )


def _owner(subject: str, apps: list[AppRuntime]) -> AppRuntime | None:
    """The app of a subject: the one it belongs to if hosted here, else one of its env."""
    of_env = [app for app in apps if subject.startswith(f"{app.env}.")]
    for app in of_env:
        if subject.startswith(f"{app.env}.{app.app}."):
            return app
    return of_env[0] if of_env else None


def _subject(channel: dict[str, Any]) -> str:
    subject = channel.get("bindings", {}).get("nats", {}).get("subject")
    return str(subject or channel.get("address") or "")


def _message_refs(channel: dict[str, Any]) -> list[str]:
    refs = [m.get("$ref", "") for m in channel.get("messages", {}).values()]  # 3.0
    refs += [  # 2.6
        channel.get(operation, {}).get("message", {}).get("$ref", "")
        for operation in ("publish", "subscribe")
    ]
    return [ref for ref in refs if ref.startswith("#/components/messages/")]


def _add_record_schema(schemas: dict[str, Any]) -> None:
    schema = TypeAdapter(DeadLetterRecord).json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schema["description"] = "One dead-lettered event: the original, where it came from, why."
    schemas[_RECORD_SCHEMA] = schema


def _add_dlq_channel(document: dict[str, Any], app: str, stream: str, prefix: str) -> None:
    name = f"{stream}:DeadLetters"
    subject = f"{prefix}.>"
    message_name = f"{name}:Message"
    document["components"]["messages"][message_name] = {
        "title": message_name,
        "summary": f"Events {app} could not process",
        "payload": {"$ref": f"#/components/schemas/{_RECORD_SCHEMA}"},
    }
    channel: dict[str, Any] = {
        "description": (
            f"Dead-letter queue of {app} (stream {stream}); "
            "subjects dlq.<env>.<app>.<source app>.<topic>."
        ),
        "bindings": {"nats": {"subject": subject, "bindingVersion": "custom"}},
    }
    message_ref = {"$ref": f"#/components/messages/{message_name}"}
    if str(document.get("asyncapi", "")).startswith("2."):
        channel["subscribe"] = {"message": message_ref}  # 2.6: the app sends here
    else:
        channel["address"] = subject
        channel["messages"] = {"DeadLetterRecord": message_ref}
        document.setdefault("operations", {})[f"{name}:Send"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/DeadLetterRecord"}],
        }
    document.setdefault("channels", {})[name] = channel


class _Document:
    """A finished document, in the shape FastStream's docs commands and ASGI routes use."""

    def __init__(self, document: dict[str, Any], *, title: str) -> None:
        self._document = document
        self._title = title

    @property
    def title(self) -> str:
        return self._title

    def to_jsonable(self) -> Any:
        return self._document

    def to_json(self) -> str:
        return json.dumps(self._document)

    def to_yaml(self) -> str:
        import yaml  # type: ignore[import-untyped]  # FastStream also needs PyYAML for YAML

        return str(yaml.dump(self._document, sort_keys=False))
