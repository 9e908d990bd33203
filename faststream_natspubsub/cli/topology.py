"""``natspubsub topology show|ensure``: the streams and consumers of an environment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from nats.js.errors import NotFoundError

from ..dlq import dlq_stream_settings
from ..facade import DLQ_MAX_AGE
from ..subjects import dlq_stream_name, dlq_subject_prefix, stream_name
from ..topology import StreamSettings, StreamSpec, ensure_stream
from .discovery import env_streams, is_app_consumer, permitted_consumers
from .options import CommonOptions, common_options, connect, duration_option, run, watch_of
from .output import echo_json, echo_table, echo_warning

if TYPE_CHECKING:
    from nats.js import JetStreamManager
    from nats.js.api import ConsumerInfo, StreamInfo

__all__ = ("app",)

# NatsPubsub's default retention of dead letters, as a --dlq-max-age value.
_DLQ_MAX_AGE = f"{DLQ_MAX_AGE / 86400:g}d"

app = typer.Typer(help="Streams and consumers of an environment.", no_args_is_help=True)


@app.command()
@common_options
def show(options: CommonOptions) -> None:
    """Streams of --env (main and DLQ) with their consumers; --app keeps that app's."""
    env = options.require_env()
    target = options.require_app() if options.app else None
    streams = run(_describe(options, env, target))
    if options.json:
        echo_json({"env": env, "app": target, "streams": streams})
        return
    if not streams:
        typer.echo(f"no streams of env {env!r}" + (f" for app {target!r}" if target else ""))
        return
    echo_table(
        ("STREAM", "SUBJECTS", "REPLICAS", "MESSAGES", "CONSUMERS"),
        [
            (s["name"], s["subjects"], s["replicas"], s["messages"], len(s["consumers"]))
            for s in streams
        ],
    )
    consumers = [(s["name"], c) for s in streams for c in s["consumers"]]
    if consumers:
        typer.echo()
        echo_table(
            ("STREAM", "CONSUMER", "FILTER", "PENDING", "ACK PENDING", "REDELIVERED"),
            [
                (
                    stream,
                    c["name"],
                    c["filter_subject"],
                    c["num_pending"],
                    c["num_ack_pending"],
                    c["num_redelivered"],
                )
                for stream, c in consumers
            ],
        )


@app.command()
@common_options
def ensure(
    options: CommonOptions,
    replicas: Annotated[
        int, typer.Option(min=1, help="Replicas of streams that must be created (3 on a cluster).")
    ] = 1,
    dlq: Annotated[bool, typer.Option(help="Also the app's dead-letter stream.")] = True,
    dlq_max_age: Annotated[
        str, typer.Option(help="How long a new DLQ stream keeps records; 0s: no limit.")
    ] = _DLQ_MAX_AGE,
) -> None:
    """Create or update --app's main stream and DLQ stream, as NatsPubsub does at start.

    An existing stream keeps its settings; only missing subjects are added.
    """
    env, target = options.require_env(), options.require_app()
    max_age = duration_option(dlq_max_age, "--dlq-max-age").total_seconds()
    settings = StreamSettings(replicas=replicas)
    specs = [
        StreamSpec(
            name=stream_name(env, target), subjects=(f"{env}.{target}.>",), settings=settings
        )
    ]
    if dlq:
        # The same settings as NatsPubsub(dlq=True) gives its DLQ stream.
        dlq_settings = dlq_stream_settings(
            replicas=replicas, storage=settings.storage, max_age=max_age or None
        )
        specs.append(
            StreamSpec(
                name=dlq_stream_name(env, target),
                subjects=(f"{dlq_subject_prefix(env, target)}.>",),
                settings=dlq_settings,
            )
        )
    results = run(_ensure(options, specs))
    if options.json:
        echo_json(results)
        return
    echo_table(
        ("STREAM", "ACTION", "SUBJECTS", "REPLICAS"),
        [(r["name"], r["action"], r["subjects"], r["replicas"]) for r in results],
    )


async def _describe(options: CommonOptions, env: str, app_name: str | None) -> list[dict[str, Any]]:
    async with connect(options) as nc:
        jsm = nc.jsm(timeout=options.timeout)
        found = []
        refused: list[str] = []
        for stream in await env_streams(jsm, env):
            name = stream.config.name or ""
            consumers = await permitted_consumers(jsm, name, watch_of(nc))
            if consumers is None:  # the user may not list them
                refused.append(name)
                consumers = []
            if app_name is None or _belongs_to(stream, consumers, env, app_name):
                found.append(_stream_dict(stream, consumers))
        if refused and app_name is None:
            # With --app, a user made for the app lists exactly the app's streams.
            echo_warning(f"no permission to list the consumers of {', '.join(refused)}: not shown")
        return found


def _belongs_to(stream: StreamInfo, consumers: list[ConsumerInfo], env: str, app: str) -> bool:
    own = (stream_name(env, app), dlq_stream_name(env, app))
    return stream.config.name in own or any(is_app_consumer(app, c.name) for c in consumers)


def _stream_dict(stream: StreamInfo, consumers: list[ConsumerInfo]) -> dict[str, Any]:
    config, state = stream.config, stream.state
    return {
        "name": config.name,
        "subjects": list(config.subjects or ()),
        "replicas": config.num_replicas,
        "storage": config.storage,  # a str (enum or not): JSON writes its value
        "max_age": config.max_age,
        "messages": state.messages,
        "bytes": state.bytes,
        "first_seq": state.first_seq,
        "last_seq": state.last_seq,
        "consumers": [_consumer_dict(c) for c in sorted(consumers, key=lambda c: c.name)],
    }


def _consumer_dict(consumer: ConsumerInfo) -> dict[str, Any]:
    config = consumer.config
    return {
        "name": consumer.name,
        "filter_subject": config.filter_subject or list(config.filter_subjects or ()) or None,
        "ack_wait": config.ack_wait,
        "max_deliver": config.max_deliver,
        "num_pending": consumer.num_pending or 0,
        "num_ack_pending": consumer.num_ack_pending or 0,
        "num_redelivered": consumer.num_redelivered or 0,
        "num_waiting": consumer.num_waiting or 0,
    }


async def _ensure(options: CommonOptions, specs: list[StreamSpec]) -> list[dict[str, Any]]:
    async with connect(options) as nc:
        jsm = nc.jsm(timeout=options.timeout)
        return [await _ensure_one(jsm, spec) for spec in specs]


async def _ensure_one(jsm: JetStreamManager, spec: StreamSpec) -> dict[str, Any]:
    try:
        before = list((await jsm.stream_info(spec.name)).config.subjects or ())
    except NotFoundError:
        before = None
    info = await ensure_stream(jsm, spec)
    subjects = list(info.config.subjects or ())
    if before is None:
        action = "created"
    elif added := [s for s in subjects if s not in before]:
        action = f"added {', '.join(added)}"
    else:
        action = "unchanged"
    return {
        "name": spec.name,
        "action": action,
        "subjects": subjects,
        "replicas": info.config.num_replicas,
        "max_age": info.config.max_age,
    }
