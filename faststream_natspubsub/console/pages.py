"""The console's pages, rendered on the server; every value from a record goes through escape."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from ..dlq import DeadLetterReason
from ..health import HealthStatus
from .html import (
    Html,
    age,
    duration,
    escape,
    escape_block,
    format_bytes,
    format_count,
    format_time,
    join,
    pretty_json,
    render,
    url,
)
from .index import UNREADABLE

if TYPE_CHECKING:
    from .actions import ActionRequest
    from .index import IndexEntry
    from .overview import Overview
    from .query import DeadLetterFilter, LoadedRecord, Page

__all__ = (
    "PageContext",
    "confirm_page",
    "dlq_page",
    "error_page",
    "indexing_page",
    "job_page",
    "layout",
    "login_page",
    "overview_page",
    "record_page",
)

# CSS class per known reason; anything else (records are untrusted) gets the neutral one.
_REASON_CLASS: Final = {
    UNREADABLE: "reason-unreadable",
    DeadLetterReason.PERMANENT_ERROR.value: "reason-permanent",
    DeadLetterReason.MAX_ATTEMPTS_EXCEEDED.value: "reason-attempts",
    DeadLetterReason.MALFORMED.value: "reason-malformed",
    DeadLetterReason.MAX_DELIVER_EXCEEDED.value: "reason-deliver",
}
_STATUS_CLASS: Final = {
    HealthStatus.HEALTHY: "ok",
    HealthStatus.DEGRADED: "warn",
    HealthStatus.UNHEALTHY: "bad",
}
# How the filter's fields are named on a confirmation.
_FILTER_LABELS: Final = {
    "topic": "topic",
    "source_app": "from app",
    "reason": "reason",
    "since": "stored since",
    "until": "stored until",
    "q": "error text",
}
# Characters of an error shown in a list row.
_ERROR_CELL: Final = 140
# An outbox row pending longer than this (seconds) is shown as lagging.
OUTBOX_LAG_WARNING: Final = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PageContext:
    """What every page needs besides its data."""

    env: str
    app: str
    operator: str | None
    csrf: str
    actions: bool
    """Whether actions are enabled (and the operator may use them)."""
    login: bool
    """Whether operators log in on the console's form (so a logout button makes sense)."""
    asset_version: str
    view: str = "overview"


_NOTHING: Final = Html("")


def layout(ctx: PageContext, title: str, body: Html, *, head: Html = _NOTHING) -> Html:
    """The page frame: top bar, navigation, who is logged in, the body."""
    nav = join(
        render(
            '<a href="{href}"{current}>{label}</a>',
            href=url({"view": view}),
            current=Html(' aria-current="page"') if ctx.view == view else _NOTHING,
            label=label,
        )
        for view, label in (("overview", "Overview"), ("dlq", "Dead letters"))
    )
    mode = (
        Html('<span class="mode mode-actions">actions enabled</span>')
        if ctx.actions
        else Html('<span class="mode">read-only</span>')
    )
    who = _NOTHING
    if ctx.operator:
        logout = _NOTHING
        if ctx.login:
            logout = render(
                '<form method="post" class="inline"><input type="hidden" name="do" value="logout">'
                '<input type="hidden" name="csrf" value="{csrf}">'
                '<button class="link" type="submit">log out</button></form>',
                csrf=ctx.csrf,
            )
        who = render(
            '<span class="operator">{name}</span>{logout}', name=ctx.operator, logout=logout
        )
    return render(
        """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title} · {env}/{app} · natspubsub</title>
<link rel="stylesheet" href="{css}">
<script src="{js}" defer></script>
{head}</head>
<body>
<header class="topbar">
<div class="brand">natspubsub <span>console</span></div>
<nav>{nav}</nav>
<div class="scope"><span class="app">{env} / {app}</span>{mode}{who}</div>
</header>
<main>
{body}
</main>
<footer>faststream-natspubsub operations console</footer>
</body></html>
""",
        title=title,
        env=ctx.env,
        app=ctx.app,
        css=url({"asset": "console.css", "v": ctx.asset_version}),
        js=url({"asset": "console.js", "v": ctx.asset_version}),
        head=head,
        nav=nav,
        mode=mode,
        who=who,
        body=body,
    )


# -- overview ------------------------------------------------------------------------------


