"""``ProtobufMessage[Cls]``: a handler parameter that takes a generated protobuf class.

A plain ``order: orders_pb2.OrderPlaced`` works at run time, but FastStream's AsyncAPI
generation asks pydantic for a schema of every handler parameter, and pydantic knows none for
a generated class. ``order: ProtobufMessage[orders_pb2.OrderPlaced]`` is the same type to
mypy and to the handler, with a schema built from the message's descriptor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

from pydantic_core import core_schema

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue

__all__ = ("ProtobufMessage", "ProtobufSchema", "descriptor_json_schema")

T = TypeVar("T")

# FieldDescriptor.TYPE_* numbers and their JSON schema types.
_NUMBER: Final = frozenset({1, 2})  # double, float
_INTEGER: Final = frozenset({3, 4, 5, 6, 7, 13, 15, 16, 17, 18})
_BOOL: Final = 8
_STRING: Final = 9
_MESSAGE: Final = 11
_BYTES: Final = 12
_ENUM: Final = 14
# Nested messages are described this deep; deeper ones are plain objects (no recursion).
_MAX_DEPTH: Final = 4


class ProtobufSchema:
    """Pydantic schema of a generated protobuf class: an instance check, a descriptor schema."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.is_instance_schema(source)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        cls = schema.get("cls")
        descriptor = getattr(cls, "DESCRIPTOR", None)
        return {} if descriptor is None else descriptor_json_schema(descriptor)


ProtobufMessage = Annotated[T, ProtobufSchema()]
"""``ProtobufMessage[orders_pb2.OrderPlaced]``: the handler gets that protobuf message."""


def descriptor_json_schema(descriptor: Any, depth: int = 0) -> dict[str, Any]:
    """A JSON schema of a protobuf message (field names as in the ``.proto`` file)."""
    schema: dict[str, Any] = {
        "title": descriptor.name,
        "type": "object",
        "description": f"protobuf message {descriptor.full_name}",
        "x-protobuf-message": descriptor.full_name,
    }
    if depth < _MAX_DEPTH:
        schema["properties"] = {
            field.name: _field_schema(field, depth) for field in descriptor.fields
        }
    return schema


def _field_schema(field: Any, depth: int) -> dict[str, Any]:
    kind = field.type
    if kind == _MESSAGE:
        if field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": _field_schema(value, depth)}
        item = descriptor_json_schema(field.message_type, depth + 1)
    elif kind in _NUMBER:
        item = {"type": "number"}
    elif kind in _INTEGER:
        item = {"type": "integer"}
    elif kind == _BOOL:
        item = {"type": "boolean"}
    elif kind == _BYTES:
        item = {"type": "string", "contentEncoding": "base64"}
    elif kind == _ENUM:
        item = {"type": "string", "enum": [value.name for value in field.enum_type.values]}
    else:
        item = {"type": "string"}
    is_repeated = getattr(field, "is_repeated", None)
    repeated = is_repeated if isinstance(is_repeated, bool) else field.label == 3
    return {"type": "array", "items": item} if repeated else item
