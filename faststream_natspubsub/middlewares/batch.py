"""Per-event outcomes for batch subscribers: one handler call, one decision per item.

Before the handler: malformed items and items past ``max_attempts`` go to the DLQ, the inbox
acknowledges duplicates, and each item is validated on its own (an invalid item is
dead-lettered, not the whole batch). After it: successes are ACKed, failures follow the
retry policy item by item. The other middlewares pass batches through untouched.
"""

from __future__ import annotations

import inspect
import typing
import weakref
from typing import TYPE_CHECKING, Any, get_args, get_origin

from faststream.exceptions import AckMessage, HandlerException
from pydantic import TypeAdapter, ValidationError

from ..batch import BATCH_CONTEXT_KEY, InboundBatch
from ..codecs.message import EncodedMessage, message_for, protobuf_class_of
from ..codecs.reader import content_type_of
from ..compat import (
    current_subscriber,
    flush_pending,
    handler_function,
    mark_settled,
    mark_unsettled,
    message_client,
    send_raw,
    write_protocol,
)
from ..dlq import DeadLetterReason
from ..errors import BatchFailure, MalformedEnvelopeError
from ..inbox import ClaimResult, inbox_key
from ..metadata import InboundEvent
from .failure import (
    UNFINISHED,
    Delivery,
    FailureMiddleware,
    ack_line,
    delivery_count,
    terminate_raw,
)
from .heartbeat import Beat
from .inbox import acknowledgeable
from .transactional import BatchTransaction

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage

    from ..envelope import Envelope
    from ..runtime import SubscriberPlan
    from .envelope import EnvelopeMiddleware
    from .heartbeat import AckHeartbeatMiddleware

__all__ = ("BatchMiddleware",)

_NO_ADAPTER: Any = object()


class BatchMiddleware:
    """Retry, DLQ, inbox and validation per item of a batch; used by the facade's middleware
    for its batch subscribers."""

    def __init__(
        self,
        *,
        failure: FailureMiddleware,
        envelope: EnvelopeMiddleware,
        heartbeat: AckHeartbeatMiddleware,
    ) -> None:
        self.failure = failure
        self.envelope = envelope
        self.heartbeat = heartbeat
        # Per subscriber: a validator for one item of its handler's ``list[Item]``.
        self._adapters: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    async def consume(
        self,
        context: ContextRepo,
        msg: StreamMessage[Any],
        call_next: Callable[[Any], Awaitable[Any]],
        plan: SubscriberPlan,
    ) -> Any:
        """Handle the batch message of ``plan``'s subscriber item by item."""
        return await _BatchRun(self, context, plan, current_subscriber(context)).run(call_next, msg)

    def item_adapter(self, subscriber: Any) -> TypeAdapter[Any] | None:
        """Validator of one item, from the handler's first parameter (``list[Order]``)."""
        adapter = self._adapters.get(subscriber, None)
        if adapter is None:
            adapter = _adapter_for(subscriber)
            self._adapters[subscriber] = adapter
        return None if adapter is _NO_ADAPTER else adapter


class _Item:
    __slots__ = ("deliveries", "envelope", "inbox_key", "raw", "value")

    def __init__(self, raw: Any, deliveries: int, envelope: Envelope) -> None:
        self.raw = raw
        self.deliveries = deliveries
        self.envelope = envelope
        self.value: Any = envelope.message
        self.inbox_key: str | None = None  # set while this consumer holds the item's claim


