"""``natspubsub health``: exit code 0 healthy, 1 degraded, 2 unhealthy."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import nats.errors
import typer

from ..errors import PermissionDeniedError
from ..health import (
    DEFAULT_MAX_PENDING,
    HEALTH_TIMEOUT,
    ComponentHealth,
    HealthReport,
    HealthStatus,
    check_health,
)
from .discovery import app_consumers, app_streams
from .options import CliError, CommonOptions, common_options, connect, run, watch_of
from .output import echo_error, echo_json, echo_table

__all__ = ("health",)

_STREAM_LIST = "$JS.API.STREAM.LIST"


@common_options
def health(
    options: CommonOptions,
    max_pending: Annotated[
        int, typer.Option(min=0, help="A consumer with more undelivered messages is degraded.")
    ] = DEFAULT_MAX_PENDING,
    dlq: Annotated[bool, typer.Option(help="Check the app's dead-letter stream too.")] = True,
    consumer: Annotated[
        list[str] | None,
        typer.Option(
            metavar="STREAM/DURABLE",
            help="Also check this consumer (one with a durable name of its own); repeatable.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check the connection, JetStream, --app's streams and consumers (exit 0, 1 or 2).

    Consumers are the app's durables (names starting with '<app>__') on every stream of
    --env, plus those given with --consumer.
    """
    env, app_name = options.require_env(), options.require_app()
    extra = [_consumer(value) for value in consumer or ()]
    streams = app_streams(env, app_name, dlq=dlq)
    report, failure = run(_check(options, env, app_name, streams, extra, max_pending))
    if options.json:
        echo_json(report.to_dict())
    else:
        echo_table(
            ("COMPONENT", "STATUS", "DETAIL"),
            [(name, c.status.value, _detail(c)) for name, c in report.components.items()],
        )
        typer.echo(f"status: {report.status.value}")
    if failure is not None:
        echo_error(failure)
    raise typer.Exit(report.status.severity)


async def _check(
    options: CommonOptions,
    env: str,
    app_name: str,
    streams: list[str],
    extra: list[tuple[str, str]],
    max_pending: int,
) -> tuple[HealthReport, str | None]:
    try:
        async with connect(options) as nc:
            jsm = nc.jsm(timeout=min(options.timeout, HEALTH_TIMEOUT))
            watch = watch_of(nc)
            refused: list[str] = []
            try:
                with watch.guarding_request(_STREAM_LIST):
                    found = await app_consumers(jsm, env, app_name, watch, refused)
            except PermissionDeniedError:
                found, refused = [], [_STREAM_LIST]
            except (nats.errors.Error, TimeoutError, OSError):
                found = []  # check_health reports JetStream as unreachable
            consumers = found + [c for c in extra if c not in found]
            report = await check_health(
                nc, streams=streams, consumers=consumers, max_pending=max_pending, watch=watch
            )
            if refused:  # consumers of the app may be missing from the report: say so
                report = HealthReport.from_components(
                    {**report.components, "consumers": _not_listed(refused)}
                )
            return report, None
    except CliError as exc:
        # Unreachable is a verdict, not a usage error: still print the full report.
        report = await check_health(None, streams=streams, consumers=extra, max_pending=max_pending)
        components = dict(report.components)
        components["connection"] = dataclasses.replace(components["connection"], detail=exc.message)
        return dataclasses.replace(report, components=components), exc.message


def _not_listed(refused: list[str]) -> ComponentHealth:
    subjects = [s if s == _STREAM_LIST else f"$JS.API.CONSUMER.LIST.{s}" for s in refused]
    return ComponentHealth(
        status=HealthStatus.UNHEALTHY,
        detail="permission denied: may not publish to "
        + ", ".join(f'"{subject}"' for subject in subjects)
        + " (the app's consumers there are not checked)",
    )


def _consumer(value: str) -> tuple[str, str]:
    stream, _, durable = value.partition("/")
    if not stream or not durable:
        raise CliError(f"--consumer {value!r}: use STREAM/DURABLE")
    return stream, durable


def _detail(component: ComponentHealth) -> str:
    numbers = " ".join(f"{key}={value}" for key, value in component.data.items())
    return f"{component.detail} ({numbers})" if numbers else component.detail
