"""Registers an app's subscribers and publishers, on its broker or on a router.

Both the facade and :class:`~faststream_natspubsub.router.PubsubRouter` register through
one :class:`TopicRegistrar`: it declares the consumer, registers the FastStream subscriber
where it is told to, and routes the subscriber's messages to the app (its plan).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .ordering import key_function
from .runtime import SubscriberPlan

if TYPE_CHECKING:
    from faststream.nats.publisher.usecase import LogicPublisher
    from faststream.nats.subscriber.usecases.basic import LogicSubscriber

    from .batch import BatchSettings
    from .declaring import Declarations, Registrar
    from .host import BrokerHost
    from .lifecycle import PubsubLifecycle
    from .ordering import OrderBy
    from .runtime import AppRuntime
    from .subjects import ForeignApp

__all__ = ("TopicRegistrar",)


class TopicRegistrar:
    """Subscribers and publishers of one app, speaking in topics."""

    def __init__(
        self,
        *,
        runtime: AppRuntime,
        declarations: Declarations,
        host: BrokerHost,
        lifecycle: PubsubLifecycle,
    ) -> None:
        self.runtime = runtime
        self.declarations = declarations
        self.host = host
        self.lifecycle = lifecycle

    def subscriber(
        self,
        target: Registrar,
        topic: str,
        *,
        app: str | ForeignApp | None,
        ack_wait: float,
        max_workers: int,
        inbox: bool,
        batch: BatchSettings | None,
        faststream_kwargs: dict[str, Any],
        order_by: OrderBy | None = None,
    ) -> LogicSubscriber[Any]:
        """A durable pull subscriber for ``topic``, registered on ``target``."""
        try:  # a key read the way the envelope middleware reads the event
            key_of = (
                None if order_by is None else key_function(order_by, self.runtime.envelope.reader)
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"subscriber({topic!r}): {exc}") from None
        declared = self.declarations.subscriber(
            topic,
            app=app,
            ack_wait=ack_wait,
            max_workers=max_workers,
            batch=batch,
            extra=dict(faststream_kwargs),
            ordered=key_of is not None,
        )
        subscriber: LogicSubscriber[Any] = target.subscriber(declared.subject, **declared.kwargs)
        consumer = declared.consumer
        plan = SubscriberPlan(
            runtime=self.runtime,
            subject=declared.subject,
            stream=consumer.stream,
            durable=consumer.durable,
            ack_wait=consumer.ack_wait,
            inbox=self.runtime.inbox if inbox else None,
            batch=batch,
            max_workers=max_workers,
            fetch_ahead=declared.fetch_ahead,
            order_by=key_of,
        )
        self.host.add_subscriber(subscriber, plan)
        self.lifecycle.subscribers.append((subscriber, declared.subject))
        self.lifecycle.plans[subscriber] = plan
        self.lifecycle.by_durable[consumer.durable] = subscriber
        return subscriber

    def publisher(
        self, target: Registrar, topic: str, faststream_kwargs: dict[str, Any]
    ) -> LogicPublisher:
        """A FastStream publisher for this app's ``topic``, registered on ``target``."""
        subject, kwargs = self.declarations.publisher(topic, dict(faststream_kwargs))
        return target.publisher(subject, **kwargs)