class _BatchRun:
    """The handling of one batch message."""

    __slots__ = ("_config", "_handed_off", "_plan", "_subscriber", "_tx", "context")

    def __init__(
        self, config: BatchMiddleware, context: ContextRepo, plan: SubscriberPlan, subscriber: Any
    ) -> None:
        self._config = config
        self._plan = plan
        self._subscriber = subscriber
        self.context = context
        self._tx: BatchTransaction | None = None  # with a transactional (SQL) inbox
        self._handed_off = False  # its commit (and closing) runs off this task

    async def run(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:
        try:
            return await self._run(call_next, msg)
        finally:
            if self._tx is not None and not self._handed_off:
                await self._tx.close()

    async def _run(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        raws = msg.raw_message
        config = self._config
        if not isinstance(raws, list) or not raws:
            return await call_next(msg)
        items = await self._admit(raws)
        if not items:
            raise AckMessage  # every item is settled already; nothing for the handler
        inbound = InboundBatch(
            lambda: [InboundEvent(msg, i.envelope, i.raw.subject, raw=i.raw) for i in items]
        )
        msg.set_decoder(_Constant([item.value for item in items]))
        beat = Beat(_Unsettled(items), self._plan.heartbeat_interval, config.heartbeat)
        failures: dict[_Item, BaseException] = {}
        token = self.context.set_local(BATCH_CONTEXT_KEY, inbound)
        try:
            if self._tx is None:
                result = await call_next(msg)
            else:
                with self._tx.session_scope(self.context):
                    result = await call_next(msg)
        except BatchFailure as reported:
            try:
                failures = _resolve(reported, items)
            except ValueError as wrong_key:  # a bug in the handler: the whole batch failed
                wrong_key.__cause__ = reported
                failures = dict.fromkeys(items, wrong_key)
            result = None
        except AckMessage:
            result = None  # the handler acknowledged the whole batch itself
        except HandlerException:
            await self._release_all(items)
            raise
        except Exception as exc:  # noqa: BLE001 - no item named: the whole batch failed
            failures = dict.fromkeys(items, exc)
            result = None
        finally:
            beat.stop()
            self.context.reset_local(BATCH_CONTEXT_KEY, token)
        await self._settle(items, failures)
        return result

    async def _admit(self, raws: list[Any]) -> list[_Item]:
        """Decode, de-duplicate and validate each item; settle those that cannot go on."""
        config = self._config
        policy = config.failure.retry
        metrics = config.envelope.metrics
        reader = config.envelope.reader
        codecs = reader.by_type
        admitted: list[_Item] = []
        for raw in raws:
            content_type = content_type_of(raw.headers)
            try:
                codec = codecs.get(content_type) or reader.codec_for(content_type)
                envelope = codec.decode(raw.data)
            except MalformedEnvelopeError as exc:
                await self._dead_letter(Delivery.of(raw), DeadLetterReason.MALFORMED, exc)
                continue
            if metrics.enabled:
                metrics.consumed.add(1, metrics.attributes(raw.subject))
            # The full JetStream metadata is parsed only for items that fail.
            admitted.append(_Item(raw, delivery_count(raw), envelope))
        try:
            claimed = await self._claim(admitted)
        except Exception as exc:  # noqa: BLE001 - the store failed: retried like an attempt
            for item in admitted:
                if not item.raw.is_acked:  # not settled by the claim before it failed
                    await self._fail(item, exc)
            return []
        admitted = []
        for item in claimed:
            if item.deliveries <= policy.max_attempts:
                admitted.append(item)
                continue
            # Its last attempt did not finish (a crash, a hang past ack_wait) or could not
            # dead-letter: it does not reach the handler again.
            await self._release(item)
            delivery = Delivery.of(item.raw, event_id=item.envelope.event_id)
            await self._dead_letter(delivery, DeadLetterReason.MAX_ATTEMPTS_EXCEEDED, None)
        adapter = config.item_adapter(self._subscriber)
        if adapter is None and not any(type(i.value) is EncodedMessage for i in admitted):
            return admitted
        validate = adapter.validate_python if adapter is not None else None
        protobuf = isinstance(adapter, _ProtobufItems)
        valid: list[_Item] = []
        for item in admitted:
            try:
                value = item.envelope.message
                if type(value) is EncodedMessage and not protobuf:
                    value = message_for(value, None)  # a protobuf body, as JSON values
                item.value = value if validate is None else validate(value)
            except (ValidationError, MalformedEnvelopeError) as exc:
                await self._fail(item, exc)
            else:
                valid.append(item)
        return valid

    async def _claim(self, items: list[_Item]) -> list[_Item]:
        """Acknowledge duplicates, hold back items another consumer holds, claim the rest."""
        plan = self._plan
        inbox = plan.inbox
        if inbox is None:
            return items
        if inbox.transactional is not None:
            # The previous batch's commit first: batches commit in order, and this handler
            # sees what the previous one wrote.
            await inbox.commits.wait(plan)
            self._tx = BatchTransaction(inbox, inbox.transactional, plan.durable)
            return await self._tx.claim(items) if items else []
        if items:
            inbox.stand_in_if_in_memory(items[0].raw)
        prefix, lease = inbox.scope(plan.durable, plan.ack_wait)
        claimed: list[_Item] = []
        keys = [inbox_key(prefix, item.raw.subject, item.envelope.event_id) for item in items]
        outcomes = await inbox.claim_many(keys, lease=lease)  # one round trip for the batch
        for item, key, outcome in zip(items, keys, outcomes, strict=True):
            if outcome is ClaimResult.PROCESSED:
                inbox.skipped(item.raw.subject, key)
                await item.raw.ack()
            elif outcome is ClaimResult.IN_PROGRESS:
                await item.raw.nak(delay=await inbox.in_progress_delay(key, item.deliveries, lease))
            else:
                item.inbox_key = key
                claimed.append(item)
        return claimed

    async def _settle(self, items: list[_Item], failures: dict[_Item, BaseException]) -> None:
        failure = self._config.failure
        inbox = self._plan.inbox
        succeeded: list[_Item] = []
        for item in items:
            error = failures.get(item)
            if error is not None:
                await self._fail(item, error)
            else:
                succeeded.append(item)
        to_ack = succeeded
        if self._tx is not None:
            if not succeeded:
                return  # nothing to keep: the handler's writes are rolled back
            if inbox is not None and all(acknowledgeable(item.raw) for item in succeeded):
                # The commit, then the acks, run while the subscriber fetches its next batch
                # (which claims only after this commit). Counted as acknowledged now, so
                # FastStream's ack of the batch sends nothing ahead of the commit.
                for item in succeeded:
                    mark_settled(item.raw)
                self._handed_off = True
                inbox.commits.start(self._plan, self._commit_then_ack(succeeded))
                return
            if not await self._commit(succeeded):
                return
        elif inbox is not None:
            marked = [item for item in succeeded if item.inbox_key is not None]
            if marked:  # the batch's marks in one write; each ack follows its stored mark
                keys = [item.inbox_key for item in marked if item.inbox_key is not None]
                if await inbox.mark_many_then_ack(keys, [item.raw for item in marked]):
                    to_ack = [item for item in succeeded if item.inbox_key is None]
        await ack_all([item.raw for item in to_ack])
        for item in succeeded:
            failure.succeeded(item.raw, item.raw.subject, item.deliveries)

    async def _commit(self, succeeded: list[_Item], *, settled: bool = False) -> bool:
        """Commit the marks with the handler's writes; on failure every item failed.

        ``settled``: the items were counted as acknowledged ahead of the commit.
        """
        assert self._tx is not None
        try:
            await self._tx.commit()
        except Exception as exc:  # noqa: BLE001 - nothing was committed: all of them failed
            for item in succeeded:
                if settled:
                    mark_unsettled(item.raw)
                await self._fail(item, exc)
            return False
        return True

    async def _commit_then_ack(self, succeeded: list[_Item]) -> None:
        """Off the batch's task: commit, then acknowledge the items in one write."""
        assert self._tx is not None
        try:
            if not await self._commit(succeeded, settled=True):
                return
            raws = [item.raw for item in succeeded]
            client = message_client(raws[0])
            if client is not None and not client.is_closed:
                # Closed: the server redelivers them, and the inbox skips them.
                await write_protocol(client, b"".join(ack_line(raw) for raw in raws))
            failure = self._config.failure
            for item in succeeded:
                failure.succeeded(item.raw, item.raw.subject, item.deliveries)
        finally:
            await self._tx.close()

    async def _fail(self, item: _Item, error: BaseException) -> None:
        """One item failed: release its inbox claim, then retry it or dead-letter it."""
        failure = self._config.failure
        await self._release(item)
        delivery = Delivery.of(item.raw, event_id=item.envelope.event_id)
        outcome = failure.decide(delivery, error)
        if outcome.reason is not None:
            await self._dead_letter(delivery, outcome.reason, error)
            return
        failure.record_retry(delivery, outcome.delay, error)
        await item.raw.nak(delay=outcome.delay)

    async def _dead_letter(
        self, delivery: Delivery, reason: DeadLetterReason, error: BaseException | None
    ) -> None:
        failure = self._config.failure
        publish = self.context.get("broker").publish
        detail = UNFINISHED if error is None else None
        if await failure.dead_letter(delivery, reason, error, publish, detail=detail):
            await terminate_raw(delivery.raw, reason.value)
            if not delivery.raw.is_acked:  # in memory: no reply subject to use
                await delivery.raw.term()
        else:
            await delivery.raw.nak(delay=failure.dlq_retry_delay(delivery))

    async def _release_all(self, items: list[_Item]) -> None:
        for item in items:
            await self._release(item)

    async def _release(self, item: _Item) -> None:
        if self._tx is not None:
            self._tx.release(item)
            return
        inbox = self._plan.inbox
        if inbox is not None and item.inbox_key is not None:
            await inbox.release(item.inbox_key)
            item.inbox_key = None


class _ProtobufItems:
    """Validator of items typed with a generated protobuf class."""

    __slots__ = ("_cls",)

    def __init__(self, cls: type) -> None:
        self._cls = cls

    def validate_python(self, value: Any) -> Any:
        return message_for(value, self._cls)


class _Constant:
    """Stands in for FastStream's batch decoder: the validated items."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    async def __call__(self, _msg: Any) -> Any:
        return self._value


class _Unsettled:
    """The heartbeat's target: every item of the batch still waiting for its outcome."""

    __slots__ = ("_items",)

    def __init__(self, items: list[_Item]) -> None:
        self._items = items

    async def in_progress(self) -> None:
        for item in self._items:
            if not item.raw.is_acked:
                await item.raw.in_progress()


def _resolve(reported: BatchFailure, items: list[_Item]) -> dict[_Item, BaseException]:
    by_event = {item.envelope.event_id: item for item in items}
    resolved: dict[_Item, BaseException] = {}
    for key, error in reported.failures.items():
        if isinstance(key, int) and 0 <= key < len(items):
            resolved[items[key]] = error
        elif isinstance(key, str) and key in by_event:
            resolved[by_event[key]] = error
        else:
            raise ValueError(f"BatchFailure names an item that is not in the batch: {key!r}")
    return resolved


def _adapter_for(subscriber: Any) -> Any:
    """``TypeAdapter(Item)`` for a handler declared as ``handler(items: list[Item], ...)``."""
    func = handler_function(subscriber)
    if func is None:
        return _NO_ADAPTER
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except (NameError, TypeError):
        return _NO_ADAPTER
    for name in inspect.signature(func).parameters:
        hint = hints.get(name)
        if hint is None or get_origin(hint) is typing.Annotated:
            continue  # unannotated, or injected from the context
        if get_origin(hint) in (list, typing.List, tuple) and get_args(hint):  # noqa: UP006
            item_type = get_args(hint)[0]
            if (protobuf := protobuf_class_of(item_type)) is not None:
                return _ProtobufItems(protobuf)
            return _NO_ADAPTER if item_type is Any else TypeAdapter(item_type)
        return _NO_ADAPTER
    return _NO_ADAPTER


async def ack_all(raws: list[Any]) -> None:
    """ACK every message with one write instead of one publish call each.

    nats-py's ``Msg.ack()`` is a publish of ``+ACK`` to the reply subject; for a batch of
    hundreds that per-call overhead is most of the consumer's cost, so the protocol lines
    are joined and handed to the client's send buffer at once (fire-and-forget, exactly
    as ``ack()`` is). Falls back to ``ack()`` per message when that is not possible.
    """
    pending = [raw for raw in raws if not raw.is_acked]
    if not pending:
        return
    client = message_client(pending[0])
    if client is None or not client.is_connected:
        for raw in pending:
            await raw.ack()
        return
    await send_raw(client, b"".join(ack_line(raw) for raw in pending))
    for raw in pending:
        mark_settled(raw)
    await flush_pending(client)
