"""The least permissions an app needs, derived from its own topology.

:class:`AppAccess` describes what one app uses on the server (its streams, consumers, DLQ,
KV inbox, reply prefix); :func:`permissions_for` turns it into the exact subjects a NATS user
must be allowed for one or more roles:

- ``publisher``: publish the app's events (its stream declared or verified on first use);
- ``consumer``: start (declare or verify what the app reads), pull, ack, dead-letter, hear
  the MAX_DELIVERIES advisories and read the event they name, the KV inbox;
- ``health``: what ``pubsub.health()`` reads;
- ``operator``: what the ``natspubsub`` command needs for this app (``dlq``, ``topology``,
  ``health``).

Subjects are exact wherever the topology names them (stream, consumer and bucket names);
the wildcards left are the app's own: its events (``<env>.<app>.>``), the acks of one
consumer (``$JS.ACK.<stream>.<durable>.>``), the keys of its bucket and its reply prefix. No
``$JS.API.>``. :meth:`PermissionSet.to_config` prints the ``permissions { ... }`` block of a
nats-server user; each permission also says which subscribers cannot work without it, which
the app uses to stop exactly those when the server refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .advisories import advisory_subject
from .advisory_read import reader_name
from .dlq import dlq_subject
from .errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from .violations import Violation

__all__ = (
    "ROLES",
    "AppAccess",
    "ConsumerAccess",
    "Permission",
    "PermissionSet",
    "permissions_for",
)

ROLES: Final = ("publisher", "consumer", "health", "operator")
_API: Final = "$JS.API"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerAccess:
    """One durable consumer of the app, as the permissions need it."""

    stream: str
    durable: str
    filter_subject: str
    inbox: bool
    """Whether its events go through the KV inbox."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AppAccess:
    """What one app uses on the server."""

    env: str
    app: str
    own_stream: str
    """The stream that holds ``<env>.<app>.>``."""
    start_streams: tuple[str, ...]
    """The streams declared (or verified) when the broker starts."""
    consumers: tuple[ConsumerAccess, ...]
    dlq_stream: str | None
    dlq_prefix: str
    kv_bucket: str | None
    """The KV inbox's bucket (``inbox="kv"``)."""
    inbox_prefix: str
    verify_only: bool
    """``topology="verify"``: nothing is created or updated."""


@dataclass(frozen=True, slots=True)
class Permission:
    """One subject a user must be allowed to publish or subscribe to."""

    action: str
    """``publish`` or ``subscribe``."""
    subject: str
    purpose: str
    """What the app does with it (a comment in the config)."""
    needed_by: tuple[str, ...] = ()
    """Durables of the subscribers that cannot consume without it."""

    def covers(self, violation: Violation) -> bool:
        """Whether ``violation`` refuses (a subject of) this permission."""
        return violation.covered_by(self.action, self.subject)


@dataclass(frozen=True, slots=True)
class PermissionSet:
    """The permissions of some roles of one app, in a stable order."""

    env: str
    app: str
    roles: tuple[str, ...]
    permissions: tuple[Permission, ...] = field(default_factory=tuple)

    @property
    def publish(self) -> list[str]:
        """The subjects to allow publishing to."""
        return [p.subject for p in self.permissions if p.action == "publish"]

    @property
    def subscribe(self) -> list[str]:
        """The subjects to allow subscribing to."""
        return [p.subject for p in self.permissions if p.action == "subscribe"]

    def find(self, violation: Violation) -> Permission | None:
        """The permission ``violation`` refuses, exact subjects before wildcards."""
        covering = [p for p in self.permissions if p.covers(violation)]
        exact = [p for p in covering if p.subject.lower() == violation.subject]
        found = exact or covering
        return found[0] if found else None

    def without(self, permission: Permission) -> PermissionSet:
        """This set less one permission (to show what its absence breaks)."""
        kept = tuple(p for p in self.permissions if p != permission)
        return PermissionSet(self.env, self.app, self.roles, kept)

    def to_config(self) -> str:
        """The ``permissions { ... }`` block of a nats-server user, with one comment per
        subject saying what it is for."""
        lines = [
            f"# natspubsub permissions of app {self.app!r} in env {self.env!r}: "
            f"{', '.join(self.roles)}",
            "permissions {",
        ]
        for action in ("publish", "subscribe"):
            chosen = [p for p in self.permissions if p.action == action]
            if not chosen:  # no section would allow everything
                lines += [f"  {action} {{", '    deny = [">"]', "  }"]
                continue
            lines += [f"  {action} {{", "    allow = ["]
            lines += [f"      {_quoted(p.subject)}  # {p.purpose}" for p in chosen]
            lines += ["    ]", "  }"]
        lines.append("}")
        return "\n".join(lines) + "\n"


