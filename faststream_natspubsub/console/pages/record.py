"""One record in full, with its replay and purge dialogs."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from ..html import (
    Html,
    age,
    escape,
    escape_block,
    format_time,
    join,
    pretty_json,
    render,
    url,
)
from ..index import UNREADABLE
from .common import (
    NOTHING,
    PageContext,
    action_form,
    layout,
    reason_badge,
    table,
)

if TYPE_CHECKING:
    from ..query import LoadedRecord

__all__ = ("record_page",)


def record_page(
    ctx: PageContext,
    loaded: LoadedRecord,
    *,
    others: list[int],
    key: str,
) -> Html:
    """One record in full: facts, error, traceback, replay history, envelope, headers."""
    record = loaded.record
    reason = record.reason if record is not None and isinstance(record.reason, str) else ""
    header_reason = loaded.headers.get("x-dlq-reason", "")
    parts = [
        render(
            '<p class="crumbs"><a href="{back}">Dead letters</a> / record {seq}</p>'
            '<div class="record-head"><h1>Record {seq} {badge}</h1>{actions}</div>',
            back=url({"view": "dlq"}),
            seq=loaded.seq,
            badge=reason_badge(UNREADABLE if record is None else reason or header_reason),
            actions=_record_actions(ctx, loaded, key) if ctx.actions else NOTHING,
        )
    ]
    if record is None:
        parts.append(render('<p class="alert bad">{p}</p>', p=loaded.problem or "not a record"))
        parts.append(_raw_body(loaded.data))
        parts.append(_headers_table("Headers of the DLQ message", loaded.headers))
        return layout(ctx, f"Record {loaded.seq}", join(parts))
    if header_reason and reason and header_reason != reason:
        parts.append(
            render(
                '<p class="alert warn">The header says reason {h}, the record says {r}: '
                "the record was not written by this package as is.</p>",
                h=header_reason,
                r=reason,
            )
        )
    parts.append(_facts(loaded))
    parts.append(_error(record))
    parts.append(_history(record, others, loaded.seq))
    if isinstance(record.envelope, dict):
        parts.append(
            render(
                '<section><h2>Envelope</h2><pre class="json">{json}</pre></section>',
                json=escape_block(pretty_json(record.envelope)),
            )
        )
    elif record.raw_base64 is not None:
        parts.append(_raw_body(_b64(record.raw_base64), title="Original body (not an envelope)"))
    headers = record.headers if isinstance(record.headers, dict) else {}
    parts.append(_headers_table("Headers of the original event", headers))
    parts.append(_headers_table("Headers of the DLQ message", loaded.headers))
    return layout(ctx, f"Record {loaded.seq}", join(parts))


def _facts(loaded: LoadedRecord) -> Html:
    record = loaded.record
    assert record is not None
    stream = f"{record.original_stream or '-'} seq {record.original_seq or '-'}"
    items = [
        ("Event id", record.event_id),
        ("Original subject", record.original_subject),
        ("Stream", stream),
        ("Consumer", record.consumer),
        ("Attempts", record.attempts),
        ("First failure", record.first_failure_at),
        ("Last failure", record.last_failure_at),
        ("Dead-lettered", f"{record.dead_lettered_at} by {record.app} on {record.host}"),
        ("Stored in the DLQ", f"{format_time(loaded.stored_at)} ({age(loaded.stored_at)})"),
        ("DLQ subject", loaded.subject),
    ]
    rows = join(
        render("<dt>{name}</dt><dd>{value}</dd>", name=name, value="-" if value is None else value)
        for name, value in items
    )
    return render('<section><dl class="facts">{rows}</dl></section>', rows=rows)


def _error(record: Any) -> Html:
    heading = escape(record.error_type or "Error")
    message = escape_block(record.error_message or "(no message)")
    trace = NOTHING
    if record.traceback:
        trace = render(
            '<details class="traceback" open><summary>Traceback</summary><pre>{tb}</pre></details>',
            tb=escape_block(record.traceback),
        )
    return render(
        '<section><h2>Error</h2><div class="error-box"><strong>{h}</strong><pre>{m}</pre></div>'
        "{tb}</section>",
        h=heading,
        m=message,
        tb=trace,
    )


def _history(record: Any, others: list[int], seq: int) -> Html:
    envelope = _mapping(record.envelope)
    metadata = _mapping(envelope.get("metadata"))
    count = metadata.get("replay_count", 0)
    last = _mapping(metadata.get("dlq_replay")) or None
    lines = []
    if count:
        lines.append(render("<li>Replayed {n} time(s) before it failed again.</li>", n=count))
    if last is not None:
        lines.append(
            render(
                "<li>Last replay: {at}, from {stream} record {dlq_seq} "
                "(reason then: {reason}).</li>",
                at=last.get("replayed_at", "-"),
                stream=last.get("dlq_stream", "-"),
                dlq_seq=last.get("dlq_seq", "-"),
                reason=last.get("reason", "-"),
            )
        )
    other = [s for s in others if s != seq]
    if other:
        link = '<a href="{h}">{s}</a>'
        links = join((render(link, h=url({"view": "record", "seq": s}), s=s) for s in other), ", ")
        lines.append(render("<li>Other records of this event in the DLQ: {l}.</li>", l=links))
    if not lines:
        lines.append(Html("<li>Never replayed; no other record of this event.</li>"))
    return render(
        '<section><h2>Replay history</h2><ul class="history">{l}</ul></section>', l=join(lines)
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _headers_table(title: str, headers: dict[Any, Any]) -> Html:
    if not headers:
        return render('<section><h2>{t}</h2><p class="empty">None.</p></section>', t=title)
    rows = [
        render('<tr><td class="mono">{k}</td><td class="mono">{v}</td></tr>', k=k, v=v)
        for k, v in headers.items()
    ]
    listing = table(("Name", "Value"), rows)
    return render("<section><h2>{t}</h2>{table}</section>", t=title, table=listing)


def _raw_body(data: bytes, *, title: str = "Stored body") -> Html:
    text = data[:20_000].decode("utf-8", "replace")
    return render(
        '<section><h2>{t}</h2><p class="muted">{n} bytes, shown as UTF-8 text.</p>'
        "<pre>{body}</pre></section>",
        t=title,
        n=f"{len(data):,}",
        body=escape_block(text),
    )


def _b64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        return str(value).encode("utf-8", "replace")


def _record_actions(ctx: PageContext, loaded: LoadedRecord, key: str) -> Html:
    replay = render(
        "<p>The original event is published again to its subject and this record is removed "
        "from the DLQ. The event keeps its event id.</p>{form}",
        form=action_form(ctx, "replay", key, {"seq": loaded.seq}, "Replay record"),
    )
    purge = render(
        "<p>This record is deleted from the DLQ for good. The event is not published.</p>{form}",
        form=action_form(ctx, "purge", key, {"seq": loaded.seq}, "Purge record", danger=True),
    )
    can_replay = loaded.record is not None
    return render(
        '<div class="actions">{replay_link}'
        '<a class="button danger" href="{purge_href}" data-dialog="dialog-purge">Purge…</a></div>'
        "{replay_dialog}{purge_dialog}",
        replay_link=render(
            '<a class="button" href="{h}" data-dialog="dialog-replay">Replay…</a>',
            h=url({"view": "confirm", "action": "replay", "seq": loaded.seq}),
        )
        if can_replay
        else NOTHING,
        purge_href=url({"view": "confirm", "action": "purge", "seq": loaded.seq}),
        replay_dialog=_dialog("dialog-replay", f"Replay record {loaded.seq}?", replay, danger=False)
        if can_replay
        else NOTHING,
        purge_dialog=_dialog("dialog-purge", f"Purge record {loaded.seq}?", purge, danger=True),
    )


def _dialog(element_id: str, title: str, content: Html, *, danger: bool) -> Html:
    return render(
        '<dialog id="{id}" class="confirm{cls}" aria-labelledby="{id}-title">'
        '<h2 id="{id}-title">{t}</h2>{content}</dialog>',
        id=element_id,
        cls="" if danger else " safe",
        t=title,
        content=content,
    )
