"""``natspubsub dlq ls|show|replay|purge``: the dead-letter queue of one consuming app."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any

import nats.errors
import typer
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..codecs.display import describe
from ..dlq import DeadLetterRecord
from ..dlq_admin import DeadLetterNotFoundError, DeadLetterQueue
from ..errors import NatsPubsubError
from ..subjects import validate_topic
from .options import (
    EXIT_FAILED,
    CliError,
    CommonOptions,
    common_options,
    connect,
    duration_option,
    run,
    since_option,
    translate,
)
from .output import echo_error, echo_json, echo_table, shorten

if TYPE_CHECKING:
    from ..publishing import PublishResult

__all__ = ("app",)

app = typer.Typer(
    help="Dead-letter records of --app (the consuming app): list, show, replay, purge.",
    no_args_is_help=True,
)

EventId = Annotated[
    str | None,
    typer.Argument(
        metavar="EVENT_ID",
        help="Event id of the record (the newest record of that event).",
        show_default=False,
    ),
]
Seq = Annotated[
    int | None,
    typer.Option(
        "--seq",
        min=1,
        help="The record's sequence in the DLQ stream instead of an event id.",
        show_default=False,
    ),
]
Topic = Annotated[
    str | None,
    typer.Option(
        help="Only records of this original topic (wildcards * and > allowed).", show_default=False
    ),
]


@app.command("ls")
@common_options
def list_records(
    options: CommonOptions,
    topic: Topic = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Dead-lettered at or after: ISO-8601 time or a duration ago (1h, 30m, 2d).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="At most this many records, oldest first.")
    ] = 100,
) -> None:
    """List dead-letter records, oldest first."""
    after = since_option(since, "--since") if since is not None else None
    topic = _topic(topic)
    records = run(_list(options, topic, after, limit))
    if options.json:
        echo_json([_record_dict(r) for r in records])
        return
    if not records:
        typer.echo("no dead-letter records")
        return
    echo_table(
        ("SEQ", "EVENT ID", "SUBJECT", "REASON", "ATTEMPTS", "DEAD-LETTERED AT", "ERROR"),
        [
            (
                r.dlq_seq,
                r.event_id,
                r.original_subject,
                r.reason,
                r.attempts,
                r.dead_lettered_at,
                _error_line(r),
            )
            for r in records
        ],
    )


@app.command()
@common_options
def show(
    options: CommonOptions,
    event_id: EventId = None,
    seq: Seq = None,
    imports: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            help="Python module with generated protobuf classes (e.g. orders_pb2), so "
            "protobuf messages are shown decoded; repeatable.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show one record in full: error, traceback, headers and the original envelope."""
    _one_of(event_id, seq)
    _import_protobuf_modules(imports or [])
    record = run(_get(options, event_id, seq))
    decoded = _decoded(record)
    if options.json:
        echo_json({**_record_dict(record), "decoded_envelope": decoded})
        return
    fields = [
        ("event id", record.event_id),
        ("reason", record.reason),
        ("subject", record.original_subject),
        ("stream", f"{record.original_stream} seq {record.original_seq}"),
        ("consumer", record.consumer),
        ("attempts", record.attempts),
        ("first failure", record.first_failure_at),
        ("last failure", record.last_failure_at),
        ("dead-lettered", f"{record.dead_lettered_at} by {record.app} on {record.host}"),
        ("dlq seq", record.dlq_seq),
        ("replayed before", _replay_count(record)),
        ("error", _error_text(record)),
    ]
    width = max(len(name) for name, _ in fields) + 2
    for name, value in fields:
        typer.echo(f"{name + ':':<{width}}{'-' if value is None else value}")
    typer.echo("headers:")
    for key, value in record.headers.items():
        typer.echo(f"  {key}: {value}")
    if record.envelope is not None:
        typer.echo("envelope:")
        echo_json(record.envelope)
    else:
        if decoded is not None:  # another codec's bytes, kept as received
            typer.echo(f"envelope ({record.content_type}, decoded):")
            echo_json(decoded)
        typer.echo(f"raw body (base64): {record.raw_base64}")
    if record.traceback:
        typer.echo("traceback:")
        typer.echo(record.traceback.rstrip())


