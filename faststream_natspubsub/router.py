"""``PubsubRouter``: a FastStream ``NatsRouter`` whose subscribers and publishers speak in topics.

It holds the ``NatsRouter`` (``router.nats``) instead of subclassing it with other
signatures; include that in the broker::

    router = pubsub.router()

    @router.subscriber("order.placed", app="shop")
    async def bill(order: Order) -> None: ...

    broker.include_router(router.nats)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faststream.nats import NatsRouter

from .errors import ConfigurationError

if TYPE_CHECKING:
    from faststream.nats.publisher.usecase import LogicPublisher
    from faststream.nats.subscriber.usecases.basic import LogicSubscriber

    from .batch import BatchSettings
    from .breaker import CircuitBreaker
    from .ordering import OrderBy
    from .registrar import TopicRegistrar
    from .subjects import ForeignApp

__all__ = ("PubsubRouter",)


class PubsubRouter:
    """Subscribers and publishers of one app, grouped on a ``NatsRouter``.

    Made by :meth:`NatsPubsub.router`; the streams and consumers of its subscribers are
    declared by that app. FastStream's router features (dependencies, tags, middlewares of
    its own) are the ``NatsRouter``'s: keyword arguments go to it.
    """

    def __init__(self, registrar: TopicRegistrar, **nats_router_kwargs: Any) -> None:
        if nats_router_kwargs.get("prefix"):
            raise ConfigurationError(
                "a PubsubRouter cannot have a subject prefix: subjects are <env>.<app>.<topic>"
            )
        self.nats = NatsRouter(**nats_router_kwargs)
        """The FastStream router to include: ``broker.include_router(router.nats)``."""
        self._registrar = registrar

    def subscriber(
        self,
        topic: str,
        *,
        app: str | ForeignApp | None = None,
        ack_wait: float = 30.0,
        max_workers: int = 1,
        inbox: bool = True,
        batch: BatchSettings | None = None,
        order_by: OrderBy | None = None,
        circuit_breaker: CircuitBreaker | bool | None = True,
        **faststream_kwargs: Any,
    ) -> LogicSubscriber[Any]:
        """Like :meth:`NatsPubsub.subscriber`, registered on this router."""
        return self._registrar.subscriber(
            self.nats,
            topic,
            app=app,
            ack_wait=ack_wait,
            max_workers=max_workers,
            inbox=inbox,
            batch=batch,
            faststream_kwargs=faststream_kwargs,
            order_by=order_by,
            circuit_breaker=circuit_breaker,
        )

    def publisher(self, topic: str, **faststream_kwargs: Any) -> LogicPublisher:
        """Like :meth:`NatsPubsub.publisher`, registered on this router."""
        return self._registrar.publisher(self.nats, topic, faststream_kwargs)
