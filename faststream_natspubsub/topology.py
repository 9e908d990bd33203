"""Streams and consumers, declared create-or-update without undoing an operator's changes,
or only verified when an operator owns the topology.

FastStream's own ``stream="NAME"`` rewrites an existing stream with its defaults (max_age,
duplicate window...). Here a stream that exists keeps its settings; only subjects this
application needs and that are missing are added. A consumer that exists keeps every
setting except those the package owns (:data:`CONSUMER_OWNED_SETTINGS`), which its retry
policy and ``ack_wait`` decide; ``max_ack_pending``, ``max_waiting``, descriptions and the
rest stay as an operator set them.

In verify mode (``NatsPubsub(..., topology="verify")``) nothing is created or updated:
:meth:`Topology.verify` lists every difference between what the app needs and what the
server has, and :class:`TopologyError` shows them all at start.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError

from .errors import TopologyError

if TYPE_CHECKING:
    from nats.js import JetStreamManager
    from nats.js.api import StreamInfo

__all__ = (
    "CONSUMER_OWNED_SETTINGS",
    "DEFAULT_DUPLICATE_WINDOW",
    "ConsumerSpec",
    "StreamSettings",
    "StreamSpec",
    "Topology",
    "ensure_consumer",
    "ensure_stream",
    "verify_consumer",
    "verify_stream",
)

logger = logging.getLogger("faststream_natspubsub.topology")

# JetStream's own default: a re-publish within two minutes is recognised as a duplicate.
DEFAULT_DUPLICATE_WINDOW: Final = 120.0
# Times a JetStream API request that got no answer is asked again while declaring: in a
# cluster, a stream or consumer just created (by this process or by another instance
# starting at the same moment) answers only once its leader is elected.
UNANSWERED_RETRIES: Final = 3

T = TypeVar("T")
# The consumer settings the package decides and updates on an existing consumer. The
# others (max_ack_pending, max_waiting, inactive_threshold, description, metadata, ...)
# belong to whoever operates the server.
CONSUMER_OWNED_SETTINGS: Final = (
    "filter_subject",
    "ack_policy",
    "ack_wait",
    "max_deliver",
    "backoff",
)
# ack_wait travels in nanoseconds; closer than this is the same.
_ACK_WAIT_TOLERANCE: Final = 0.001
# Server error code for "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE: Final = 10058


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    """Settings for streams this package creates. An existing stream keeps its own."""

    replicas: int = 1
    """Copies of every message; use 3 on a cluster for durability."""
    max_age: float | None = None
    """Seconds a message is kept; ``None`` keeps messages until other limits apply."""
    max_bytes: int | None = None
    """Size limit of the stream in bytes; ``None`` for no limit."""
    max_msgs: int | None = None
    """Message count limit of the stream; ``None`` for no limit."""
    discard: DiscardPolicy = DiscardPolicy.OLD
    """At a limit: drop the oldest messages (``OLD``) or refuse new ones (``NEW``, the DLQ's:
    a refused dead-letter write leaves the event in its stream, nothing is lost)."""
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW
    """Seconds during which a repeated ``Nats-Msg-Id`` is recognised and not stored again."""
    storage: StorageType = StorageType.FILE
    """File (durable) or memory storage."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSpec:
    """A stream this application needs and the subjects it must hold."""

    name: str
    subjects: tuple[str, ...]
    settings: StreamSettings = field(default_factory=StreamSettings)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSpec:
    """A durable pull consumer this application reads from."""

    stream: str
    durable: str
    filter_subject: str
    ack_wait: float
    max_deliver: int
    max_ack_pending: int | None = None

    def config(self) -> ConsumerConfig:
        """The nats-py consumer config; no ``backoff`` list: delays are set per NAK."""
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
        )


async def _answered(request: Callable[[], Awaitable[T]], about: str) -> T:
    """``request()``, asked again when the server does not answer in time (see
    :data:`UNANSWERED_RETRIES`); still no answer: :class:`TopologyError` naming ``about``."""
    for _ in range(UNANSWERED_RETRIES):
        try:
            return await request()
        except NatsTimeoutError:
            logger.info("no answer about %s in time (a leader being elected?): asking again", about)
    try:
        return await request()
    except NatsTimeoutError as exc:
        raise TopologyError(
            f"the server did not answer about {about} ({UNANSWERED_RETRIES + 1} requests "
            "timed out): is JetStream enabled and does the cluster have a leader?"
        ) from exc


