"""Envelopes of any codec as JSON values, for people: the DLQ tools show them this way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..envelope import MalformedEnvelopeError
from .message import to_jsonable
from .reader import CodecReader

__all__ = ("describe",)

_READER = CodecReader()


def describe(payload: bytes, headers: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The envelope in ``payload`` as a JSON-ready dict, whatever its codec; ``None`` if unreadable.

    A protobuf message inside is shown in its JSON form when its generated module is
    imported, else as base64 with its content type.
    """
    try:
        envelope = _READER.decode_headers(payload, headers)
    except MalformedEnvelopeError:
        return None
    data = envelope.to_dict()
    data["message"] = to_jsonable(envelope.message)
    return data