def _quoted(subject: str) -> str:
    # Quoted: an unquoted $JS... would be read as a variable by the config parser.
    return f'"{subject}"'


def permissions_for(access: AppAccess, roles: Iterable[str]) -> PermissionSet:
    """The permissions ``roles`` of the app need, each subject once."""
    chosen = tuple(dict.fromkeys(roles))
    unknown = [role for role in chosen if role not in ROLES]
    if unknown or not chosen:
        raise ConfigurationError(
            f"roles must be some of {', '.join(ROLES)}, not {', '.join(unknown) or 'none'}"
        )
    if "consumer" in chosen and not access.consumers:
        raise ConfigurationError(
            f"app {access.app!r} has no subscribers: the consumer role needs at least one"
        )
    builders = {
        "publisher": _publisher,
        "consumer": _consumer,
        "health": _health,
        "operator": _operator,
    }
    collected: list[Permission] = []
    for role in chosen:
        collected += builders[role](access)
    # The subscriptions the replies come to: every request and pull needs them.
    collected.append(
        Permission(
            "subscribe",
            f"{access.inbox_prefix}.>",
            "replies to requests and pulls (the app's inbox prefix)",
            tuple(c.durable for c in access.consumers),
        )
    )
    return PermissionSet(access.env, access.app, chosen, _merged(collected))


def _merged(permissions: Sequence[Permission]) -> tuple[Permission, ...]:
    """One permission per subject: the first purpose, every subscriber that needs it."""
    merged: dict[tuple[str, str], Permission] = {}
    for permission in permissions:
        key = (permission.action, permission.subject)
        known = merged.get(key)
        if known is None:
            merged[key] = permission
        else:
            needed = tuple(dict.fromkeys(known.needed_by + permission.needed_by))
            merged[key] = Permission(known.action, known.subject, known.purpose, needed)
    return tuple(merged.values())


def _stream(access: AppAccess, name: str, why: str) -> list[Permission]:
    found = [Permission("publish", f"{_API}.STREAM.INFO.{name}", f"start: find the stream ({why})")]
    if not access.verify_only:
        # Not $JS.API.STREAM.UPDATE: only a stream someone else made without the app's
        # subjects needs it, and the start names it then.
        found.append(Permission("publish", f"{_API}.STREAM.CREATE.{name}", "start: create it"))
    return found


def _publisher(access: AppAccess) -> list[Permission]:
    return [
        *_stream(access, access.own_stream, "the app's events"),
        Permission("publish", f"{access.env}.{access.app}.>", "publish the app's events"),
    ]


def _consumer(access: AppAccess) -> list[Permission]:
    found: list[Permission] = []
    for stream in access.start_streams:
        why = "dead letters" if stream == access.dlq_stream else "events the app reads"
        if stream == access.own_stream:
            why = "the app's events"
        found += _stream(access, stream, why)
    for consumer in access.consumers:
        found += _one_consumer(access, consumer)
    if access.kv_bucket is not None:
        readers = tuple(c.durable for c in access.consumers if c.inbox)
        bucket = access.kv_bucket
        kv_stream = f"KV_{bucket}"
        found += [
            Permission(
                "publish", f"{_API}.STREAM.INFO.{kv_stream}", "start: open the inbox bucket"
            ),
            *(
                []
                if access.verify_only
                else [
                    Permission(
                        "publish",
                        f"{_API}.STREAM.CREATE.{kv_stream}",
                        "start: create the inbox bucket",
                    )
                ]
            ),
            Permission("publish", f"{_API}.STREAM.MSG.GET.{kv_stream}", "read inbox keys", readers),
            Permission("publish", f"$KV.{bucket}.>", "claim and mark inbox keys", readers),
        ]
    return found