async def ensure_stream(jsm: JetStreamManager, spec: StreamSpec) -> StreamInfo:
    """Create the stream, or add the subjects it lacks; never change its other settings."""
    about = f"stream {spec.name!r}"
    try:
        info = await _answered(lambda: jsm.stream_info(spec.name), about)
    except NotFoundError:
        try:
            return await _answered(lambda: jsm.add_stream(_new_stream_config(spec)), about)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:  # another process created it first
                raise _topology_error(f"cannot create stream {spec.name!r}", exc) from exc
            info = await _answered(lambda: jsm.stream_info(spec.name), about)
        except APIError as exc:
            raise _topology_error(f"cannot create stream {spec.name!r}", exc) from exc
    current = list(info.config.subjects or ())
    missing = [subject for subject in spec.subjects if subject not in current]
    if not missing:
        return info
    info.config.subjects = current + missing
    logger.info("adding subjects %s to stream %s", missing, spec.name)
    try:
        return await jsm.update_stream(info.config)
    except APIError as exc:
        raise _topology_error(f"cannot add subjects {missing} to {spec.name!r}", exc) from exc


async def ensure_consumer(jsm: JetStreamManager, spec: ConsumerSpec) -> None:
    """Create the durable consumer, or update only the settings this package owns."""
    about = f"consumer {spec.durable!r} on stream {spec.stream!r}"
    try:
        try:
            info = await _answered(lambda: jsm.consumer_info(spec.stream, spec.durable), about)
        except NotFoundError:
            await _answered(lambda: jsm.add_consumer(spec.stream, spec.config()), about)
            return
        if not _owned_differences(spec, info.config):
            return
        config = dataclasses.replace(
            info.config,
            filter_subject=spec.filter_subject,
            filter_subjects=None,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait,
            max_deliver=spec.max_deliver,
            backoff=None,
        )
        logger.info(
            "updating consumer %s on %s: %s",
            spec.durable,
            spec.stream,
            "; ".join(_owned_differences(spec, info.config)),
        )
        await jsm.add_consumer(spec.stream, config)
    except APIError as exc:
        raise _topology_error(
            f"cannot declare consumer {spec.durable!r} on stream {spec.stream!r}", exc
        ) from exc


async def verify_stream(jsm: JetStreamManager, spec: StreamSpec) -> list[str]:
    """How the stream on the server falls short of ``spec`` (empty: it is fine)."""
    try:
        info = await jsm.stream_info(spec.name)
    except NotFoundError:
        return [f"stream {spec.name} is missing (it must hold {', '.join(spec.subjects)})"]
    held = list(info.config.subjects or ())
    missing = [s for s in spec.subjects if not any(_covers(h, s) for h in held)]
    if missing:
        return [
            f"stream {spec.name} does not hold {', '.join(missing)} "
            f"(its subjects: {', '.join(held) or 'none'})"
        ]
    return []


async def verify_consumer(jsm: JetStreamManager, spec: ConsumerSpec) -> list[str]:
    """How the consumer on the server differs from ``spec`` in the settings the app needs."""
    try:
        info = await jsm.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        return [
            f"consumer {spec.durable} on stream {spec.stream} is missing "
            f"(filter {spec.filter_subject}, explicit ack, ack_wait {spec.ack_wait:g}s, "
            f"max_deliver {spec.max_deliver})"
        ]
    return [
        f"consumer {spec.durable} on stream {spec.stream}: {difference}"
        for difference in _owned_differences(spec, info.config)
    ]


def _owned_differences(spec: ConsumerSpec, config: ConsumerConfig) -> list[str]:
    found = []
    filters = [config.filter_subject] if config.filter_subject else []
    filters += list(config.filter_subjects or ())
    if filters != [spec.filter_subject]:
        found.append(
            f"filter is {', '.join(filters) or 'none'}, the app reads {spec.filter_subject}"
        )
    if config.ack_policy not in (AckPolicy.EXPLICIT, AckPolicy.EXPLICIT.value):
        found.append(f"ack_policy is {_text(config.ack_policy)}, the app needs explicit")
    if config.ack_wait is None or abs(config.ack_wait - spec.ack_wait) > _ACK_WAIT_TOLERANCE:
        found.append(f"ack_wait is {_seconds(config.ack_wait)}, the app needs {spec.ack_wait:g}s")
    if config.max_deliver != spec.max_deliver:
        found.append(
            f"max_deliver is {config.max_deliver}, the app needs {spec.max_deliver} "
            "(RetryPolicy.max_attempts plus headroom)"
        )
    if config.backoff:
        found.append("has a backoff list, the app needs none (delays are set per NAK)")
    return found


