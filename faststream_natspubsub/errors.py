"""Every error the package raises, under one root.

NatsPubsubError
├── ConfigurationError (ValueError)    a facade or subscriber set up in a way that cannot work
├── SubjectError (ValueError)          invalid env, app or topic
├── EnvelopeError (ValueError)         a payload that cannot be an envelope
│   ├── MessageTooLargeError           the encoded message exceeds the size limit
│   └── MalformedEnvelopeError         received bytes that are not a readable envelope
├── PublishError                       the server did not store the event
│   ├── DeadLetterQueueFullError       the DLQ stream is at its limits and refuses records
│   └── PermissionDeniedError          the server refused a publish or subscription: no permission
├── TopologyError                      the app cannot start: its topology or a permission it needs
├── DeadLetterNotFoundError (LookupError)   no dead-letter record matches
├── DeadLetterRecordError (ValueError)  a DLQ entry is not a readable dead-letter record
├── ReplayRefusedError                 a record that replay must not publish
│   └── RecordTruncatedError           only the head of the original bytes was kept
├── HostVersionError (RuntimeError)    FastStream / nats-py / OpenTelemetry not as supported
├── MissingExtraError (ImportError)    an optional feature whose extra is not installed
├── PermanentError                     raise in a handler: no retry, straight to the DLQ
├── RetryLater                         raise in a handler: retry after ``delay`` seconds
└── BatchFailure                       raise in a batch handler: which items failed

``HostVersionError`` lives in :mod:`faststream_natspubsub.compat`, next to the accesses that
raise it; every other class is defined here.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = (
    "BatchFailure",
    "ConfigurationError",
    "DeadLetterNotFoundError",
    "DeadLetterQueueFullError",
    "DeadLetterRecordError",
    "EnvelopeError",
    "MalformedEnvelopeError",
    "MessageTooLargeError",
    "MissingExtraError",
    "NatsPubsubError",
    "PermanentError",
    "PermissionDeniedError",
    "PublishError",
    "RecordTruncatedError",
    "ReplayRefusedError",
    "RetryLater",
    "SubjectError",
    "TopologyError",
)


class NatsPubsubError(Exception):
    """Root of every error raised by faststream-natspubsub."""


class ConfigurationError(NatsPubsubError, ValueError):
    """A facade, subscriber or publisher is set up in a way that cannot work.

    Raised when it is set up (registration, broker start), never while events flow; the
    message says what to do instead.
    """


class SubjectError(NatsPubsubError, ValueError):
    """An env, app or topic does not fit the ``<env>.<app>.<topic>`` scheme."""


class EnvelopeError(NatsPubsubError, ValueError):
    """A message cannot be wrapped in, or read from, an envelope."""


class MessageTooLargeError(EnvelopeError):
    """The encoded message is larger than the limit, even with optional metadata removed."""

    def __init__(self, size: int, limit: int, *, headers: int = 0) -> None:
        self.size = size
        """Bytes counted against the limit (with ``headers`` when that is not 0)."""
        self.limit = limit
        self.headers = headers
        """Header bytes counted in ``size``: 0 for the codec's limit, which counts the body."""
        counted = f" with {headers} bytes of headers" if headers else ""
        over = "the server's max_payload" if headers else "the limit"
        super().__init__(
            f"encoded message is {size} bytes{counted}, over {over} of {limit} bytes "
            "(optional metadata was already dropped)"
        )


class MalformedEnvelopeError(EnvelopeError):
    """Received bytes are not a readable envelope; retrying cannot help."""


class PublishError(NatsPubsubError):
    """JetStream did not acknowledge a publish, after the bounded retries."""


class DeadLetterQueueFullError(PublishError):
    """The DLQ stream reached its ``max_msgs`` or ``max_bytes`` and refuses new records.

    The event is not lost: it stays in its own stream and is delivered again later.
    """


class PermissionDeniedError(PublishError):
    """The server refused a publish (a JetStream request is one) or a subscription: the
    user it was made as lacks the permission.

    nats-server answers a refused publish with nothing but an error on the connection, so
    without this a refused request would wait out its timeout. ``action`` is ``"publish"``
    or ``"subscribe"``; ``subject`` is the subject the server named (nats-py hands it over
    lower-cased, so it is given in the case the package used when it knows the subject).
    """

    def __init__(self, action: str, subject: str, *, what: str = "") -> None:
        self.action = action
        self.subject = subject
        verb = "publish to" if action == "publish" else "subscribe to"
        prefix = f"{what}: " if what else ""
        super().__init__(
            f'{prefix}permission denied: the user may not {verb} "{subject}" (add it to the '
            f"user's {action} allow list; `natspubsub permissions` prints what an app needs)"
        )


class TopologyError(NatsPubsubError):
    """A stream or consumer the application needs could not be declared or verified, or the
    server refuses a permission the app needs (the message names each one)."""


class DeadLetterNotFoundError(NatsPubsubError, LookupError):
    """No dead-letter record has that event id or sequence."""


class MissingExtraError(NatsPubsubError, ImportError):
    """An optional feature needs an extra that is not installed; the message names it."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        super().__init__(
            f"{module} is missing: install the {extra!r} extra, "
            f"pip install 'faststream-natspubsub[{extra}]'",
            name=module,
        )


class DeadLetterRecordError(NatsPubsubError, ValueError):
    """A message in a DLQ stream is not a dead-letter record this package can read.

    Every field of a record is untrusted: anyone allowed to publish on the DLQ's subjects
    can store anything there.
    """


class ReplayRefusedError(NatsPubsubError):
    """Replay refused a record: its subject, body or headers are not safe to publish."""


class RecordTruncatedError(ReplayRefusedError):
    """The record keeps only the head of the original bytes (the event was too large), and
    the original is no longer in its stream (or no longer matches the record's hash)."""


class PermanentError(NatsPubsubError):
    """Raise from a handler when retrying cannot help: the event goes to the DLQ at once."""


class RetryLater(NatsPubsubError):  # noqa: N818 - reads as an instruction, like dramatiq's Retry
    """Raise from a handler to have the event delivered again after ``delay`` seconds.

    ``delay=None`` uses the retry policy's delay for this attempt.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and delay < 0:
            raise ValueError("delay must be >= 0")
        self.delay = delay
        super().__init__(reason or f"retry later (delay={delay})")


class BatchFailure(NatsPubsubError):  # noqa: N818 - reads as what the handler reports
    """Raise from a batch handler to say which items failed; the others are acknowledged.

    Keys are positions in the list the handler received, or event ids. Each failed item
    follows the retry policy on its own (delayed NAK, or the DLQ when permanent or out of
    attempts), exactly as in per-message mode::

        raise BatchFailure({3: ValueError("bad sku"), "evt-9": ConnectionError()})
    """

    def __init__(self, failures: Mapping[int | str, BaseException]) -> None:
        self.failures = dict(failures)
        super().__init__(f"{len(self.failures)} item(s) of the batch failed")


def one_line(exc: BaseException, limit: int) -> str:
    """``exc``'s message on one line, cut to ``limit`` characters (for logs and health)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
