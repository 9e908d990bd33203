"""What every page shares: the frame, tables, labels, the action form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ...dlq import DeadLetterReason
from ...health import HealthStatus
from ..html import (
    Html,
    join,
    render,
    url,
)
from ..index import UNREADABLE

__all__ = (
    "NOTHING",
    "STATUS_CLASS",
    "PageContext",
    "action_form",
    "layout",
    "reason_badge",
    "table",
)

# CSS class per known reason; anything else (records are untrusted) gets the neutral one.
_REASON_CLASS: Final = {
    UNREADABLE: "reason-unreadable",
    DeadLetterReason.PERMANENT_ERROR.value: "reason-permanent",
    DeadLetterReason.MAX_ATTEMPTS_EXCEEDED.value: "reason-attempts",
    DeadLetterReason.MALFORMED.value: "reason-malformed",
    DeadLetterReason.MAX_DELIVER_EXCEEDED.value: "reason-deliver",
}


STATUS_CLASS: Final = {
    HealthStatus.HEALTHY: "ok",
    HealthStatus.DEGRADED: "warn",
    HealthStatus.UNHEALTHY: "bad",
}


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


NOTHING: Final = Html("")


def layout(ctx: PageContext, title: str, body: Html, *, head: Html = NOTHING) -> Html:
    """The page frame: top bar, navigation, who is logged in, the body."""
    nav = join(
        render(
            '<a href="{href}"{current}>{label}</a>',
            href=url({"view": view}),
            current=Html(' aria-current="page"') if ctx.view == view else NOTHING,
            label=label,
        )
        for view, label in (("overview", "Overview"), ("dlq", "Dead letters"))
    )
    mode = (
        Html('<span class="mode mode-actions">actions enabled</span>')
        if ctx.actions
        else Html('<span class="mode">read-only</span>')
    )
    who = NOTHING
    if ctx.operator:
        logout = NOTHING
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


def table(headers: tuple[str, ...], rows: list[Html], *, numeric: tuple[int, ...] = ()) -> Html:
    head = join(
        render("<th{cls}>{h}</th>", h=h, cls=Html(' class="num"') if i in numeric else NOTHING)
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


def action_form(
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