def _one_consumer(access: AppAccess, consumer: ConsumerAccess) -> list[Permission]:
    stream, durable, subject = consumer.stream, consumer.durable, consumer.filter_subject
    own = (durable,)
    found = [
        Permission(
            "publish",
            f"{_API}.CONSUMER.INFO.{stream}.{durable}",
            "start: find the consumer; check advisories",
            own,
        )
    ]
    if not access.verify_only:
        found.append(
            Permission(
                "publish",
                f"{_API}.CONSUMER.CREATE.{stream}.{durable}.{subject}",
                "start: create or update the consumer",
            )
        )
    found += [
        Permission("publish", f"{_API}.CONSUMER.MSG.NEXT.{stream}.{durable}", "pull events", own),
        Permission(
            "publish",
            f"$JS.ACK.{stream}.{durable}.>",
            "ack, NAK (retry), TERM (dead-lettered)",
            own,
        ),
    ]
    if access.dlq_stream is None:
        return found
    reader = reader_name(durable)
    return [
        *found,
        Permission(
            "publish",
            dlq_subject(access.dlq_prefix, subject),
            "dead-letter its events",
            own,
        ),
        Permission(
            "subscribe",
            advisory_subject(stream, durable),
            "hear when the server gives up on an event",
            own,
        ),
        Permission(
            "publish",
            f"{_API}.CONSUMER.CREATE.{stream}.{reader}.{subject}",
            "read the event an advisory names: reader with the same filter",
            own,
        ),
        Permission(
            "publish",
            f"{_API}.CONSUMER.MSG.NEXT.{stream}.{reader}",
            "read the event an advisory names",
            own,
        ),
        Permission("publish", f"{_API}.CONSUMER.DELETE.{stream}.{reader}", "remove the reader"),
    ]


def _health(access: AppAccess) -> list[Permission]:
    return [
        Permission("publish", f"{_API}.INFO", "health: JetStream answers"),
        *(
            Permission("publish", f"{_API}.STREAM.INFO.{stream}", "health: the stream")
            for stream in access.start_streams
        ),
        *(
            Permission(
                "publish",
                f"{_API}.CONSUMER.INFO.{c.stream}.{c.durable}",
                "health: the consumer's lag",
            )
            for c in access.consumers
        ),
    ]


def _operator(access: AppAccess) -> list[Permission]:
    own_streams = [access.own_stream, *([access.dlq_stream] if access.dlq_stream else [])]
    sources = list(dict.fromkeys(c.stream for c in access.consumers))
    found = [
        Permission("publish", f"{_API}.INFO", "health: JetStream answers"),
        Permission("publish", f"{_API}.STREAM.LIST", "topology show, health: the env's streams"),
        # The command finds an app's consumers by name on every stream of the env: it cannot
        # know which streams the app reads. Metadata only, like STREAM.LIST; no events.
        Permission(
            "publish", f"{_API}.CONSUMER.LIST.*", "topology show, health: the app's consumers"
        ),
    ]
    for stream in own_streams:
        found += [
            Permission("publish", f"{_API}.STREAM.INFO.{stream}", "dlq, health, topology ensure"),
            Permission("publish", f"{_API}.STREAM.CREATE.{stream}", "topology ensure"),
        ]
    found += [
        Permission(
            "publish",
            f"{_API}.CONSUMER.INFO.{c.stream}.{c.durable}",
            "health: the consumer's lag",
        )
        for c in access.consumers
    ]
    if access.dlq_stream is None:
        return found
    dlq = access.dlq_stream
    found += [
        Permission("publish", f"{_API}.STREAM.MSG.GET.{dlq}", "dlq ls, show, replay"),
        Permission("publish", f"{_API}.STREAM.MSG.DELETE.{dlq}", "dlq replay, purge --older-than"),
        Permission("publish", f"{_API}.STREAM.PURGE.{dlq}", "dlq purge"),
        Permission("publish", f"{_API}.STREAM.NAMES", "dlq replay: the stream of a subject"),
    ]
    found += [
        Permission("publish", c.filter_subject, "dlq replay: events back to their subject")
        for c in access.consumers
    ]
    found += [
        Permission(
            "publish",
            f"{_API}.STREAM.MSG.GET.{stream}",
            "dlq replay of a truncated record: its original",
        )
        for stream in sources
    ]
    return found