def overview_page(ctx: PageContext, ov: Overview) -> Html:
    """Streams, consumers, dead letters by reason and topic, and the outbox when there is one."""
    total = ov.dlq.records
    degraded = sum(1 for c in ov.consumers if c.status is not HealthStatus.HEALTHY)
    cards = [
        _card(
            "Dead letters",
            format_count(total),
            "bad" if total else "ok",
            "no DLQ stream yet"
            if not ov.dlq.exists
            else (f"oldest {age(ov.dlq_times[0])}" if ov.dlq_times else "none"),
            href=url({"view": "dlq"}),
        ),
        _card(
            "Newest dead letter",
            age(ov.dlq_times[1]) if ov.dlq_times else "-",
            "neutral",
            format_time(ov.dlq_times[1]) if ov.dlq_times else "",
        ),
        _card(
            "Consumers",
            format_count(len(ov.consumers)),
            "warn" if degraded else "ok",
            f"{degraded} lagging or redelivering" if degraded else "all keeping up",
        ),
    ]
    if ov.outbox_enabled:
        cards.append(_outbox_card(ov))
    body = [
        render("<h1>Overview <small>{env} / {app}</small></h1>", env=ov.env, app=ov.app),
        render('<section class="cards">{cards}</section>', cards=join(cards)),
    ]
    body += [render('<p class="alert warn">{text}</p>', text=p) for p in ov.problems]
    if ov.dlq.partial:
        body.append(
            render(
                '<p class="alert warn">The DLQ holds more records than the console indexes; '
                "counts cover records from seq {seq} on.</p>",
                seq=ov.dlq.covered_from,
            )
        )
    body.append(
        render(
            '<div class="columns"><section><h2>Dead letters by reason</h2>{reasons}</section>'
            "<section><h2>Dead letters by topic</h2>{topics}</section></div>",
            reasons=_by_reason(ov),
            topics=_by_topic(ov),
        )
    )
    body.append(render("<section><h2>Consumers</h2>{table}</section>", table=_consumers(ov)))
    body.append(render("<section><h2>Streams</h2>{table}</section>", table=_streams(ov)))
    return layout(ctx, "Overview", join(body))


def _card(title: str, value: str, tone: str, note: str, *, href: str | None = None) -> Html:
    inner = render(
        '<div class="card-title">{title}</div><div class="card-value">{value}</div>'
        '<div class="card-note">{note}</div>',
        title=title,
        value=value,
        note=note,
    )
    if href is not None:
        return render(
            '<a class="card tone-{tone}" href="{href}">{inner}</a>',
            tone=tone,
            href=href,
            inner=inner,
        )
    return render('<div class="card tone-{tone}">{inner}</div>', tone=tone, inner=inner)


def _outbox_card(ov: Overview) -> Html:
    if ov.outbox_error is not None:
        return _card("Outbox", "unavailable", "bad", ov.outbox_error)
    stats = ov.outbox
    assert stats is not None
    oldest = stats.oldest_pending_age
    tone = "bad" if stats.failed else "warn" if (oldest or 0) > OUTBOX_LAG_WARNING else "ok"
    note = f"oldest pending {duration(oldest)}" if oldest is not None else "nothing waiting"
    if stats.failed:
        note += f" · {stats.failed:,} failed"
    return _card("Outbox pending", format_count(stats.pending), tone, note)


def _by_reason(ov: Overview) -> Html:
    if not ov.dlq_by_reason:
        return Html('<p class="empty">No dead letters.</p>')
    top = max(ov.dlq_by_reason.values())
    rows = [
        render(
            '<tr><td><a href="{href}">{badge}</a></td><td class="num">{count}</td>'
            '<td class="bar"><meter min="0" max="{top}" value="{n}"></meter></td></tr>',
            href=url({"view": "dlq", "reason": reason}),
            badge=reason_badge(reason),
            count=format_count(count),
            top=top,
            n=count,
        )
        for reason, count in ov.dlq_by_reason.items()
    ]
    return _table(("Reason", "Records", ""), rows, numeric=(1,))


def _by_topic(ov: Overview) -> Html:
    if not ov.dlq_by_topic:
        return Html('<p class="empty">No dead letters.</p>')
    rows = [
        render(
            '<tr><td>{app}</td><td><a href="{href}">{topic}</a></td>'
            '<td class="num">{count}</td></tr>',
            app=source_app,
            href=url({"view": "dlq", "source_app": source_app, "topic": topic}),
            topic=topic,
            count=format_count(count),
        )
        for source_app, topic, count in ov.dlq_by_topic
    ]
    return _table(("From app", "Topic", "Records"), rows, numeric=(2,))


