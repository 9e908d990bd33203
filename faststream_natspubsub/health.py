"""Health of a NatsPubsub application: connection, JetStream, its streams and consumer lag.

:func:`check_health` never raises for a server problem: an unreachable server is a report
that says so. Rules, worst component wins:

- no connection, a closed or reconnecting one, or JetStream not answering: unhealthy;
- a stream or consumer that does not exist: unhealthy (nothing stores or reads the events);
- a request the server refuses for lack of permission: that component is unhealthy, with the
  permission named (``watch`` hears the refusal; the request does not wait for its timeout);
- a consumer with more than ``max_pending`` undelivered messages, or with redelivered
  messages waiting for an ack: degraded (it is behind, or its handler is failing);
- a stream that refuses new messages at its limits (discard new, as the DLQ does) and is
  at least 90 % full by count or size: degraded (full: new dead letters are refused, the
  events stay in their streams);
- otherwise healthy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, TypeVar

import nats.errors
from faststream.asgi import AsgiResponse, get
from faststream.asgi.types import Scope  # noqa: TC002 - FastDepends resolves it at runtime
from nats.js.api import DiscardPolicy
from nats.js.errors import NotFoundError
from pydantic_core import to_json

from .errors import PermissionDeniedError

if TYPE_CHECKING:
    from faststream.asgi.handlers import GetHandler
    from nats.aio.client import Client
    from nats.js import JetStreamManager

    from .violations import PermissionWatch

__all__ = (
    "DEFAULT_MAX_PENDING",
    "HEALTH_TIMEOUT",
    "ComponentHealth",
    "HealthReport",
    "HealthStatus",
    "check_health",
    "health_route",
)

T = TypeVar("T")

# Undelivered messages a consumer may have before it counts as lagging.
DEFAULT_MAX_PENDING: Final = 1000
# A stream that refuses new messages at its limits is reported degraded from this fill ratio.
NEARLY_FULL: Final = 0.9
# Seconds per JetStream request: a health probe must answer quickly, even when NATS does not.
HEALTH_TIMEOUT: Final = 2.0
# What a server that is down, slow or without JetStream raises; anything else is a bug.
_SERVER_ERRORS: Final = (nats.errors.Error, TimeoutError, OSError, PermissionDeniedError)
_API: Final = "$JS.API"


class HealthStatus(str, Enum):
    """Overall or per-component health, from best to worst."""

    HEALTHY = "healthy"
    """Everything needed is there and consumers keep up."""
    DEGRADED = "degraded"
    """Working, but a consumer lags or redelivers: look before it gets worse."""
    UNHEALTHY = "unhealthy"
    """Events cannot be published, stored or consumed."""

    @property
    def severity(self) -> int:
        """0 healthy, 1 degraded, 2 unhealthy (also the CLI's exit codes)."""
        return _SEVERITY[self]


_SEVERITY: Final = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentHealth:
    """The health of one part: the connection, JetStream, a stream or a consumer."""

    status: HealthStatus
    detail: str = ""
    """Why it is not healthy, or a short description when it is."""
    data: Mapping[str, Any] = field(default_factory=dict)
    """Numbers behind the verdict, e.g. ``num_pending`` of a consumer."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``status``, ``detail`` and the data fields."""
        return {"status": self.status.value, "detail": self.detail, **self.data}


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """The result of :func:`check_health`.

    ``components`` keys: ``connection``, ``jetstream``, ``stream:<NAME>`` and
    ``consumer:<STREAM>/<DURABLE>``.
    """

    status: HealthStatus
    components: dict[str, ComponentHealth]

    @classmethod
    def from_components(cls, components: dict[str, ComponentHealth]) -> HealthReport:
        """A report whose status is the worst of its components'."""
        status = max(
            (c.status for c in components.values()),
            key=lambda s: s.severity,
            default=HealthStatus.HEALTHY,
        )
        return cls(status=status, components=components)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "status": self.status.value,
            "components": {name: c.to_dict() for name, c in self.components.items()},
        }


async def check_health(
    nc: Client | None,
    *,
    streams: Sequence[str],
    consumers: Sequence[tuple[str, str]] = (),
    max_pending: int = DEFAULT_MAX_PENDING,
    watch: PermissionWatch | None = None,
) -> HealthReport:
    """Check the connection, JetStream, ``streams`` and ``consumers`` (``(stream, durable)``).

    ``watch`` hears the connection's permission violations: a refused request is reported
    at once, naming the permission, instead of after its timeout.
    """
    if max_pending < 0:
        raise ValueError(f"max_pending must be >= 0, not {max_pending}")
    components: dict[str, ComponentHealth] = {}
    problem = _connection_problem(nc)
    if problem is None:
        assert nc is not None  # _connection_problem checked it
        components["connection"] = ComponentHealth(
            status=HealthStatus.HEALTHY, detail="connected", data=_server(nc)
        )
        jsm = nc.jsm(timeout=HEALTH_TIMEOUT)
        try:
            await _ask(watch, jsm.account_info(), f"{_API}.INFO")
        except PermissionDeniedError as exc:  # JetStream answers others: go on checking
            components["jetstream"] = _unhealthy(_describe(exc))
        except _SERVER_ERRORS as exc:
            problem = f"JetStream unreachable: {_describe(exc)}"
            components["jetstream"] = _unhealthy(problem)
        else:
            components["jetstream"] = ComponentHealth(status=HealthStatus.HEALTHY, detail="ok")
    else:
        components["connection"] = _unhealthy(problem)
        components["jetstream"] = _unhealthy(f"not checked: {problem}")
    if problem is not None:
        # Keep every expected key, so a dashboard sees the same components in every report.
        for name in streams:
            components[f"stream:{name}"] = _unhealthy(f"not checked: {problem}")
        for stream, durable in consumers:
            components[f"consumer:{stream}/{durable}"] = _unhealthy(f"not checked: {problem}")
        return HealthReport.from_components(components)

    checked = await asyncio.gather(
        *(_check_stream(jsm, name, watch) for name in streams),
        *(
            _check_consumer(jsm, stream, durable, max_pending, watch)
            for stream, durable in consumers
        ),
    )
    names = [f"stream:{name}" for name in streams]
    names += [f"consumer:{stream}/{durable}" for stream, durable in consumers]
    components.update(zip(names, checked, strict=True))
    return HealthReport.from_components(components)


