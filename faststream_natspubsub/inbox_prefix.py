"""The reply-subject prefix of an app: one setting for its connection and its subscribers.

Every JetStream request (a publish's PubAck, a pull's messages, a stream lookup, a KV get)
is answered on a subject under the connection's inbox prefix, ``_INBOX`` by default. Any
client allowed to subscribe to ``_INBOX.>`` reads those answers, pulled events included. An
app with its own prefix (``_INBOX_orders``) and a user allowed only ``_INBOX_orders.>``
keeps them to itself.

The connection's prefix is ``NatsBroker(inbox_prefix=...)``; FastStream gives its pull
subscribers ``_INBOX.`` unless told otherwise, so a prefix set on one side only breaks
silently. :func:`bind_inbox_prefix` makes them one setting: the facade takes the broker's,
or sets the broker's from ``NatsPubsub(inbox_prefix=...)``, and hands it to every subscriber
it declares.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from .compat import broker_connection_kwargs
from .errors import ConfigurationError

if TYPE_CHECKING:
    from faststream.nats import NatsBroker

__all__ = ("DEFAULT_INBOX_PREFIX", "bind_inbox_prefix", "broker_inbox_prefix", "check_inbox_prefix")

DEFAULT_INBOX_PREFIX: Final = "_INBOX"
# Subject tokens without wildcards, whitespace or an empty token.
_PREFIX: Final = re.compile(r"[^.*>\s]+(\.[^.*>\s]+)*")


def check_inbox_prefix(prefix: str) -> str:
    """``prefix`` if it is a valid inbox prefix (no wildcard, no empty token), else
    :class:`ConfigurationError`."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigurationError(
            f"inbox_prefix must be subject tokens without wildcards or spaces (like "
            f"'_INBOX_orders'), not {prefix!r}"
        )
    return prefix


def broker_inbox_prefix(broker: NatsBroker) -> str:
    """The inbox prefix the broker's connection is made with."""
    value = broker_connection_kwargs(broker).get("inbox_prefix") or DEFAULT_INBOX_PREFIX
    return value.decode() if isinstance(value, bytes) else str(value)


def bind_inbox_prefix(broker: NatsBroker, prefix: str | None, *, first_app: bool) -> str:
    """The inbox prefix of an app on ``broker``: the broker's, or ``prefix`` set on it.

    A broker has one connection, so its apps share one prefix: ``prefix`` may differ from
    the broker's only when the broker has the default and no app yet (the earlier apps'
    subscribers already use the broker's).
    """
    current = broker_inbox_prefix(broker)
    if prefix is None or prefix == current:
        return current
    check_inbox_prefix(prefix)
    if current != DEFAULT_INBOX_PREFIX:
        raise ConfigurationError(
            f"inbox_prefix={prefix!r}, but the broker's connection uses {current!r}: one "
            "connection has one inbox prefix; set it once (NatsBroker(inbox_prefix=...) or "
            "the first NatsPubsub on the broker)"
        )
    if not first_app:
        raise ConfigurationError(
            f"inbox_prefix={prefix!r} on a broker whose other apps use {current!r}: set it on "
            "the broker (NatsBroker(inbox_prefix=...)) or on the first NatsPubsub created on it"
        )
    broker_connection_kwargs(broker)["inbox_prefix"] = prefix
    return prefix
