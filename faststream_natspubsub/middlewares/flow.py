"""The handling of one event of a facade subscriber, step by step.

1. decode the envelope (unreadable: dead-lettered as malformed, never retried);
2. the inbox: a processed event is acknowledged, one another consumer holds is held back,
   otherwise this delivery claims it;
3. a delivery beyond ``max_attempts`` is dead-lettered without running the handler (its
   last attempt crashed, hung past ``ack_wait`` or could not dead-letter). It comes after
   the inbox, because a duplicate or a held-back copy was not an attempt;
4. the handler runs with the event exposed and its message kept alive by the heartbeat;
   success marks the inbox and acknowledges (with the KV inbox, the ack goes out once the
   mark is stored, without holding up the next message), failure releases the claim and
   is retried or dead-lettered by the app's policy, unless the subscriber's circuit breaker
   holds it (see :mod:`..breaker`): then it is neither NAKed nor dead-lettered, and the
   dispatch runs it again once the breaker lets events through.

Each step is a call into one concern (envelope, inbox, failure, heartbeat) with what it
needs; none of them calls another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from faststream.exceptions import AckMessage, HandlerException, SkipMessage

from ..dlq import DeadLetterReason
from ..errors import MalformedEnvelopeError, PermissionDeniedError
from ..inbox import inbox_key
from ..transactional import InboxKey
from .failure import Delivery, delivery_count
from .transactional import consume_in_transaction, topic_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage

    from ..metadata import InboundEvent
    from ..runtime import SubscriberPlan

__all__ = ("consume_event",)


async def consume_event(
    context: ContextRepo,
    msg: StreamMessage[Any],
    call_next: Callable[[Any], Awaitable[Any]],
    plan: SubscriberPlan,
    on_decoded: Callable[[InboundEvent], None],
) -> Any:
    """Handle ``msg``, delivered to the subscriber ``plan`` describes.

    ``on_decoded`` receives the decoded event (the caller keeps it for the handler's
    return value, which FastStream publishes after this returns).
    """
    runtime = plan.runtime
    failure = runtime.failure
    raw = msg.raw_message
    subject: str = raw.subject
    deliveries = delivery_count(raw)
    try:
        inbound = runtime.envelope.decode(msg, subject)
    except MalformedEnvelopeError as exc:
        delivery = Delivery.of(raw, msg.body)
        await failure.settle_dead_letter(context, delivery, DeadLetterReason.MALFORMED, exc)
    on_decoded(inbound)
    event_id = inbound.envelope.event_id

    inbox = plan.inbox
    if inbox is not None and inbox.transactional is not None:
        return await _consume_in_transaction(context, msg, call_next, plan, inbound, deliveries)
    key: str | None = None
    if inbox is not None:
        prefix, lease = inbox.scope(plan.durable, plan.ack_wait)
        key = inbox_key(prefix, subject, event_id)
        try:
            await inbox.admit(raw, key, subject, lease)
        except AckMessage:  # already processed: acknowledged without the handler
            failure.succeeded(raw, subject, deliveries)
            raise
        except HandlerException:  # held back: another consumer holds the claim
            raise
        except Exception as exc:  # noqa: BLE001 - the store failed: retried like an attempt
            delivery = Delivery.of(raw, msg.body, event_id=event_id)
            await _settle_failure(context, plan, delivery, exc)

    if deliveries > failure.retry.max_attempts:
        if inbox is not None and key is not None:
            await inbox.release(key)  # a replay from the DLQ must be able to run it
        await failure.settle_exhausted(context, Delivery.of(raw, msg.body, event_id=event_id))

    heartbeat = runtime.heartbeat
    beat = heartbeat.start(raw, plan.heartbeat_interval)
    try:
        result = await runtime.envelope.handle(context, msg, inbound, call_next)
    except AckMessage:  # the handler acknowledged it itself: that is processed too
        if inbox is not None and key is not None:
            await inbox.mark_processed(key)
        failure.succeeded(raw, subject, deliveries)
        if plan.breaker is not None:
            plan.breaker.succeeded()
        raise
    except HandlerException:  # the handler chose NAK / TERM itself
        if inbox is not None and key is not None:
            await inbox.release(key)
        raise
    except Exception as exc:  # noqa: BLE001 - any handler failure is retried or dead-lettered
        if inbox is not None and key is not None:
            await inbox.release(key)
        await _settle_failure(context, plan, Delivery.of(raw, msg.body, event_id=event_id), exc)
    except BaseException:  # cancelled: let another delivery take the event
        if inbox is not None and key is not None:
            await inbox.release(key)
        raise
    finally:
        heartbeat.finish(beat)
    if inbox is not None and key is not None:
        await inbox.processed(key, raw)  # the ack may follow the stored mark off this task
    failure.succeeded(raw, subject, deliveries)
    if plan.breaker is not None:
        plan.breaker.succeeded()
    return result


async def _settle_failure(
    context: ContextRepo, plan: SubscriberPlan, delivery: Delivery, exc: Exception
) -> NoReturn:
    """Retry or dead-letter a failed delivery, or hold it when the circuit breaker says so.

    Only a transient failure counts toward the breaker and may be held: one that would be
    retried, or dead-lettered only because its attempts ran out. Permanent, malformed and
    programming errors go to the DLQ as always; a refused permission is the permission
    monitor's.
    """
    failure = plan.runtime.failure
    breaker = plan.breaker
    if breaker is not None and breaker.active and not isinstance(exc, PermissionDeniedError):
        reason = failure.decide(delivery, exc).reason
        transient = reason is None or reason is DeadLetterReason.MAX_ATTEMPTS_EXCEEDED
        if transient and breaker.failed(delivery.raw, delivery.key or delivery.event_id, exc):
            raise SkipMessage  # held: neither NAK nor TERM; the dispatch runs it again
    await failure.settle_failure(context, delivery, exc)


async def _consume_in_transaction(
    context: ContextRepo,
    msg: StreamMessage[Any],
    call_next: Callable[[Any], Awaitable[Any]],
    plan: SubscriberPlan,
    inbound: InboundEvent,
    deliveries: int,
) -> Any:
    """Steps 2 to 4 with a transactional (SQL) inbox: the processed mark and the handler's
    writes through ``InboxSession`` commit together, or not at all."""
    runtime = plan.runtime
    failure = runtime.failure
    inbox = plan.inbox
    assert inbox is not None
    assert inbox.transactional is not None
    raw = msg.raw_message
    subject: str = raw.subject
    event_id = inbound.envelope.event_id
    key = InboxKey.of(plan.durable, topic_of(subject), event_id)

    async def exhausted() -> None:
        await failure.settle_exhausted(context, Delivery.of(raw, msg.body, event_id=event_id))

    async def run() -> Any:
        beat = runtime.heartbeat.start(raw, plan.heartbeat_interval)
        try:
            return await runtime.envelope.handle(context, msg, inbound, call_next)
        finally:
            runtime.heartbeat.finish(beat)

    try:
        result = await consume_in_transaction(
            inbox,
            inbox.transactional,
            context,
            key,
            inbound,
            run,
            exhausted=exhausted if deliveries > failure.retry.max_attempts else None,
        )
    except AckMessage:  # a duplicate, or the handler acknowledged it: committed
        failure.succeeded(raw, subject, deliveries)
        raise
    except HandlerException:  # NAK / TERM, by the handler or for an exhausted delivery
        raise
    except Exception as exc:  # noqa: BLE001 - rolled back: retried or dead-lettered
        await _settle_failure(context, plan, Delivery.of(raw, msg.body, event_id=event_id), exc)
    failure.succeeded(raw, subject, deliveries)
    if plan.breaker is not None:
        plan.breaker.succeeded()
    return result