def _covers(held: str, needed: str) -> bool:
    """Whether stream subject ``held`` holds every subject that ``needed`` matches."""
    have, want = held.split("."), needed.split(".")
    for index, part in enumerate(have):
        if part == ">":
            return len(want) > index
        if index >= len(want) or want[index] == ">":
            return False
        if part not in ("*", want[index]):
            return False
    return len(have) == len(want)


def _seconds(value: float | None) -> str:
    return "unset" if value is None else f"{value:g}s"


def _text(value: object) -> str:
    return str(getattr(value, "value", value))


class Topology:
    """Everything one application declares, collected while subscribers are registered."""

    def __init__(self) -> None:
        self.streams: dict[str, StreamSpec] = {}
        self.consumers: dict[tuple[str, str], ConsumerSpec] = {}

    def add_stream(self, spec: StreamSpec) -> None:
        """Remember a stream; subjects of repeated declarations are merged."""
        known = self.streams.get(spec.name)
        if known is not None:
            subjects = known.subjects + tuple(s for s in spec.subjects if s not in known.subjects)
            spec = StreamSpec(name=spec.name, subjects=subjects, settings=known.settings)
        self.streams[spec.name] = spec

    def add_consumer(self, spec: ConsumerSpec) -> None:
        """Remember a consumer; a durable may be declared once.

        Two subscribers on one durable would silently split its events between them.
        """
        key = (spec.stream, spec.durable)
        if key in self.consumers:
            raise TopologyError(
                f"durable consumer {spec.durable!r} is already used by another subscriber of "
                f"{spec.filter_subject!r}; pass durable=... to give this one its own, or add "
                "several handlers to one subscriber with filters"
            )
        self.consumers[key] = spec

    async def declare(self, jsm: JetStreamManager) -> None:
        """Declare every stream, then every consumer."""
        for stream in self.streams.values():
            await ensure_stream(jsm, stream)
        for consumer in self.consumers.values():
            await ensure_consumer(jsm, consumer)

    async def verify(self, jsm: JetStreamManager) -> None:
        """Check every stream and consumer; :class:`TopologyError` lists all differences."""
        differences: list[str] = []
        try:
            for stream in self.streams.values():
                differences += await verify_stream(jsm, stream)
            for consumer in self.consumers.values():
                differences += await verify_consumer(jsm, consumer)
        except (APIError, NatsError, TimeoutError) as exc:
            raise TopologyError(f"cannot read the topology to verify it: {exc!r}") from exc
        if differences:
            raise TopologyError(
                'the topology on the server does not fit the app (topology="verify" '
                "creates and changes nothing):\n- " + "\n- ".join(differences)
            )

    def needed(self, *, own: str, dlq: str | None, publishes: bool) -> Topology:
        """The part one app's roles use: its consumers' streams, its own stream ``own`` when
        it publishes (or has no consumers at all), its DLQ stream ``dlq`` when it consumes."""
        read = {consumer.stream for consumer in self.consumers.values()}
        needed = Topology()
        for name, spec in self.streams.items():
            if name == own and not (publishes or not self.consumers or own in read):
                continue
            if name == dlq and not self.consumers:
                continue
            needed.streams[name] = spec
        needed.consumers = dict(self.consumers)
        return needed


def _new_stream_config(spec: StreamSpec) -> StreamConfig:
    settings = spec.settings
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        # Limits retention: every consuming app gets every event (fan-out).
        retention=RetentionPolicy.LIMITS,
        discard=settings.discard,
        storage=settings.storage,
        num_replicas=settings.replicas,
        max_age=settings.max_age,
        max_bytes=settings.max_bytes,
        max_msgs=settings.max_msgs,
        duplicate_window=settings.duplicate_window,
    )


def _topology_error(what: str, exc: APIError) -> TopologyError:
    detail = exc.description or str(exc)
    if "overlap" in detail:
        detail += (
            " (another stream already holds these subjects, for example a NatsPubsub 1.0 "
            "'<env>-events-stream'; remove it or move its subjects first)"
        )
    return TopologyError(f"{what}: {detail}")
