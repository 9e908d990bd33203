"""Every use of FastStream or nats-py beyond their documented API, behind one door.

Each function is one access, checked when it runs: when the host library is not what it
expects, it raises :class:`CompatError` naming the versions this package supports.
``tests/test_compat.py`` runs each one against the installed versions.

Accesses, and why they are needed:

- the function a subscriber's handler was declared with (:func:`handler_function`): its
  first parameter's annotation says whether the handler wants a protobuf message or JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

from .errors import NatsPubsubError

__all__ = ("SUPPORTED", "CompatError", "handler_function")

SUPPORTED: Final = "faststream 0.7.x with nats-py 2.12 to 2.16"


class CompatError(NatsPubsubError, RuntimeError):
    """FastStream or nats-py is not what this package was built against."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}; faststream-natspubsub supports {SUPPORTED}")


def handler_function(subscriber: Any) -> Callable[..., Any] | None:
    """The user's function behind a FastStream subscriber's first handler; ``None`` if none yet.

    FastStream keeps it on the handler's call wrapper: ``_declared_call`` from 0.7.8,
    ``_original_call`` before.
    """
    calls = getattr(subscriber, "calls", None)
    if calls is None:
        raise CompatError(f"{type(subscriber).__name__} has no 'calls'")
    if not calls:
        return None
    wrapper = getattr(calls[0], "handler", None)
    for name in ("_declared_call", "_original_call"):
        function = getattr(wrapper, name, None)
        if callable(function):
            return cast("Callable[..., Any]", function)
    raise CompatError("a FastStream handler item has no declared call")
