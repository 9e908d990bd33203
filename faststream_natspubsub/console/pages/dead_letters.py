"""The dead-letter list: filter bar, summary, bulk actions, rows, paging."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Final

from ...dlq import DeadLetterReason
from ..html import (
    Html,
    age,
    format_time,
    join,
    render,
    url,
)
from ..index import UNREADABLE
from .common import (
    NOTHING,
    PageContext,
    layout,
    reason_badge,
    table,
)

if TYPE_CHECKING:
    from ..index import IndexEntry
    from ..query import DeadLetterFilter, Page

__all__ = (
    "FilterChoices",
    "dlq_page",
)

# Characters of an error shown in a list row.
_ERROR_CELL: Final = 140


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
            selected=Html(" selected") if flt.reason == reason else NOTHING,
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
    return table(
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
        links.append(render(button, h=newer, rel=NOTHING, label="← Newer"))
    links.append(render(button, h=url(base), rel=NOTHING, label="Newest"))
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