def _consumers(ov: Overview) -> Html:
    if not ov.consumers:
        return Html('<p class="empty">No consumers of this app on the server.</p>')
    rows = [
        render(
            '<tr><td>{stream}</td><td class="mono">{name}</td><td class="mono">{filter}</td>'
            '<td class="num">{pending}</td><td class="num">{ack}</td>'
            '<td class="num">{redelivered}</td><td class="num">{waiting}</td>'
            '<td><span class="status {tone}">{status}</span> {detail}</td></tr>',
            stream=c.stream,
            name=c.name,
            filter=c.filter_subject,
            pending=format_count(c.pending),
            ack=format_count(c.ack_pending),
            redelivered=format_count(c.redelivered),
            waiting=format_count(c.waiting),
            tone=_STATUS_CLASS[c.status],
            status=c.status.value,
            detail=c.detail,
        )
        for c in ov.consumers
    ]
    return _table(
        (
            "Stream",
            "Durable",
            "Filter",
            "Pending",
            "Ack pending",
            "Redelivered",
            "Waiting",
            "Status",
        ),
        rows,
        numeric=(3, 4, 5, 6),
    )


def _streams(ov: Overview) -> Html:
    rows = [
        render(
            '<tr><td class="mono">{name}</td><td>{role}</td><td class="mono">{subjects}</td>'
            '<td class="num">{messages}</td><td class="num">{size}</td>'
            '<td class="num">{consumers}</td></tr>',
            name=s.name,
            role=s.role,
            subjects=", ".join(s.subjects),
            messages=format_count(s.messages),
            size=format_bytes(s.bytes),
            consumers=s.consumers,
        )
        for s in ov.streams
    ]
    if not rows:
        return Html('<p class="empty">No streams of this app on the server yet.</p>')
    headers = ("Stream", "Role", "Subjects", "Messages", "Size", "Consumers")
    return _table(headers, rows, numeric=(3, 4, 5))


def _table(headers: tuple[str, ...], rows: list[Html], *, numeric: tuple[int, ...] = ()) -> Html:
    head = join(
        render("<th{cls}>{h}</th>", h=h, cls=Html(' class="num"') if i in numeric else _NOTHING)
        for i, h in enumerate(headers)
    )
    return render(
        '<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        "<tbody>{rows}</tbody></table></div>",
        head=head,
        rows=join(rows),
    )


def reason_badge(reason: str) -> Html:
    """A coloured label for a reason (the class comes from a fixed map, never from data)."""
    return render(
        '<span class="badge {cls}">{text}</span>',
        cls=_REASON_CLASS.get(reason, "reason-other"),
        text=reason or "unknown",
    )


# -- dead-letter list ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterChoices:
    """What the filter bar offers: reasons and topics seen in the DLQ."""

    reasons: list[str]
    topics: list[str]
    apps: list[str]


def dlq_page(
    ctx: PageContext,
    flt: DeadLetterFilter,
    page: Page | None,
    choices: FilterChoices,
    *,
    error: str | None = None,
    dlq_exists: bool = True,
) -> Html:
    """The list, newest first, with the filter bar, paging and bulk actions."""
    parts = [Html("<h1>Dead letters</h1>"), _filter_bar(flt, choices)]
    if error:
        parts.append(render('<p class="alert bad" role="alert">{error}</p>', error=error))
    if not dlq_exists:
        parts.append(Html('<p class="empty">This app has no dead-letter stream on the server.</p>'))
    if page is not None:
        parts.append(_summary(flt, page))
        if ctx.actions and page.rows:
            parts.append(_bulk_actions(flt, page))
        parts.append(_rows(page.rows))
        parts.append(_pager(flt, page))
    return layout(ctx, "Dead letters", join(parts))


