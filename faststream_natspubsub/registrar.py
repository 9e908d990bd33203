"""Registers an app's subscribers and publishers, on its broker or on a router.

Both the facade and :class:`~faststream_natspubsub.router.PubsubRouter` register through
one :class:`TopicRegistrar`: it declares the consumer, registers the FastStream subscriber
where it is told to, and routes the subscriber's messages to the app (its plan).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .breaker import CircuitBreaker, SubscriberBreaker
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
        circuit_breaker: CircuitBreaker | bool | None = True,
    ) -> LogicSubscriber[Any]:
        """A durable pull subscriber for ``topic``, registered on ``target``."""
        if not isinstance(circuit_breaker, CircuitBreaker | bool | None):
            raise ConfigurationError(
                f"subscriber({topic!r}): circuit_breaker must be a CircuitBreaker, True (the "
                f"app's), False or None, not {circuit_breaker!r}"
            )
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
        breaker_config = self._breaker_config(topic, circuit_breaker, declared.fetch_ahead)
        subscriber: LogicSubscriber[Any] = target.subscriber(declared.subject, **declared.kwargs)
        consumer = declared.consumer
        breaker = (
            SubscriberBreaker(
                breaker_config,
                subject=declared.subject,
                durable=consumer.durable,
                metrics=self.runtime.metrics,
            )
            if breaker_config is not None
            else None
        )
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
            breaker=breaker,
        )
        self.host.add_subscriber(subscriber, plan)
        self.lifecycle.subscribers.append((subscriber, declared.subject))
        self.lifecycle.plans[subscriber] = plan
        self.lifecycle.by_durable[consumer.durable] = subscriber
        return subscriber

    def _breaker_config(
        self, topic: str, choice: CircuitBreaker | bool | None, fetch_ahead: bool
    ) -> CircuitBreaker | None:
        """The subscriber's breaker settings: its own, the app's (``True``), or none.

        A breaker needs the package's dispatch (it stops fetching and holds failed
        deliveries in the client): asked for explicitly on a batch subscriber or one with
        its own ``pull_sub``, it is refused; the app's default simply does not apply there.
        """
        if isinstance(choice, CircuitBreaker):
            if not fetch_ahead:
                raise ConfigurationError(
                    f"subscriber({topic!r}): circuit_breaker needs the package's own fetching "
                    "(it stops fetching and holds failed events in the client): pass no "
                    "pull_sub and no batch"
                )
            return choice
        if choice is True and fetch_ahead:
            return self.runtime.circuit_breaker
        return None

    def publisher(
        self, target: Registrar, topic: str, faststream_kwargs: dict[str, Any]
    ) -> LogicPublisher:
        """A FastStream publisher for this app's ``topic``, registered on ``target``."""
        subject, kwargs = self.declarations.publisher(topic, dict(faststream_kwargs))
        return target.publisher(subject, **kwargs)
