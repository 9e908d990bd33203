"""What an app declares: its streams, its consumers, and the FastStream subscribers and
publishers that speak in topics.

The facade manages the stream, the consumer config and the acknowledgement of its
subscribers; FastStream keyword arguments that would take those over are refused when the
subscriber is registered, with what to do instead, rather than failing at broker start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from faststream import AckPolicy
from faststream.nats import JStream, PullSub
from nats.js.api import AckPolicy as ServerAckPolicy
from nats.js.api import ConsumerConfig

from .errors import ConfigurationError, SubjectError, TopologyError
from .inbox_prefix import DEFAULT_INBOX_PREFIX
from .subjects import (
    ForeignApp,
    build_subject,
    consumer_name,
    normalize_app,
    stream_name,
    validate_topic,
)
from .topology import ConsumerSpec, StreamSpec, Topology

if TYPE_CHECKING:
    from faststream.nats.broker.registrator import NatsRegistrator

    from .batch import BatchSettings
    from .retry import RetryPolicy
    from .topology import StreamSettings

__all__ = ("DEFAULT_FETCH_TIMEOUT", "Declarations", "Registrar", "SubscriberDeclaration")

# Seconds a pull waits for messages before asking again.
DEFAULT_FETCH_TIMEOUT: Final = 5.0
# FastStream needs a PullSub to make a pull subscriber; the package's own dispatch does the
# fetching (see dispatch.py), so these values are not used.
_UNUSED_PULL_SUB: Final = PullSub(batch_size=1, timeout=DEFAULT_FETCH_TIMEOUT)
# Topics whose checked subject is remembered (per app; topics are few in practice).
_SUBJECT_CACHE_LIMIT: Final = 10_000

_STREAM_HINT: Final = (
    "the facade declares the stream that holds the topic (create-or-update); set how it "
    "creates streams with NatsPubsub(..., streams=StreamSettings(...))"
)
_ACK_HINT: Final = (
    "the facade acknowledges, retries and dead-letters each event itself; raise "
    "PermanentError or RetryLater in the handler to steer it"
)
_PULL_HINT: Final = (
    "NatsPubsub subscribers are durable pull consumers; every instance of an app shares its "
    "consumer"
)
# FastStream subscriber arguments the facade manages, and what to do instead.
_MANAGED_SUBSCRIBER_ARGUMENTS: Final = {
    "stream": _STREAM_HINT,
    "subject": "the subject is <env>.<app>.<topic>: pass the topic, and app=... for another app",
    "subjects": "one subscriber per topic; wildcards (*, >) are allowed in the topic",
    "config": "the facade declares the consumer; use ack_wait=... and max_workers=...",
    "ack_policy": _ACK_HINT,
    "ack_first": _ACK_HINT,
    "deliver_policy": "a new consumer starts with every event its stream holds",
    "queue": _PULL_HINT,
    "ordered_consumer": _PULL_HINT,
    "flow_control": _PULL_HINT,
    "idle_heartbeat": _PULL_HINT,
    "headers_only": "handlers receive the event's message, which is in the body",
    "kv_watch": "a subscriber reads events, not a key-value bucket",
    "obj_watch": "a subscriber reads events, not an object store",
    "inbox_prefix": (
        "one per app: NatsPubsub(..., inbox_prefix=...) (or NatsBroker(inbox_prefix=...)) "
        "gives it to the connection and every subscriber"
    ),
}
_MANAGED_PUBLISHER_ARGUMENTS: Final = {
    "stream": _STREAM_HINT,
    "subject": "the subject is <env>.<app>.<topic>: pass the topic",
}


Registrar: TypeAlias = "NatsRegistrator"
"""A broker or a router: where FastStream subscribers and publishers are registered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberDeclaration:
    """A subscriber as the app declares it: where its events are and how they are pulled."""

    subject: str
    consumer: ConsumerSpec
    kwargs: dict[str, Any]
    """The FastStream ``subscriber`` arguments."""
    fetch_ahead: bool
    """The package's dispatch fetches and runs the handlers (not FastStream's pull loop)."""


