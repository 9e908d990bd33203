"""``natspubsub permissions``: the ``permissions {}`` block of an app's nats-server user.

The set comes from the app's own topology: either the real ``NatsPubsub`` object
(``--from myservice.app:pubsub``, the truth about what the app uses) or one built here from
the options that decide it (its topics, DLQ, inbox, reply prefix, topology mode), with the
same code that declares a running app's streams and consumers.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from faststream.nats import NatsBroker

from ..errors import NatsPubsubError
from ..facade import NatsPubsub
from ..permissions import ROLES
from .options import EXIT_USAGE, CliError
from .output import echo_error, echo_json

__all__ = ("permissions",)

_TARGET = "Application"


def permissions(
    role: Annotated[
        list[str],
        typer.Option(
            "--role",
            "-r",
            help=f"Role(s) to allow, repeatable: {', '.join(ROLES)}.",
            show_default=False,
        ),
    ],
    env: Annotated[
        str | None,
        typer.Option(
            "--env", "-e", envvar="NATSPUBSUB_ENV", help="Environment.", rich_help_panel=_TARGET
        ),
    ] = None,
    app: Annotated[
        str | None,
        typer.Option(
            "--app", "-a", envvar="NATSPUBSUB_APP", help="Application.", rich_help_panel=_TARGET
        ),
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            metavar="[APP:]TOPIC",
            help="A topic the app subscribes to (of APP, else its own); repeatable.",
            show_default=False,
            rich_help_panel=_TARGET,
        ),
    ] = None,
    dlq: Annotated[
        bool, typer.Option(help="The app has a dead-letter queue.", rich_help_panel=_TARGET)
    ] = True,
    inbox: Annotated[
        str,
        typer.Option(
            help="The app's inbox: kv (a KV bucket: needs rights), memory, sql or none.",
            rich_help_panel=_TARGET,
        ),
    ] = "none",
    inbox_prefix: Annotated[
        str | None,
        typer.Option(
            help="The reply prefix of the user the block is for: the app's "
            "(NatsPubsub(inbox_prefix=...)), or the operator's own; default the app's, _INBOX.",
            show_default=False,
            rich_help_panel=_TARGET,
        ),
    ] = None,
    topology: Annotated[
        str,
        typer.Option(
            help="create: the app declares its topology; verify: an operator does.",
            rich_help_panel=_TARGET,
        ),
    ] = "create",
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="MODULE:ATTRIBUTE",
            help="Read everything from the app's NatsPubsub object instead (its subscribers "
            "declared at import), e.g. myservice.app:pubsub.",
            show_default=False,
        ),
    ] = None,
    json: Annotated[
        bool, typer.Option("--json", help="Print JSON for programs instead of the block.")
    ] = False,
) -> None:
    """Print the least permissions an app's NATS user needs, as a nats-server block.

    Without --from, describe the app with --env, --app and one --topic per subscriber
    (apps of NatsPubsub 1.0, subscribed with ForeignApp, need --from).
    """
    try:
        if source is not None:
            pubsub = _imported(source)
        else:
            pubsub = _described(env, app, topic or [], dlq, inbox, inbox_prefix, topology)
        found = pubsub.permissions(*role, inbox_prefix=inbox_prefix)
    except CliError as exc:
        echo_error(exc.message)
        raise typer.Exit(exc.code) from None
    except NatsPubsubError as exc:
        echo_error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    if json:
        echo_json(
            {
                "env": found.env,
                "app": found.app,
                "roles": list(found.roles),
                "publish": found.publish,
                "subscribe": found.subscribe,
                "permissions": [
                    {"action": p.action, "subject": p.subject, "purpose": p.purpose}
                    for p in found.permissions
                ],
            }
        )
    else:
        typer.echo(found.to_config(), nl=False)


def _described(
    env: str | None,
    app: str | None,
    topics: list[str],
    dlq: bool,
    inbox: str,
    inbox_prefix: str | None,
    topology: str,
) -> NatsPubsub:
    if not env:
        raise CliError("missing --env (or NATSPUBSUB_ENV)")
    if not app:
        raise CliError("missing --app (or NATSPUBSUB_APP)")
    if inbox not in ("kv", "memory", "sql", "none"):
        raise CliError(f"--inbox must be kv, memory, sql or none, not {inbox!r}")
    # Never connected: it only declares, as the app does when its module is imported.
    pubsub = NatsPubsub(
        NatsBroker(logger=None),
        env=env,
        app=app,
        dlq=dlq,
        inbox="kv" if inbox == "kv" else None,
        inbox_prefix=inbox_prefix,
        topology=topology,
    )
    for value in topics:
        source_app, _, name = value.rpartition(":")
        pubsub.subscriber(name, app=source_app or None)(_handler)
    return pubsub


async def _handler(body: Any) -> None:
    """Stands in for the app's handler: only the subscriber's declaration matters."""


def _imported(source: str) -> NatsPubsub:
    module_name, _, attribute = source.partition(":")
    if not module_name or not attribute:
        raise CliError(f"--from {source!r}: use MODULE:ATTRIBUTE, e.g. myservice.app:pubsub")
    sys.path.insert(0, ".")  # as `faststream run` does: the app's module from the cwd
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"--from {source!r}: cannot import {module_name}: {exc}") from None
    finally:
        sys.path.remove(".")
    target = getattr(module, attribute, None)
    if not isinstance(target, NatsPubsub):
        raise CliError(f"--from {source!r}: {attribute} is not a NatsPubsub object")
    return target
