"""Reading the event a MAX_DELIVERIES advisory names, with no more rights than its consumer.

``$JS.API.STREAM.MSG.GET.<stream>`` reads any message of a stream by sequence: an app allowed
it could read every topic of a source stream, not only those it subscribes to. Instead, a
short-lived consumer with the same filter as the app's durable starts at the advisory's
sequence and hands over one message. It is created on
``$JS.API.CONSUMER.CREATE.<stream>.<reader>.<filter>``, a subject whose filter the server
checks against the request's, so a permission for that exact subject reads nothing outside
what the app consumes anyway. The reader lives in memory, is deleted after the read and
expires by itself (:data:`READER_INACTIVE`) if the delete is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import nats.errors
from nats.js.errors import APIError, NotFoundError

from .errors import PermissionDeniedError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.aio.client import Client

    from .violations import PermissionWatch

__all__ = ("READER_SUFFIX", "DeliveredEvent", "read_delivered", "reader_name")

logger = logging.getLogger("faststream_natspubsub.advisories")

# A reader's name: its durable's plus this (consumer names allow '-').
READER_SUFFIX: Final = "-advisory-read"
# Seconds after which the server removes a reader nobody deleted.
READER_INACTIVE: Final = 10.0
# Pauses while another read of the same durable holds the reader's name.
_BUSY_DELAYS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
_CONSUMER_EXISTS: Final = 10148
_NANOSECONDS: Final = 1_000_000_000
# One read per durable at a time in this process (they share the reader's name).
_LOCKS: dict[str, asyncio.Lock] = {}


def reader_name(durable: str) -> str:
    """The reader consumer of ``durable``: a fixed name, so a permission can name it."""
    return f"{durable}{READER_SUFFIX}"


@dataclass(frozen=True, slots=True)
class DeliveredEvent:
    """The message a reader handed over."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    seq: int


async def read_delivered(
    nc: Client,
    *,
    stream: str,
    durable: str,
    filter_subject: str,
    seq: int,
    timeout: float = 5.0,
    watch: PermissionWatch | None = None,
) -> DeliveredEvent | None:
    """The message at ``seq`` of ``stream`` if ``filter_subject`` selects it, else None."""
    name = reader_name(durable)
    lock = _LOCKS.setdefault(name, asyncio.Lock())
    async with lock:
        await _create(nc, stream, name, filter_subject, seq, timeout, watch)
        try:
            return await _next(nc, stream, name, seq, timeout, watch)
        finally:
            await _delete(nc, stream, name, timeout, watch)


async def _request(
    nc: Client, subject: str, body: bytes, timeout: float, watch: PermissionWatch | None
) -> dict[str, Any]:
    request = nc.request(subject, body, timeout=timeout)
    reply = await (watch.guard(request, subject=subject) if watch else request)
    data = json.loads(reply.data or b"{}")
    if not isinstance(data, dict):
        raise APIError(description=f"unreadable answer to {subject}")
    error = data.get("error")
    if isinstance(error, dict):
        raise APIError.from_error(error)
    return data


async def _create(
    nc: Client,
    stream: str,
    name: str,
    filter_subject: str,
    seq: int,
    timeout: float,
    watch: PermissionWatch | None,
) -> None:
    config = {
        "name": name,
        "filter_subject": filter_subject,
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": seq,
        "ack_policy": "none",
        "max_deliver": 1,
        "mem_storage": True,
        "num_replicas": 1,
        "inactive_threshold": int(READER_INACTIVE * _NANOSECONDS),
    }
    subject = f"$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter_subject}"
    body = json.dumps({"stream_name": stream, "config": config, "action": "create"}).encode()
    for delay in (*_BUSY_DELAYS, None):
        try:
            await _request(nc, subject, body, timeout, watch)
        except APIError as exc:
            if exc.err_code != _CONSUMER_EXISTS or delay is None:
                raise
            await asyncio.sleep(delay)  # another process reads for this durable right now
        else:
            return


async def _next(
    nc: Client, stream: str, name: str, seq: int, timeout: float, watch: PermissionWatch | None
) -> DeliveredEvent | None:
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox, max_msgs=1)
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
    try:
        await nc.publish(subject, b'{"batch":1,"no_wait":true}', reply=inbox)
        waiting = subscription.next_msg(timeout)
        msg = await (watch.guard(waiting, subject=subject) if watch else waiting)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await subscription.unsubscribe()
    if msg.headers and msg.headers.get("Status"):
        return None  # 404: no message at or after seq that the filter selects
    try:
        delivered = msg.metadata.sequence.stream
    except (nats.errors.Error, ValueError, IndexError):
        return None
    if delivered != seq:
        return None  # the message at seq is not one the consumer reads (or is gone)
    return DeliveredEvent(msg.subject, msg.data or b"", dict(msg.headers or {}), delivered)


async def _delete(
    nc: Client, stream: str, name: str, timeout: float, watch: PermissionWatch | None
) -> None:
    subject = f"$JS.API.CONSUMER.DELETE.{stream}.{name}"
    try:
        await _request(nc, subject, b"", timeout, watch)
    except NotFoundError:
        pass
    except (APIError, PermissionDeniedError, nats.errors.Error, TimeoutError) as exc:
        # It expires by itself; a refused delete is logged by the app's permission monitor.
        logger.debug("could not delete the advisory reader %s on %s: %r", name, stream, exc)