class Declarations:
    """The streams and consumers one app needs, collected as its subscribers are declared."""

    def __init__(
        self,
        *,
        env: str,
        app: str,
        retry: RetryPolicy,
        stream_settings: StreamSettings,
        topology: Topology,
    ) -> None:
        self.env = env
        self.app = app
        self.retry = retry
        self.stream_settings = stream_settings
        self.topology = topology
        self.stream = self.declare_stream(app)
        self.dlq_stream: str | None = None
        """The app's DLQ stream (set by the facade when it has one)."""
        self.publishes = False
        """A FastStream publisher of the app is registered (its return values publish)."""
        self.inbox_prefix = DEFAULT_INBOX_PREFIX
        """Where the replies to the app's requests and pulls go (set by the facade)."""
        self._subjects: dict[str, str] = {}

    def needed(self) -> Topology:
        """The part of the topology the app's roles use: the streams its consumers read, its
        own stream when it publishes (or has no consumers), its DLQ stream when it consumes."""
        return self.topology.needed(own=self.stream, dlq=self.dlq_stream, publishes=self.publishes)

    def own_stream_only(self) -> Topology:
        """A topology of the app's own stream alone."""
        own = Topology()
        own.add_stream(self.topology.streams[self.stream])
        return own

    def declare_stream(self, app: str, *, name: str | None = None) -> str:
        """The stream holding ``<env>.<app>.>``, declared (create-or-update) at start."""
        name = name or stream_name(self.env, app)
        subjects = (f"{self.env}.{app}.>",)
        self.topology.add_stream(
            StreamSpec(name=name, subjects=subjects, settings=self.stream_settings)
        )
        return name

    def source(self, topic: str, app: str | ForeignApp | None) -> tuple[str, str]:
        """The subject of ``topic`` of ``app`` (this app if None) and the stream holding it."""
        if isinstance(app, ForeignApp):
            subject = f"{self.env}.{app.name}.{validate_topic(topic)}"
            return subject, self.declare_stream(app.name, name=app.stream_for(self.env))
        source_app = normalize_app(app) if app is not None else self.app
        return build_subject(self.env, source_app, topic), self.declare_stream(source_app)

    def subscriber(
        self,
        topic: str,
        *,
        app: str | ForeignApp | None,
        ack_wait: float,
        max_workers: int,
        batch: BatchSettings | None,
        extra: dict[str, Any],
        ordered: bool = False,
    ) -> SubscriberDeclaration:
        """Check the arguments and declare the consumer of a subscriber to ``topic``.

        ``ordered``: an ``order_by`` was given, which needs the package's own dispatch.
        """
        _refuse_managed(f"subscriber({topic!r})", extra, _MANAGED_SUBSCRIBER_ARGUMENTS)
        if batch is not None and max_workers != 1:
            raise ConfigurationError("batch subscribers handle one batch at a time: max_workers=1")
        if max_workers < 1:
            raise ConfigurationError(f"max_workers must be at least 1, not {max_workers!r}")
        # Without a pull_sub of the caller's, the package's dispatch fetches and dispatches.
        fetch_ahead = batch is None and "pull_sub" not in extra
        if ordered and not fetch_ahead:
            raise ConfigurationError(
                "order_by needs the package's own fetching: pass no pull_sub and no batch"
            )
        if ack_wait <= 0:
            raise ConfigurationError(f"ack_wait must be positive seconds, not {ack_wait!r}")
        subject, stream = self.source(topic, app)
        durable = extra.pop("durable", None) or consumer_name(self.app, subject)
        consumer = ConsumerSpec(
            stream=stream,
            durable=durable,
            filter_subject=subject,
            ack_wait=ack_wait,
            max_deliver=self.retry.max_deliver,
        )
        try:
            self.topology.add_consumer(consumer)
        except TopologyError as exc:
            raise ConfigurationError(str(exc)) from None
        kwargs: dict[str, Any] = {
            "stream": JStream(stream, declare=False),
            "durable": durable,
            "config": ConsumerConfig(
                ack_policy=ServerAckPolicy.EXPLICIT,
                ack_wait=ack_wait,
                max_deliver=consumer.max_deliver,
            ),
            "pull_sub": (
                PullSub(batch_size=batch.max_messages, timeout=batch.max_wait, batch=True)
                if batch is not None
                else _UNUSED_PULL_SUB
            ),
            # With the package's dispatch FastStream runs one loop; the dispatch has the workers.
            "max_workers": 1 if fetch_ahead else max_workers,
            # Pulled messages come to the app's reply prefix, not FastStream's _INBOX.
            "inbox_prefix": f"{self.inbox_prefix}.".encode(),
            # A safety net only: the facade's middleware decides ack, NAK or DLQ itself.
            "ack_policy": AckPolicy.NACK_ON_ERROR,
        }
        kwargs.update(extra)
        return SubscriberDeclaration(
            subject=subject, consumer=consumer, kwargs=kwargs, fetch_ahead=fetch_ahead
        )

    def publisher(self, topic: str, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The subject and FastStream ``publisher`` arguments for this app's ``topic``."""
        _refuse_managed(f"publisher({topic!r})", extra, _MANAGED_PUBLISHER_ARGUMENTS)
        self.publishes = True
        kwargs: dict[str, Any] = {"stream": JStream(self.stream, declare=False)}
        kwargs.update(extra)
        return self.subject_for(topic), kwargs

    def subject_for(self, topic: str) -> str:
        """The subject this app publishes ``topic`` on; wildcards are refused."""
        subject = self._subjects.get(topic)
        if subject is None:
            subject = build_subject(self.env, self.app, topic)
            if "*" in subject or ">" in subject:
                raise SubjectError(f"cannot publish to wildcard topic {topic!r}")
            if len(self._subjects) < _SUBJECT_CACHE_LIMIT:
                self._subjects[topic] = subject
        return subject


def _refuse_managed(what: str, kwargs: dict[str, Any], managed: dict[str, str]) -> None:
    for name, hint in managed.items():
        if name in kwargs:
            raise ConfigurationError(f"{what}: {name}= is managed by NatsPubsub: {hint}")
