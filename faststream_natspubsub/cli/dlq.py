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
from ..dlq_admin import DeadLetterQueue
from ..errors import DeadLetterRecordError, NatsPubsubError, ReplayRefusedError
from ..replay import replay_count, replay_target
from ..subjects import validate_topic
from .options import (
    EXIT_FAILED,
    CliError,
    CommonOptions,
    common_options,
    connect,
    duration_option,
    permission_violation,
    run,
    since_option,
    translate,
    watch_of,
)
from .output import echo, echo_error, echo_json, echo_table, echo_warning, shorten

if TYPE_CHECKING:
    from nats.aio.client import Client

    from ..dlq_record import DeadLetterRecord
    from ..replay import ReplayResult

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
        echo("no dead-letter records")
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
    envelope = _displayed_envelope(record)
    if options.json:
        decoded = envelope if record.envelope is None else None
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
        ("replayed before", replay_count(record)),
        ("body", _body_line(record)),
        ("error", _error_text(record)),
    ]
    width = max(len(name) for name, _ in fields) + 2
    for name, value in fields:
        echo(f"{name + ':':<{width}}{'-' if value is None else value}")
    echo("headers:")
    for key, value in record.headers.items():
        echo(f"  {key}: {value}")
    if envelope is not None:
        if record.envelope is not None:
            echo("envelope:")
        else:  # decoded from the kept bytes, whatever their codec
            echo(f"envelope ({record.content_type or 'application/json'}, decoded):")
        echo_json(envelope)
    else:
        echo(f"raw body (base64): {record.raw_base64}")
    if record.traceback:
        echo("traceback:")
        echo(record.traceback.rstrip(), keep_newlines=True)


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
    """Publish records' events again to the subjects they were dead-lettered from.

    The body is sent exactly as received and headers record the replay; a record whose
    subject is not an event subject of --env is refused. Then the records are dropped.
    """
    if all_records:
        if event_id is not None or seq is not None:
            raise CliError("give an EVENT_ID, --seq or --all, not several")
    else:
        _one_of(event_id, seq, also="--all")
        if topic is not None:
            raise CliError("--topic goes with --all")
    outcomes, skipped = run(
        _replay(options, event_id, seq, all_records, _topic(topic), dry_run, keep)
    )
    for entry in skipped:
        echo_warning(entry)
    if options.json:
        echo_json(outcomes)
    elif not outcomes:
        echo("nothing to replay")
    for item in outcomes:
        _report(item, dry_run=dry_run, json=options.json)
    if any(item["outcome"] not in _DONE for item in outcomes):
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
        echo(f"purged {removed} record{'' if removed == 1 else 's'} from {stream}")


# -- async bodies -----------------------------------------------------------------------

# Outcomes of a replay that need nothing more from the operator.
_DONE = frozenset({"replayed", "planned"})


@asynccontextmanager
async def _opened(options: CommonOptions) -> AsyncIterator[tuple[Client, DeadLetterQueue]]:
    """The DLQ of --app; a missing stream is an error here (a typo must not look empty)."""
    env, app_name = options.require_env(), options.require_app()
    async with connect(options) as nc:
        dlq = DeadLetterQueue(
            nc.jetstream(timeout=options.timeout), env=env, app=app_name, watch=watch_of(nc)
        )
        try:
            await dlq.js.stream_info(dlq.stream)
        except NotFoundError:
            raise CliError(
                f"no dead-letter stream {dlq.stream} (check --env and --app)", EXIT_FAILED
            ) from None
        yield nc, dlq


async def _list(
    options: CommonOptions, topic: str | None, since: datetime | None, limit: int
) -> list[DeadLetterRecord]:
    async with _opened(options) as (_, dlq):
        records = await dlq.list(topic=topic, since=since, limit=limit)
        _warn_skipped(dlq)
        return records


async def _get(options: CommonOptions, event_id: str | None, seq: int | None) -> DeadLetterRecord:
    async with _opened(options) as (_, dlq):
        return await _find(dlq, event_id, seq)


async def _find(dlq: DeadLetterQueue, event_id: str | None, seq: int | None) -> DeadLetterRecord:
    if event_id is not None:
        return await dlq.get(event_id)
    assert seq is not None
    return await dlq.get_by_seq(seq)


async def _replay(
    options: CommonOptions,
    event_id: str | None,
    seq: int | None,
    all_records: bool,
    topic: str | None,
    dry_run: bool,
    keep: bool,
) -> tuple[list[dict[str, Any]], list[str]]:
    async with _opened(options) as (nc, dlq):
        if all_records:
            # Collected first: replaying deletes records from the stream being read.
            records = [record async for record in dlq.records(topic=topic)]
        else:
            records = [await _find(dlq, event_id, seq)]
        skipped = [_skipped_line(dlq, entry.seq, entry.reason) for entry in dlq.skipped]
        if dry_run:
            return [_planned(dlq, r) for r in records], skipped
        outcomes: list[dict[str, Any]] = []
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
            refused_delete: str | None = None
            for record in records:
                item = await _replay_one(nc, dlq, record, keep, refused_delete, options.timeout)
                refused_delete = refused_delete or item.pop("refused_delete", None)
                outcomes.append(item)
                progress.advance(task)
        return outcomes, skipped


