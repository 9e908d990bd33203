"""NatsPubsub conventions for FastStream on NATS JetStream.

Envelope, ``<env>.<app>.<topic>`` subjects, retries with backoff, a dead-letter queue and
metadata for handlers, installed on a FastStream ``NatsBroker`` by :class:`NatsPubsub`.
"""

from .annotations import CurrentEnvelope, EventMetadata, InboxSession
from .asyncapi import AsyncAPI
from .batch import BatchFailure, BatchMetadata, BatchSettings
from .dlq import DeadLetterReason, DeadLetterRecord
from .dlq_admin import DeadLetterNotFoundError, DeadLetterQueue
from .envelope import Envelope, EnvelopeCodec, MalformedEnvelopeError
from .errors import (
    EnvelopeError,
    MessageTooLargeError,
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
from .transactional import InboxKey, InboxTransaction, TransactionalInboxStore

__all__ = (
    "AckHeartbeatMiddleware",
    "AsyncAPI",
    "BatchFailure",
    "BatchMetadata",
    "BatchSettings",
    "ClaimResult",
    "CurrentEnvelope",
    "DeadLetterNotFoundError",
    "DeadLetterQueue",
    "DeadLetterReason",
    "DeadLetterRecord",
    "Envelope",
    "EnvelopeCodec",
    "EnvelopeError",
    "EnvelopeMiddleware",
    "EventMetadata",
    "FailureMiddleware",
    "InboxKey",
    "InboxMiddleware",
    "InboxSession",
    "InboxStore",
    "InboxTransaction",
    "KvInboxStore",
    "LeaseReporter",
    "MalformedEnvelopeError",
    "MemoryInboxStore",
    "MessageTooLargeError",
    "NatsPubsub",
    "NatsPubsubError",
    "OutgoingEvent",
    "PermanentError",
    "PublishError",
    "PublishResult",
    "PubsubRouter",
    "RetryLater",
    "RetryPolicy",
    "StreamSettings",
    "SubjectError",
    "SubjectParts",
    "TopologyError",
    "TransactionalInboxStore",
    "build_subject",
    "parse_subject",
)