def _connection_problem(nc: Client | None) -> str | None:
    if nc is None:
        return "no connection"
    if nc.is_closed:
        return "connection closed"
    if not nc.is_connected:
        return "disconnected (reconnecting)"
    return None


def _server(nc: Client) -> dict[str, Any]:
    # Host and port only: the URL may carry a user and password.
    url = nc.connected_url
    if url is None or url.hostname is None:
        return {}
    return {"server": f"{url.hostname}:{url.port}" if url.port else url.hostname}


async def _ask(watch: PermissionWatch | None, request: Awaitable[T], subject: str) -> T:
    return await (request if watch is None else watch.guard(request, subject=subject))


async def _check_stream(
    jsm: JetStreamManager, name: str, watch: PermissionWatch | None
) -> ComponentHealth:
    try:
        info = await _ask(watch, jsm.stream_info(name), f"{_API}.STREAM.INFO.{name}")
    except NotFoundError:
        return _unhealthy("missing")
    except _SERVER_ERRORS as exc:
        return _unhealthy(_describe(exc))
    data: dict[str, Any] = {"messages": info.state.messages, "consumers": info.state.consumer_count}
    fill = _fill(info)
    if fill is not None and fill >= NEARLY_FULL:
        data["fill"] = round(fill, 3)
        detail = (
            "full: new messages are refused"
            if fill >= 1.0
            else f"{fill:.0%} full: new messages will be refused at the limit"
        )
        return ComponentHealth(status=HealthStatus.DEGRADED, detail=detail, data=data)
    return ComponentHealth(status=HealthStatus.HEALTHY, detail="present", data=data)


def _fill(info: Any) -> float | None:
    """How full a stream that refuses new messages at its limits is (1.0: full)."""
    config, state = info.config, info.state
    if config.discard != DiscardPolicy.NEW:
        return None  # it drops old messages instead: never refuses
    ratios = [
        used / limit
        for used, limit in ((state.messages, config.max_msgs), (state.bytes, config.max_bytes))
        if limit is not None and limit > 0
    ]
    return max(ratios, default=None)


async def _check_consumer(
    jsm: JetStreamManager,
    stream: str,
    durable: str,
    max_pending: int,
    watch: PermissionWatch | None,
) -> ComponentHealth:
    subject = f"{_API}.CONSUMER.INFO.{stream}.{durable}"
    try:
        info = await _ask(watch, jsm.consumer_info(stream, durable), subject)
    except NotFoundError as exc:
        return _unhealthy(f"missing ({_describe(exc)})")
    except _SERVER_ERRORS as exc:
        return _unhealthy(_describe(exc))
    pending = int(info.num_pending or 0)
    ack_pending = int(info.num_ack_pending or 0)
    redelivered = int(info.num_redelivered or 0)
    data = {"num_pending": pending, "num_ack_pending": ack_pending, "num_redelivered": redelivered}
    problems = []
    if pending > max_pending:
        problems.append(f"{pending} pending > {max_pending}")
    if redelivered:
        problems.append(f"{redelivered} redelivered")
    if problems:
        return ComponentHealth(status=HealthStatus.DEGRADED, detail=", ".join(problems), data=data)
    return ComponentHealth(status=HealthStatus.HEALTHY, detail="keeping up", data=data)


def _unhealthy(detail: str) -> ComponentHealth:
    return ComponentHealth(status=HealthStatus.UNHEALTHY, detail=detail)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PermissionDeniedError):
        verb = "publish to" if exc.action == "publish" else "subscribe to"
        return f'permission denied: may not {verb} "{exc.subject}"'
    description = getattr(exc, "description", None)
    if description:
        return str(description)
    text = str(exc)
    return text if text else type(exc).__name__


def health_route(check: Callable[[], Awaitable[HealthReport]]) -> GetHandler:
    """An ASGI route for FastStream's ``AsgiFastStream``: the report as JSON, with status
    200, or 503 when unhealthy (what load balancers and Kubernetes probes expect).

    It is left out of the AsyncAPI document: it is an HTTP probe, not a channel.
    """

    @get(
        include_in_schema=False,
        description="NatsPubsub health: connection, JetStream, streams, consumer lag",
    )
    async def health(scope: Scope) -> AsgiResponse:
        report = await check()
        status = 503 if report.status is HealthStatus.UNHEALTHY else 200
        return AsgiResponse(
            to_json(report.to_dict()),
            status_code=status,
            headers={"content-type": "application/json"},
        )

    return health