async def _replay_one(
    nc: Client,
    dlq: DeadLetterQueue,
    record: DeadLetterRecord,
    keep: bool,
    refused_delete: str | None,
    timeout: float,
) -> dict[str, Any]:
    """Replay one record; what happened, as a dict for the report (never raises).

    ``refused_delete`` is set once the server refused a deletion for lack of permission:
    the records that follow are then not deleted (each would wait for the timeout).
    """
    item = _outcome(record, "failed")
    try:
        result = await dlq.replay(record, keep=keep or refused_delete is not None, timeout=timeout)
    except (NatsPubsubError, nats.errors.Error, TimeoutError, OSError) as exc:
        refused = isinstance(exc, ReplayRefusedError | DeadLetterRecordError)
        item["outcome"], item["detail"] = "refused" if refused else "failed", translate(exc).message
        return item
    item.update(_published(result))
    if result.record_deleted or (keep and refused_delete is None):
        item["outcome"] = "replayed"
        return item
    item["outcome"] = "replayed_kept"
    if refused_delete is not None:
        item["detail"] = f"record kept: {refused_delete}"
        return item
    violation = permission_violation(nc, f"$JS.API.STREAM.MSG.DELETE.{dlq.stream}")
    if violation is not None:
        item["refused_delete"] = f"no permission to delete it ({violation})"
        item["detail"] = f"record kept: {item['refused_delete']}"
    else:
        item["detail"] = f"record kept: {result.delete_error}"
    return item


async def _purge(options: CommonOptions, cutoff: datetime | None) -> tuple[str, int]:
    async with _opened(options) as (_, dlq):
        removed = await dlq.purge(older_than=cutoff)
        _warn_skipped(dlq)
        return dlq.stream, removed


# -- helpers --------------------------------------------------------------------------


def _one_of(event_id: str | None, seq: int | None, *, also: str | None = None) -> None:
    if (event_id is None) == (seq is None):
        choices = "an EVENT_ID or --seq" + (f" or {also}" if also else "")
        raise CliError(f"give {choices}" + (", not both" if event_id is not None else ""))


def _topic(topic: str | None) -> str | None:
    return validate_topic(topic) if topic is not None else None


def _warn_skipped(dlq: DeadLetterQueue) -> None:
    for entry in dlq.skipped:
        echo_warning(_skipped_line(dlq, entry.seq, entry.reason))


def _skipped_line(dlq: DeadLetterQueue, seq: int, reason: str) -> str:
    return f"skipped {dlq.stream} seq {seq}: not a dead-letter record ({reason})"


def _record_dict(record: DeadLetterRecord) -> dict[str, Any]:
    return {**dataclasses.asdict(record), "topic": record.topic}


def _outcome(record: DeadLetterRecord, outcome: str) -> dict[str, Any]:
    return {
        "event_id": record.event_id,
        "dlq_seq": record.dlq_seq,
        "subject": record.original_subject,
        "outcome": outcome,
        "detail": None,
        "stream": None,
        "seq": None,
        "duplicate": False,
    }


def _planned(dlq: DeadLetterQueue, record: DeadLetterRecord) -> dict[str, Any]:
    item = _outcome(record, "planned")
    try:
        item["subject"] = replay_target(record, env=dlq.env, prefix=dlq.subject_prefix).subject
    except NatsPubsubError as exc:
        item["outcome"], item["detail"] = "refused", str(exc)
    return item


def _published(result: ReplayResult) -> dict[str, Any]:
    return {
        "event_id": result.event_id,
        "subject": result.subject,
        "stream": result.stream,
        "seq": result.seq,
        "duplicate": result.duplicate,
    }


def _report(item: dict[str, Any], *, dry_run: bool, json: bool) -> None:
    """The line for one record: stdout for what was done, stderr for what was not."""
    name = _name(item)
    outcome = item["outcome"]
    if outcome in ("refused", "failed"):
        echo_error(f"replay of {name} {outcome}: {item['detail']}")
    elif json:
        if outcome == "replayed_kept":
            echo_warning(f"{name} was replayed to {item['subject']}, {item['detail']}")
    elif dry_run:
        echo(f"would replay {name} to {item['subject']}")
    else:
        where = f"(stream {item['stream']} seq {item['seq']})"
        echo(f"replayed {name} to {item['subject']} {where}")
        if outcome == "replayed_kept":
            echo_warning(f"{name} was replayed, {item['detail']}")


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


def _body_line(record: DeadLetterRecord) -> str:
    if record.raw_size is None:
        return "kept as the decoded envelope (a record of an earlier version)"
    kept = "kept whole" if not record.raw_truncated else f"first {len(record.raw_head)} kept"
    return f"{record.raw_size} bytes ({kept}), sha256 {record.raw_sha256}"


def _displayed_envelope(record: DeadLetterRecord) -> dict[str, Any] | None:
    """The stored envelope, or one decoded from the kept bytes by their content type, whatever
    the codec (bounded, like a consumer); None when the bytes are not an envelope."""
    if record.envelope is not None or record.raw_truncated or record.raw_base64 is None:
        return record.envelope
    return describe(record.raw_head, record.headers)


def _error_text(record: DeadLetterRecord) -> str | None:
    if record.error_type and record.error_message:
        return f"{record.error_type}: {record.error_message}"
    return record.error_type or record.error_message


def _error_line(record: DeadLetterRecord) -> str:
    return shorten(_error_text(record))