@app.command()
@common_options
def replay(
    options: CommonOptions,
    event_id: EventId = None,
    seq: Seq = None,
    all_records: Annotated[
        bool, typer.Option("--all", help="Replay every record (of --topic, if given).")
    ] = False,
    topic: Topic = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be replayed.")
    ] = False,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the records in the DLQ after replaying.")
    ] = False,
) -> None:
    """Publish records' events again to their original subjects, then drop the records.

    The event keeps its event id; the envelope's metadata records the replay.
    """
    if all_records:
        if event_id is not None or seq is not None:
            raise CliError("give an EVENT_ID, --seq or --all, not several")
    else:
        _one_of(event_id, seq, also="--all")
        if topic is not None:
            raise CliError("--topic goes with --all")
    replayed, failures = run(
        _replay(options, event_id, seq, all_records, _topic(topic), dry_run, keep)
    )
    if options.json:
        echo_json(replayed)
    elif not replayed and not failures:
        typer.echo("nothing to replay")
    else:
        for item in replayed:
            if dry_run:
                typer.echo(f"would replay {_name(item)} to {item['subject']}")
            else:
                typer.echo(
                    f"replayed {_name(item)} to {item['subject']} "
                    f"(stream {item['stream']} seq {item['seq']})"
                )
    for failure in failures:
        echo_error(failure)
    if failures:
        raise typer.Exit(EXIT_FAILED)


@app.command()
@common_options
def purge(
    options: CommonOptions,
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Only records dead-lettered longer ago than this (7d, 12h...).", show_default=False
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete; required.")] = False,
) -> None:
    """Delete records: all of them, or those older than --older-than."""
    cutoff = None
    if older_than is not None:
        cutoff = datetime.now(timezone.utc) - duration_option(older_than, "--older-than")
    if not yes:
        raise CliError("purge deletes dead-letter records for good; add --yes to confirm")
    stream, removed = run(_purge(options, cutoff))
    if options.json:
        echo_json({"stream": stream, "purged": removed})
    else:
        typer.echo(f"purged {removed} record{'' if removed == 1 else 's'} from {stream}")


# -- async bodies -----------------------------------------------------------------------


@asynccontextmanager
async def _opened(options: CommonOptions) -> AsyncIterator[DeadLetterQueue]:
    """The DLQ of --app; a missing stream is an error here (a typo must not look empty)."""
    env, app_name = options.require_env(), options.require_app()
    async with connect(options) as nc:
        dlq = DeadLetterQueue(nc.jetstream(timeout=options.timeout), env=env, app=app_name)
        try:
            await dlq.js.stream_info(dlq.stream)
        except NotFoundError:
            raise CliError(
                f"no dead-letter stream {dlq.stream} (check --env and --app)", EXIT_FAILED
            ) from None
        yield dlq


async def _list(
    options: CommonOptions, topic: str | None, since: datetime | None, limit: int
) -> list[DeadLetterRecord]:
    async with _opened(options) as dlq:
        return await dlq.list(topic=topic, since=since, limit=limit)


async def _get(options: CommonOptions, event_id: str | None, seq: int | None) -> DeadLetterRecord:
    async with _opened(options) as dlq:
        return await _find(dlq, event_id, seq)


async def _find(dlq: DeadLetterQueue, event_id: str | None, seq: int | None) -> DeadLetterRecord:
    if event_id is not None:
        return await dlq.get(event_id)
    assert seq is not None
    try:
        raw = await dlq.js.get_msg(dlq.stream, seq=seq)
    except NotFoundError:
        raise DeadLetterNotFoundError(
            f"no dead-letter record at seq {seq} of {dlq.stream}"
        ) from None
    if raw.data is None:
        raise DeadLetterNotFoundError(f"no dead-letter record at seq {seq} of {dlq.stream}")
    return DeadLetterRecord.from_json(raw.data, dlq_seq=raw.seq)


