"""Every error the package raises, under one root.

NatsPubsubError
├── SubjectError (ValueError)          invalid env, app or topic
├── EnvelopeError (ValueError)         a payload that cannot be an envelope
│   └── MessageTooLargeError           the encoded message exceeds the size limit
├── PublishError                       the server did not store the event
├── TopologyError                      a stream or consumer could not be declared
├── MissingExtraError (ImportError)    an optional feature whose extra is not installed
├── PermanentError                     raise in a handler: no retry, straight to the DLQ
└── RetryLater                         raise in a handler: retry after ``delay`` seconds
"""

from __future__ import annotations

__all__ = (
    "EnvelopeError",
    "MessageTooLargeError",
    "MissingExtraError",
    "NatsPubsubError",
    "PermanentError",
    "PublishError",
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


class TopologyError(NatsPubsubError):
    """A stream or consumer the application needs could not be declared."""


class MissingExtraError(NatsPubsubError, ImportError):
    """An optional feature needs an extra that is not installed; the message names it."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        super().__init__(
            f"{module} is missing: install the {extra!r} extra, "
            f"pip install 'faststream-natspubsub[{extra}]'",
            name=module,
        )


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
