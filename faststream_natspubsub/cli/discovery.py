"""Finding an environment's streams and an application's consumers on the server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import PermissionDeniedError
from ..subjects import dlq_stream_name, stream_name

if TYPE_CHECKING:
    from nats.js import JetStreamManager
    from nats.js.api import ConsumerInfo, StreamInfo

    from ..violations import PermissionWatch

__all__ = (
    "app_consumers",
    "env_streams",
    "is_app_consumer",
    "list_consumers",
    "list_streams",
    "permitted_consumers",
)


async def list_streams(jsm: JetStreamManager) -> list[StreamInfo]:
    """Every stream of the account; the server answers in pages (256 at a time)."""
    found: list[StreamInfo] = []
    while page := await jsm.streams_info(offset=len(found)):
        found.extend(page)
    return found


async def list_consumers(jsm: JetStreamManager, stream: str) -> list[ConsumerInfo]:
    """Every consumer of ``stream``, all pages."""
    found: list[ConsumerInfo] = []
    while page := await jsm.consumers_info(stream, offset=len(found)):
        found.extend(page)
    return found


async def permitted_consumers(
    jsm: JetStreamManager, stream: str, watch: PermissionWatch
) -> list[ConsumerInfo] | None:
    """Every consumer of ``stream``; None when the user may not list them (the server's
    refusal, heard by ``watch``, ends the request at once)."""
    try:
        return await watch.guard(
            list_consumers(jsm, stream), subject=f"$JS.API.CONSUMER.LIST.{stream}"
        )
    except PermissionDeniedError:
        return None


async def env_streams(jsm: JetStreamManager, env: str) -> list[StreamInfo]:
    """Streams of ``env`` (normalised): ``<ENV>_*`` and ``DLQ_<ENV>_*``, sorted by name.

    ``_`` never occurs in an env, so ``PROD_`` cannot match the streams of ``prod-eu``.
    """
    prefixes = (f"{env.upper()}_", f"DLQ_{env.upper()}_")
    streams = [s for s in await list_streams(jsm) if (s.config.name or "").startswith(prefixes)]
    return sorted(streams, key=lambda s: s.config.name or "")


def is_app_consumer(app: str, durable: str) -> bool:
    """Whether ``durable`` follows :func:`~faststream_natspubsub.subjects.consumer_name`."""
    return durable.startswith(f"{app}__")


async def app_consumers(
    jsm: JetStreamManager,
    env: str,
    app: str,
    watch: PermissionWatch | None = None,
    refused: list[str] | None = None,
) -> list[tuple[str, str]]:
    """``(stream, durable)`` of ``app``'s consumers on any stream of ``env``; the streams
    whose consumers the user may not list are added to ``refused``."""
    found: list[tuple[str, str]] = []
    for stream in await env_streams(jsm, env):
        name = stream.config.name or ""
        if watch is None:
            consumers: list[ConsumerInfo] | None = await list_consumers(jsm, name)
        else:
            consumers = await permitted_consumers(jsm, name, watch)
        if consumers is None:
            if refused is not None:
                refused.append(name)
            continue
        found += [(name, c.name) for c in consumers if is_app_consumer(app, c.name)]
    return found


def app_streams(env: str, app: str, *, dlq: bool = True) -> list[str]:
    """The main stream of ``app`` and, with ``dlq``, its dead-letter stream."""
    return [stream_name(env, app), *([dlq_stream_name(env, app)] if dlq else [])]
