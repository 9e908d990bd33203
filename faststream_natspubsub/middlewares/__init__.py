"""One middleware per concern; the facade installs them, users may combine them by hand."""

from .batch import BatchMiddleware
from .envelope import EnvelopeMiddleware
from .failure import FailureMiddleware
from .heartbeat import AckHeartbeatMiddleware
from .inbox import InboxMiddleware
from .pubsub import PubsubMiddleware

__all__ = (
    "AckHeartbeatMiddleware",
    "BatchMiddleware",
    "EnvelopeMiddleware",
    "FailureMiddleware",
    "InboxMiddleware",
    "PubsubMiddleware",
)