def _filter_bar(flt: DeadLetterFilter, choices: FilterChoices) -> Html:
    reasons = sorted(set(choices.reasons) | {r.value for r in DeadLetterReason})
    options = join(
        render(
            '<option value="{value}"{selected}>{label}</option>',
            value=reason,
            label=reason or "unknown",
            selected=Html(" selected") if flt.reason == reason else _NOTHING,
        )
        for reason in reasons
    )
    topics = join(render('<option value="{v}"></option>', v=t) for t in choices.topics)
    apps = join(render('<option value="{v}"></option>', v=a) for a in choices.apps)
    query = flt.to_query()
    return render(
        """<form class="filters" method="get" role="search">
<input type="hidden" name="view" value="dlq">
<label>Topic<input name="topic" list="topics" value="{topic}"
 placeholder="order.* or order.>"></label>
<datalist id="topics">{topics}</datalist>
<label>From app<input name="source_app" list="apps" value="{source_app}" placeholder="any"></label>
<datalist id="apps">{apps}</datalist>
<label>Reason<select name="reason"><option value="">any</option>{options}</select></label>
<label>Since<input name="since" value="{since}" placeholder="1h, 2d or 2025-01-17T10:30Z"></label>
<label>Until<input name="until" value="{until}" placeholder="30m or an ISO time"></label>
<label class="grow">Error text<input name="q" type="search" value="{q}"
 placeholder="text in the error type or message"></label>
<div class="filter-buttons"><button type="submit">Filter</button>
<a class="button secondary" href="{clear}">Clear</a></div>
</form>""",
        topic=query.get("topic", ""),
        source_app=query.get("source_app", ""),
        since=query.get("since", ""),
        until=query.get("until", ""),
        q=query.get("q", ""),
        options=options,
        topics=topics,
        apps=apps,
        clear=url({"view": "dlq"}),
    )


def _summary(flt: DeadLetterFilter, page: Page) -> Html:
    text = f"{page.total:,} record{'' if page.total == 1 else 's'}"
    text += (" match" if page.total != 1 else " matches") if flt.active else " in the DLQ"
    if page.rows:
        text += f" · showing {len(page.rows)}, newest first"
    return render('<p class="summary" id="summary">{text}</p>', text=text)


def _bulk_actions(flt: DeadLetterFilter, page: Page) -> Html:
    count = f" {page.total:,}"
    common = {"view": "confirm", **flt.to_query(), "upto": page.upto}
    return render(
        '<div class="bulk"><span>All matching{count} records:</span>'
        '<a class="button" href="{replay}">Replay all…</a>'
        '<a class="button danger" href="{purge}">Purge all…</a></div>',
        count=count,
        replay=url({**common, "action": "replay"}),
        purge=url({**common, "action": "purge"}),
    )


def _rows(rows: list[IndexEntry]) -> Html:
    if not rows:
        return Html('<p class="empty">No dead letters match.</p>')
    body = [
        render(
            '<tr><td class="num"><a href="{href}">{seq}</a></td>'
            '<td class="when" title="{time}">{age}</td>'
            '<td><span class="muted">{app}/</span>{topic}</td>'
            '<td>{badge}</td><td class="num">{attempts}</td><td class="mono small">{event}</td>'
            '<td class="error-cell">{error}</td></tr>',
            href=url({"view": "record", "seq": entry.seq}),
            seq=entry.seq,
            time=format_time(_stored(entry)),
            age=age(_stored(entry)),
            app=_split_topic(entry.subject)[0],
            topic=_split_topic(entry.subject)[1],
            badge=reason_badge(entry.reason),
            attempts=entry.attempts,
            event=entry.event_id or "-",
            error=_error_cell(entry),
        )
        for entry in rows
    ]
    return _table(
        ("#", "Stored", "Topic", "Reason", "Attempts", "Event id", "Error"), body, numeric=(0, 4)
    )


def _error_cell(entry: IndexEntry) -> Html:
    if entry.reason == UNREADABLE:
        return render('<span class="muted">{p}</span>', p=entry.error_message)
    message = entry.error_message.strip()
    first = message.splitlines()[0] if message else ""
    if len(first) > _ERROR_CELL:
        first = first[: _ERROR_CELL - 1] + "…"
    return render("<strong>{t}</strong> {m}", t=entry.error_type, m=first)


def _pager(flt: DeadLetterFilter, page: Page) -> Html:
    links = []
    base = {"view": "dlq", **flt.to_query()}
    button = '<a class="button secondary" href="{h}"{rel}>{label}</a>'
    if page.newer is not None:
        newer = url({**base, "after": page.newer})
        links.append(render(button, h=newer, rel=_NOTHING, label="← Newer"))
    links.append(render(button, h=url(base), rel=_NOTHING, label="Newest"))
    if page.older is not None:
        older = url({**base, "before": page.older})
        links.append(render(button, h=older, rel=Html(' rel="next"'), label="Older →"))
    return render('<nav class="pager">{links}</nav>', links=join(links))


def _stored(entry: IndexEntry) -> datetime:
    return datetime.fromtimestamp(entry.time_ns / 1e9, timezone.utc)


def _split_topic(subject: str) -> tuple[str, str]:
    # dlq.<env>.<app>.<source app>.<topic...>
    parts = subject.split(".", 4)
    return (parts[3], parts[4]) if len(parts) == 5 else ("?", subject)


