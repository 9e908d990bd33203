"""Every error the package raises, under one root.

NatsPubsubError
├── SubjectError (ValueError)          invalid env, app or topic
├── EnvelopeError (ValueError)         a payload that cannot be an envelope
│   └── MessageTooLargeError           the encoded message exceeds the size limit
├── PublishError                       the server did not store the event
│   └── DeadLetterQueueFullError       the DLQ stream is at its limits and refuses records
├── TopologyError                      a stream or consumer could not be declared
├── DeadLetterRecordError (ValueError)  a DLQ entry is not a readable dead-letter record
├── ReplayRefusedError                 a record that replay must not publish
│   └── RecordTruncatedError           only the head of the original bytes was kept
├── PermanentError                     raise in a handler: no retry, straight to the DLQ
└── RetryLater                         raise in a handler: retry after ``delay`` seconds
"""

from __future__ import annotations

__all__ = (
    "DeadLetterQueueFullError",
    "DeadLetterRecordError",
    "EnvelopeError",
    "MessageTooLargeError",
    "NatsPubsubError",
    "PermanentError",
    "PublishError",
    "RecordTruncatedError",
    "ReplayRefusedError",
    "RetryLater",
    "SubjectError",
    "TopologyError",
)


class NatsPubsubError(Exception):
    """Root of every error raised by faststream-natspubsub."""


class SubjectError(NatsPubsubError, ValueError):
    """An env, app or topic does not fit the ``<env>.<app>.<topic>`` scheme."""


class EnvelopeError(NatsPubsubError, ValueError):
    """A message cannot be wrapped in, or read from, an envelope."""


class MessageTooLargeError(EnvelopeError):
    """The encoded message is larger than the limit, even with optional metadata removed."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"encoded message is {size} bytes, over the limit of {limit} bytes "
            "(optional metadata was already dropped)"
        )


class PublishError(NatsPubsubError):
    """JetStream did not acknowledge a publish, after the bounded retries."""


class DeadLetterQueueFullError(PublishError):
    """The DLQ stream reached its ``max_msgs`` or ``max_bytes`` and refuses new records.

    The event is not lost: it stays in its own stream and is delivered again later.
    """


class TopologyError(NatsPubsubError):
    """A stream or consumer the application needs could not be declared."""


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
