"""What a handler's annotation asks the message to become (a protobuf class, or JSON values)."""

from __future__ import annotations

import inspect
import typing
import weakref
from typing import Any, get_origin

from ..compat import handler_function
from .annotations import ProtobufSchema
from .message import protobuf_class_of

__all__ = ("HandlerTargets", "body_annotation")


def body_annotation(function: Any) -> Any:
    """The annotation of the handler parameter that receives the message, if it has one.

    That is the first parameter not injected from the context (``Annotated[..., Context]``);
    ``ProtobufMessage[Cls]`` is an ``Annotated`` too, but names the message.
    """
    try:
        hints = typing.get_type_hints(function, include_extras=True)
        parameters = inspect.signature(function).parameters
    except (NameError, TypeError, ValueError):
        return None
    for name in parameters:
        hint = hints.get(name)
        if hint is not None and get_origin(hint) is typing.Annotated:
            if any(isinstance(extra, ProtobufSchema) for extra in hint.__metadata__):
                return hint
            continue
        return hint
    return None


class HandlerTargets:
    """Per subscriber: the protobuf class its handler takes, or ``None`` (JSON values).

    ``any_protobuf`` turns true once a handler taking a protobuf class is known; until then
    JSON envelopes need no look-up at all.
    """

    __slots__ = ("_targets", "any_protobuf")

    def __init__(self) -> None:
        self._targets: weakref.WeakKeyDictionary[Any, type | None] = weakref.WeakKeyDictionary()
        self.any_protobuf = False

    def target(self, subscriber: Any) -> type | None:
        """The protobuf class ``subscriber``'s handler takes, or ``None``."""
        if not getattr(subscriber, "calls", None):
            return None  # no handler yet: nothing to remember
        try:
            return self._targets[subscriber]
        except KeyError:
            pass
        except TypeError:  # not weak-referenceable: nothing to remember it by
            return self._inspect(subscriber)
        target = self._targets[subscriber] = self._inspect(subscriber)
        return target

    def inspect(self, subscribers: typing.Iterable[Any]) -> None:
        """Look at these subscribers' handlers now (the facade does when the broker starts)."""
        for subscriber in subscribers:
            self.target(subscriber)

    def _inspect(self, subscriber: Any) -> type | None:
        function = handler_function(subscriber)
        annotation = None if function is None else body_annotation(function)
        target = protobuf_class_of(annotation)
        if target is not None:
            self.any_protobuf = True
        return target