# -- one record ------------------------------------------------------------------------------


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
            actions=_record_actions(ctx, loaded, key) if ctx.actions else _NOTHING,
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
    trace = _NOTHING
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
    table = _table(("Name", "Value"), rows)
    return render("<section><h2>{t}</h2>{table}</section>", t=title, table=table)


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
        form=_action_form(ctx, "replay", key, {"seq": loaded.seq}, "Replay record"),
    )
    purge = render(
        "<p>This record is deleted from the DLQ for good. The event is not published.</p>{form}",
        form=_action_form(ctx, "purge", key, {"seq": loaded.seq}, "Purge record", danger=True),
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
        else _NOTHING,
        purge_href=url({"view": "confirm", "action": "purge", "seq": loaded.seq}),
        replay_dialog=_dialog("dialog-replay", f"Replay record {loaded.seq}?", replay, danger=False)
        if can_replay
        else _NOTHING,
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


def _action_form(
    ctx: PageContext,
    kind: str,
    key: str,
    fields: dict[str, Any],
    label: str,
    *,
    danger: bool = False,
) -> Html:
    values = {"do": "action", "kind": kind, "key": key, "csrf": ctx.csrf, **fields}
    hidden = join(
        render('<input type="hidden" name="{n}" value="{v}">', n=name, v=value)
        for name, value in values.items()
        if value is not None and value != ""
    )
    return render(
        '<form method="post" class="confirm-form" data-once>{hidden}<div class="dialog-buttons">'
        '<button type="submit" class="{cls}">{label}</button>'
        '<button type="button" class="secondary" data-close>Cancel</button></div></form>',
        hidden=hidden,
        cls="danger" if danger else "primary",
        label=label,
    )


# -- confirmation, jobs, login, errors ------------------------------------------------------------


def confirm_page(
    ctx: PageContext, request: ActionRequest, *, count: int | None, key: str, back: str
) -> Html:
    """Asks before anything is changed, saying exactly what will happen."""
    kind = request.kind.value
    if request.seq is not None:
        title = f"{kind.capitalize()} record {request.seq}?"
        scope = render("<p>Record <strong>{seq}</strong> of the DLQ.</p>", seq=request.seq)
        fields: dict[str, Any] = {"seq": request.seq}
    else:
        many = "all matching" if count is None else f"{count:,}"
        title = f"{kind.capitalize()} {many} record{'' if count == 1 else 's'}?"
        query = request.filter.to_query()
        described = join(
            render("<li><strong>{k}</strong>: {v}</li>", k=_FILTER_LABELS.get(k, k), v=v)
            for k, v in query.items()
        ) or Html("<li>every record (no filter)</li>")
        scope = render(
            "<p>Records stored up to seq <strong>{upto}</strong> (what the list showed; newer "
            "records are left alone) that match:</p><ul>{described}</ul>",
            upto=request.upto,
            described=described,
        )
        fields = {**query, "upto": request.upto}
    effect = (
        "Each original event is published again to its original subject, keeping its event id, "
        "and its record is removed from the DLQ. A record that cannot be replayed stays."
        if request.kind.value == "replay"
        else "The records are deleted from the DLQ for good. Nothing is published."
    )
    form = _action_form(
        ctx, kind, key, fields, f"{kind.capitalize()}", danger=request.kind.value == "purge"
    )
    body = render(
        '<div class="confirm-page{cls}"><h1>{title}</h1>{scope}<p>{effect}</p>{form}'
        '<p><a href="{back}">Back without changing anything</a></p></div>',
        cls="" if request.kind.value == "purge" else " safe",
        title=title,
        scope=scope,
        effect=effect,
        form=form,
        back=back,
    )
    return layout(ctx, title, body)


def job_page(ctx: PageContext, job: dict[str, Any], *, here: bool) -> Html:
    """An action's progress, then its result: counts, what was done, what failed."""
    running = bool(job.get("running"))
    total = job.get("total")
    processed = int(job.get("processed") or 0)
    state = "running" if running else "failed" if job.get("error") else "done"
    tone = {"running": "warn", "failed": "bad", "done": "ok"}[state]
    progress = render(
        '<progress id="job-progress" max="{max}" value="{value}"></progress>',
        max=total or 1,
        value=processed if total else 0,
    )
    counts = render(
        '<dl class="counts"><dt>Done</dt><dd id="job-succeeded">{s}</dd>'
        '<dt>Failed</dt><dd id="job-failed">{f}</dd><dt>Skipped</dt><dd id="job-skipped">{k}</dd>'
        '<dt>Of</dt><dd id="job-total">{t}</dd></dl>',
        s=format_count(job.get("succeeded")),
        f=format_count(job.get("failed")),
        k=format_count(job.get("skipped")),
        t=format_count(total),
    )
    results = join(render("<li>{r}</li>", r=r) for r in job.get("results") or [])
    failures = [
        render(
            '<tr><td class="num"><a href="{h}">{seq}</a></td><td>{e}</td></tr>',
            h=url({"view": "record", "seq": f.get("seq")}),
            seq=f.get("seq"),
            e=f.get("error"),
        )
        for f in job.get("failures") or []
    ]
    parts = [
        render(
            '<div class="job" id="job" data-state="{state}" {poll}><h1>{title}</h1>'
            '<p><span class="status {tone}" id="job-state">{state}</span> '
            "started by {op}{elsewhere} at {started}{took}</p>{progress}{counts}</div>",
            state=state,
            poll=render('data-job-poll="{u}"', u=_job_json(job)) if running else _NOTHING,
            title=str(job.get("describe", "Action")).capitalize(),
            tone=tone,
            op=job.get("operator", "?"),
            elsewhere="" if here else " (in another console process)",
            started=_clock(job.get("started_at")),
            took=_took(job),
            progress=progress,
            counts=counts,
        )
    ]
    if job.get("error"):
        parts.append(render('<p class="alert bad">Stopped: {e}</p>', e=job.get("error")))
    if results:
        parts.append(render('<ul class="results" id="job-results">{r}</ul>', r=results))
    if failures:
        table = _table(("#", "Error"), failures, numeric=(0,))
        parts.append(render("<h2>Failures</h2>{t}", t=table))
    parts.append(
        render(
            '<p><a class="button secondary" href="{h}">Back to dead letters</a></p>',
            h=url({"view": "dlq"}),
        )
    )
    # Without JavaScript the page reloads itself while the action runs.
    head = _REFRESH if running else _NOTHING
    return layout(ctx, "Action", join(parts), head=head)


def _clock(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    return format_time(datetime.fromtimestamp(value, timezone.utc))


def _took(job: dict[str, Any]) -> str:
    started, finished = job.get("started_at"), job.get("finished_at")
    if not isinstance(started, (int, float)) or not isinstance(finished, (int, float)):
        return ""
    return f", took {max(0.0, finished - started):.1f} s"


_REFRESH: Final = Html('<noscript><meta http-equiv="refresh" content="2"></noscript>')


def _job_json(job: dict[str, Any]) -> str:
    return url({"view": "job", "id": job.get("key"), "format": "json"})


def login_page(ctx: PageContext, *, error: str | None, next_url: str) -> Html:
    """The token form."""
    alert = render('<p class="alert bad" role="alert">{e}</p>', e=error) if error else _NOTHING
    body = render(
        '<div class="login"><h1>Log in</h1>{alert}<form method="post">'
        '<input type="hidden" name="do" value="login">'
        '<input type="hidden" name="csrf" value="{csrf}">'
        '<input type="hidden" name="next" value="{next}">'
        '<label>Console token<input name="token" type="password" '
        'autocomplete="current-password" required autofocus></label>'
        '<button type="submit" class="primary">Log in</button></form></div>',
        alert=alert,
        csrf=ctx.csrf,
        next=next_url,
    )
    return layout(ctx, "Log in", body)


def indexing_page(ctx: PageContext, done: int, total: int) -> Html:
    """Shown while a first index build runs; the page asks again every second."""
    body = render(
        '<div class="job"><h1>Reading the dead-letter queue…</h1>'
        "<p>The console reads the headers of every record once when it starts; afterwards "
        "it reads only new records.</p>"
        '<progress max="{total}" value="{done}"></progress>'
        '<p class="muted">{done_text} of about {total_text} records read.</p></div>',
        total=max(total, 1),
        done=done,
        done_text=format_count(done),
        total_text=format_count(total),
    )
    refresh = Html('<meta http-equiv="refresh" content="1">')
    return layout(ctx, "Reading the DLQ", body, head=refresh)


def error_page(ctx: PageContext, status: int, message: str) -> Html:
    """A plain error with a way back."""
    body = render(
        '<div class="error-page"><h1>{status}</h1><p class="alert bad">{message}</p>'
        '<p><a href="{home}">Back to the overview</a></p></div>',
        status=status,
        message=message,
        home=url({"view": "overview"}),
    )
    return layout(ctx, f"Error {status}", body)
