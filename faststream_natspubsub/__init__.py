"""NatsPubsub conventions for FastStream on NATS JetStream.

Envelope, ``<env>.<app>.<topic>`` subjects, retries with backoff, a dead-letter queue and
metadata for handlers, installed on a FastStream ``NatsBroker`` by :class:`NatsPubsub`.
"""

from .annotations import CurrentEnvelope, EventMetadata
from .asyncapi import AsyncAPI
from .batch import BatchFailure, BatchMetadata, BatchSettings
from .codecs import (
    Codec,
    EncodedMessage,
    JsonCodec,
    MsgpackCodec,
    ProtobufCodec,
    ProtobufMessage,
)
from .dlq import DeadLetterReason, DeadLetterRecord
from .dlq_admin import DeadLetterNotFoundError, DeadLetterQueue
from .envelope import Envelope, EnvelopeCodec, MalformedEnvelopeError
from .errors import (
    EnvelopeError,
    MessageTooLargeError,
    MissingExtraError,
    NatsPubsubError,
    PermanentError,
    PublishError,
    RetryLater,
    SubjectError,
    TopologyError,
)
from .facade import NatsPubsub, PubsubRouter
from .inbox import ClaimResult, InboxStore, KvInboxStore, LeaseReporter, MemoryInboxStore
from .middlewares import (
    AckHeartbeatMiddleware,
    EnvelopeMiddleware,
    FailureMiddleware,
    InboxMiddleware,
)
from .publishing import OutgoingEvent, PublishResult
from .retry import RetryPolicy
from .subjects import SubjectParts, build_subject, parse_subject
from .topology import StreamSettings

__all__ = (
    "AckHeartbeatMiddleware",
    "AsyncAPI",
    "BatchFailure",
    "BatchMetadata",
    "BatchSettings",
    "ClaimResult",
    "Codec",
    "CurrentEnvelope",
    "DeadLetterNotFoundError",
    "DeadLetterQueue",
    "DeadLetterReason",
    "DeadLetterRecord",
    "EncodedMessage",
    "Envelope",
    "EnvelopeCodec",
    "EnvelopeError",
    "EnvelopeMiddleware",
    "EventMetadata",
    "FailureMiddleware",
    "InboxMiddleware",
    "InboxStore",
    "JsonCodec",
    "KvInboxStore",
    "LeaseReporter",
    "MalformedEnvelopeError",
    "MemoryInboxStore",
    "MessageTooLargeError",
    "MissingExtraError",
    "MsgpackCodec",
    "NatsPubsub",
    "NatsPubsubError",
    "OutgoingEvent",
    "PermanentError",
    "ProtobufCodec",
    "ProtobufMessage",
    "PublishError",
    "PublishResult",
    "PubsubRouter",
    "RetryLater",
    "RetryPolicy",
    "StreamSettings",
    "SubjectError",
    "SubjectParts",
    "TopologyError",
    "build_subject",
    "parse_subject",
)
