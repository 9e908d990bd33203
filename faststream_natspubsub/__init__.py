"""NatsPubsub conventions for FastStream on NATS JetStream.

Envelope, ``<env>.<app>.<topic>`` subjects, retries with backoff, a dead-letter queue and
metadata for handlers, installed on a FastStream ``NatsBroker`` by :class:`NatsPubsub`.
"""

from .annotations import CurrentEnvelope, EventMetadata, InboxSession
from .asyncapi import AsyncAPI
from .batch import BatchMetadata, BatchSettings
from .breaker import BreakerState, CircuitBreaker
from .codecs import (
    Codec,
    EncodedMessage,
    JsonCodec,
    MsgpackCodec,
    ProtobufCodec,
    ProtobufMessage,
)
from .compat import HostVersionError
from .dlq import DeadLetterReason, DeadLetterRecord
from .dlq_admin import DeadLetterQueue, SkippedEntry
from .envelope import Envelope, EnvelopeCodec
from .errors import (
    BatchFailure,
    ConfigurationError,
    DeadLetterNotFoundError,
    DeadLetterQueueFullError,
    DeadLetterRecordError,
    EnvelopeError,
    MalformedEnvelopeError,
    MessageTooLargeError,
    MissingExtraError,
    NatsPubsubError,
    PermanentError,
    PermissionDeniedError,
    PublishError,
    RecordTruncatedError,
    ReplayRefusedError,
    RetryLater,
    SubjectError,
    TopologyError,
)
from .facade import NatsPubsub
from .health import ComponentHealth, HealthReport, HealthStatus
from .inbox import ClaimResult, InboxStore, KvInboxStore, LeaseReporter, MemoryInboxStore
from .middlewares import (
    AckHeartbeatMiddleware,
    EnvelopeMiddleware,
    FailureMiddleware,
    InboxMiddleware,
)
from .permissions import Permission, PermissionSet
from .publishing import OutgoingEvent, PublishResult
from .replay import ReplayResult
from .retry import RetryPolicy
from .router import PubsubRouter
from .subjects import ForeignApp, SubjectParts, build_subject, consumer_name, parse_subject
from .topology import StreamSettings
from .transactional import InboxKey, InboxTransaction, TransactionalInboxStore

__all__ = (
    "AckHeartbeatMiddleware",
    "AsyncAPI",
    "BatchFailure",
    "BatchMetadata",
    "BatchSettings",
    "BreakerState",
    "CircuitBreaker",
    "ClaimResult",
    "Codec",
    "ComponentHealth",
    "ConfigurationError",
    "CurrentEnvelope",
    "DeadLetterNotFoundError",
    "DeadLetterQueue",
    "DeadLetterQueueFullError",
    "DeadLetterReason",
    "DeadLetterRecord",
    "DeadLetterRecordError",
    "EncodedMessage",
    "Envelope",
    "EnvelopeCodec",
    "EnvelopeError",
    "EnvelopeMiddleware",
    "EventMetadata",
    "FailureMiddleware",
    "ForeignApp",
    "HealthReport",
    "HealthStatus",
    "HostVersionError",
    "InboxKey",
    "InboxMiddleware",
    "InboxSession",
    "InboxStore",
    "InboxTransaction",
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
    "Permission",
    "PermissionDeniedError",
    "PermissionSet",
    "ProtobufCodec",
    "ProtobufMessage",
    "PublishError",
    "PublishResult",
    "PubsubRouter",
    "RecordTruncatedError",
    "ReplayRefusedError",
    "ReplayResult",
    "RetryLater",
    "RetryPolicy",
    "SkippedEntry",
    "StreamSettings",
    "SubjectError",
    "SubjectParts",
    "TopologyError",
    "TransactionalInboxStore",
    "build_subject",
    "consumer_name",
    "parse_subject",
)
