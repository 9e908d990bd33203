"""The subject scheme ``<env>.<app>.<topic>`` and the names derived from it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import SubjectError

__all__ = (
    "ForeignApp",
    "SubjectParts",
    "build_subject",
    "consumer_name",
    "dlq_stream_name",
    "dlq_subject_prefix",
    "normalize_app",
    "normalize_env",
    "parse_subject",
    "stream_name",
    "validate_topic",
)

_ENV_RE = re.compile(r"[a-z0-9-]+")
_APP_INVALID_RE = re.compile(r"[^a-z0-9-]")
_TOPIC_PART_RE = re.compile(r"[a-z0-9_-]+")
# A subject token as another implementation may write it: printable ASCII without the
# subject separators and wildcards; '$' first is reserved for the server's own subjects.
_FOREIGN_TOKEN_RE = re.compile(r"[!-~]+")
_NOT_IN_TOKEN = frozenset(".*>")
_NOT_IN_STREAM_NAME = frozenset(".*>/\\")
# nats-server rejects longer consumer names on some file systems; keep well under it.
_MAX_CONSUMER_NAME = 120


@dataclass(frozen=True, slots=True)
class SubjectParts:
    """A subject split back into its three parts."""

    env: str
    app: str
    topic: str


@dataclass(frozen=True, slots=True)
class ForeignApp:
    """An app of another implementation (NatsPubsub 1.0, TypeScript or Ruby), addressed by
    its subject token exactly as it publishes it::

        @pubsub.subscriber("todo.created", app=ForeignApp("ToDoApp"))  # production.ToDoApp.…

    Own app names are normalised (``my_app`` publishes on ``…my-app…``); NatsPubsub 1.0 puts
    its app name into the subject unchanged, so ``app="my_app"`` would miss its events.
    """

    name: str
    """The subject token, exactly (``my_app``, ``ToDoApp``)."""
    stream: str | None = None
    """The stream that holds its events; ``None``: NatsPubsub 1.0's ``<env>-events-stream``."""

    def __post_init__(self) -> None:
        name = self.name
        if (
            not _FOREIGN_TOKEN_RE.fullmatch(name)
            or _NOT_IN_TOKEN & set(name)
            or name.startswith("$")
        ):
            raise SubjectError(
                f"invalid foreign app {name!r}: a subject token of printable characters "
                "without '.', '*', '>' or spaces, not starting with '$'"
            )
        stream = self.stream
        if stream is not None and (
            not _FOREIGN_TOKEN_RE.fullmatch(stream) or _NOT_IN_STREAM_NAME & set(stream)
        ):
            raise SubjectError(f"invalid stream name {stream!r}")

    def stream_for(self, env: str) -> str:
        """The stream holding this app's events in ``env``."""
        return self.stream or f"{normalize_env(env)}-events-stream"


def normalize_env(env: str) -> str:
    """Trim and lower-case ``env``; it must then match ``[a-z0-9-]+``."""
    value = env.strip().lower()
    if not _ENV_RE.fullmatch(value):
        raise SubjectError(f"invalid env {env!r}: use letters, digits and '-' only")
    return value


def normalize_app(app: str) -> str:
    """Trim and lower-case ``app``; every other character than ``[a-z0-9-]`` becomes ``-``."""
    value = _APP_INVALID_RE.sub("-", app.strip().lower())
    if not value:
        raise SubjectError(f"invalid app {app!r}: empty")
    return value


def validate_topic(topic: str) -> str:
    """Trim and lower-case ``topic`` and check each dot-separated part."""
    value = topic.strip().lower()
    if not value:
        raise SubjectError("invalid topic '': empty")
    parts = value.split(".")
    for index, part in enumerate(parts):
        if part == "":
            raise SubjectError(f"invalid topic {topic!r}: empty part at position {index + 1}")
        if part == ">":
            if index != len(parts) - 1:
                raise SubjectError(f"invalid topic {topic!r}: '>' must be the last part")
            continue
        if part == "*":
            continue
        if not _TOPIC_PART_RE.fullmatch(part):
            raise SubjectError(
                f"invalid topic part {part!r} in {topic!r}: use a-z, 0-9, '_', '-', '*' or '>'"
            )
    return value


def build_subject(env: str, app: str, topic: str) -> str:
    """Return ``<env>.<app>.<topic>``, normalised, or raise :class:`SubjectError`.

    >>> build_subject("Production", "Orders Service", "order.created")
    'production.orders-service.order.created'
    """
    return f"{normalize_env(env)}.{normalize_app(app)}.{validate_topic(topic)}"


def parse_subject(subject: str) -> SubjectParts:
    """Split a subject built by :func:`build_subject` into env, app and topic."""
    parts = subject.split(".", 2)
    if len(parts) != 3 or not all(parts):
        raise SubjectError(f"invalid subject {subject!r}: expected '<env>.<app>.<topic>'")
    env, app, topic = parts
    return SubjectParts(env=env, app=app, topic=topic)


def stream_name(env: str, app: str) -> str:
    """The main stream holding ``<env>.<app>.>``: ``<ENV>_<APP>``.

    ``_`` never occurs inside a normalised env or app, so two pairs cannot share a name.
    Names containing ``dlq`` are refused: that token marks dead-letter streams only.
    """
    env_part, app_part = normalize_env(env), normalize_app(app)
    for kind, value in (("env", env_part), ("app", app_part)):
        if "dlq" in value:
            raise SubjectError(
                f"invalid {kind} {value!r}: 'dlq' is reserved for dead-letter streams"
            )
    return f"{env_part}_{app_part}".upper()


def dlq_stream_name(env: str, app: str) -> str:
    """The dead-letter stream of the consuming ``app``."""
    return f"DLQ_{stream_name(env, app)}"


def dlq_subject_prefix(env: str, app: str) -> str:
    """DLQ subjects start with the token ``dlq``, so they can never fall into a main stream."""
    return f"dlq.{normalize_env(env)}.{normalize_app(app)}"


def consumer_name(subscribing_app: str, subject: str) -> str:
    """Deterministic durable name for ``subscribing_app`` reading ``subject``.

    Readable prefix plus a short hash of the exact subject: ``order.created`` and
    ``order_created`` would otherwise map to the same name.
    """
    app = normalize_app(subscribing_app)
    readable = subject.replace("*", "any").replace(">", "all").replace(".", "_")
    digest = hashlib.sha256(f"{app}|{subject}".encode()).hexdigest()[:8]
    name = f"{app}__{readable}"[: _MAX_CONSUMER_NAME - 9]
    return f"{name}_{digest}"
