"""Confirmations, action progress, the login form, errors and the indexing page."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from ..html import (
    Html,
    format_count,
    format_time,
    join,
    render,
    url,
)
from .common import (
    NOTHING,
    PageContext,
    action_form,
    layout,
    table,
)

if TYPE_CHECKING:
    from ..actions import ActionRequest

__all__ = (
    "confirm_page",
    "error_page",
    "indexing_page",
    "job_page",
    "login_page",
)

# How the filter's fields are named on a confirmation.
FILTER_LABELS: Final = {
    "topic": "topic",
    "source_app": "from app",
    "reason": "reason",
    "since": "stored since",
    "until": "stored until",
    "q": "error text",
}


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
            render("<li><strong>{k}</strong>: {v}</li>", k=FILTER_LABELS.get(k, k), v=v)
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
    form = action_form(
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
            poll=render('data-job-poll="{u}"', u=_job_json(job)) if running else NOTHING,
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
        failed = table(("#", "Error"), failures, numeric=(0,))
        parts.append(render("<h2>Failures</h2>{t}", t=failed))
    parts.append(
        render(
            '<p><a class="button secondary" href="{h}">Back to dead letters</a></p>',
            h=url({"view": "dlq"}),
        )
    )
    # Without JavaScript the page reloads itself while the action runs.
    head = _REFRESH if running else NOTHING
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
    alert = render('<p class="alert bad" role="alert">{e}</p>', e=error) if error else NOTHING
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