async def _replay(
    options: CommonOptions,
    event_id: str | None,
    seq: int | None,
    all_records: bool,
    topic: str | None,
    dry_run: bool,
    keep: bool,
) -> tuple[list[dict[str, Any]], list[str]]:
    async with _opened(options) as dlq:
        if all_records:
            # Collected first: replaying deletes records from the stream being read.
            records = [record async for record in dlq.records(topic=topic)]
        else:
            records = [await _find(dlq, event_id, seq)]
        if dry_run:
            return [_planned(r) for r in records], []
        replayed: list[dict[str, Any]] = []
        failures: list[str] = []
        console = Console(stderr=True)
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
            # Only for people watching many replays; pipes and logs get the result lines.
            disable=len(records) < 2 or options.json or not console.is_terminal,
        ) as progress:
            task = progress.add_task("replay", total=len(records))
            for record in records:
                try:
                    result = await dlq.replay(record, keep=keep, timeout=options.timeout)
                except (NatsPubsubError, nats.errors.Error, TimeoutError) as exc:
                    failures.append(
                        f"replay of {_name(_planned(record))} failed: {translate(exc).message}"
                    )
                else:
                    replayed.append(_replayed(record, result))
                progress.advance(task)
        return replayed, failures


async def _purge(options: CommonOptions, cutoff: datetime | None) -> tuple[str, int]:
    async with _opened(options) as dlq:
        return dlq.stream, await dlq.purge(older_than=cutoff)


# -- helpers --------------------------------------------------------------------------


def _one_of(event_id: str | None, seq: int | None, *, also: str | None = None) -> None:
    if (event_id is None) == (seq is None):
        choices = "an EVENT_ID or --seq" + (f" or {also}" if also else "")
        raise CliError(f"give {choices}" + (", not both" if event_id is not None else ""))


def _topic(topic: str | None) -> str | None:
    return validate_topic(topic) if topic is not None else None


def _record_dict(record: DeadLetterRecord) -> dict[str, Any]:
    return {**dataclasses.asdict(record), "topic": record.topic}


def _planned(record: DeadLetterRecord) -> dict[str, Any]:
    return {
        "event_id": record.event_id,
        "dlq_seq": record.dlq_seq,
        "subject": record.original_subject,
        "stream": None,
        "seq": None,
        "duplicate": False,
    }


def _replayed(record: DeadLetterRecord, result: PublishResult) -> dict[str, Any]:
    return {
        "event_id": result.event_id,
        "dlq_seq": record.dlq_seq,
        "subject": result.subject,
        "stream": result.stream,
        "seq": result.seq,
        "duplicate": result.duplicate,
    }


def _name(item: dict[str, Any]) -> str:
    return f"event {item['event_id']}" if item["event_id"] else f"record seq {item['dlq_seq']}"


def _import_protobuf_modules(modules: list[str]) -> None:
    """Import generated modules: their message types become known to ``dlq show``."""
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CliError(f"--import {module}: {exc}") from None


def _decoded(record: DeadLetterRecord) -> dict[str, Any] | None:
    """The envelope of a record kept as raw bytes, decoded by its content type, for display."""
    if record.envelope is not None or record.raw_base64 is None:
        return None
    return describe(record.original_bytes, record.headers)


def _replay_count(record: DeadLetterRecord) -> int:
    # A replayed event that failed again carries the count in its envelope's metadata.
    metadata = (record.envelope or {}).get("metadata") or {}
    return int(metadata.get("replay_count", 0))


def _error_text(record: DeadLetterRecord) -> str | None:
    if record.error_type and record.error_message:
        return f"{record.error_type}: {record.error_message}"
    return record.error_type or record.error_message


def _error_line(record: DeadLetterRecord) -> str:
    return shorten(_error_text(record))
