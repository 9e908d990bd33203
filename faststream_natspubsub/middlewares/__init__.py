"""One middleware per concern; the facade installs them, users may combine them by hand."""

from .envelope import EnvelopeMiddleware
from .failure import FailureMiddleware
from .heartbeat import AckHeartbeatMiddleware

__all__ = ("AckHeartbeatMiddleware", "EnvelopeMiddleware", "FailureMiddleware")
