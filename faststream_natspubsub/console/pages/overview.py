"""The overview page: dead letters, consumers, streams, the outbox."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ...health import HealthStatus
from ..html import (
    Html,
    age,
    duration,
    format_bytes,
    format_count,
    format_time,
    join,
    render,
    url,
)
from .common import (
    STATUS_CLASS,
    PageContext,
    layout,
    reason_badge,
    table,
)

if TYPE_CHECKING:
    from ..overview import Overview

__all__ = (
    "OUTBOX_LAG_WARNING",
    "overview_page",
)

# An outbox row pending longer than this (seconds) is shown as lagging.
OUTBOX_LAG_WARNING: Final = 60.0


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
    return table(("Reason", "Records", ""), rows, numeric=(1,))


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
    return table(("From app", "Topic", "Records"), rows, numeric=(2,))


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
            tone=STATUS_CLASS[c.status],
            status=c.status.value,
            detail=c.detail,
        )
        for c in ov.consumers
    ]
    return table(
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
    return table(headers, rows, numeric=(3, 4, 5))
