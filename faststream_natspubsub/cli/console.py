"""``natspubsub console``: the operations console of --app, served alone."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Annotated, Final

import nats
import typer

from .options import CliError, CommonOptions, common_options, run

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ("console",)

DEFAULT_PORT: Final = 8300
_CONSOLE: Final = "Console"
_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
logger = logging.getLogger("faststream_natspubsub.console")


@common_options
def console(
    options: CommonOptions,
    host: Annotated[
        str, typer.Option(help="Address to listen on.", rich_help_panel=_CONSOLE)
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on.", rich_help_panel=_CONSOLE)
    ] = DEFAULT_PORT,
    actions: Annotated[
        bool,
        typer.Option(
            "--actions/--read-only",
            help="Allow replay and purge (needs --console-token).",
            rich_help_panel=_CONSOLE,
        ),
    ] = False,
    console_token: Annotated[
        str | None,
        typer.Option(
            envvar="NATSPUBSUB_CONSOLE_TOKEN",
            help="Token operators log in with (16 characters or more); prefer the env variable.",
            rich_help_panel=_CONSOLE,
            show_default=False,
        ),
    ] = None,
    console_secret: Annotated[
        str | None,
        typer.Option(
            envvar="NATSPUBSUB_CONSOLE_SECRET",
            help="Key signing sessions and forms; the same for every process serving the console.",
            rich_help_panel=_CONSOLE,
            show_default=False,
        ),
    ] = None,
    idempotency: Annotated[
        str,
        typer.Option(
            help="Where action keys are kept: memory (one process) or kv (shared NATS KV bucket).",
            rich_help_panel=_CONSOLE,
        ),
    ] = "memory",
) -> None:
    """Serve the operations console of --app: dead letters, consumers, replay and purge.

    Read-only unless --actions is given. With --console-token, every page needs a login.
    """
    from ..console.errors import ConsoleConfigError
    from ..console.server import StandaloneConsole, serve

    env, app_name = options.require_env(), options.require_app()
    if idempotency not in ("memory", "kv"):
        raise CliError("--idempotency must be memory or kv")
    kwargs = options.connect_kwargs()

    async def connect() -> Client:
        return await nats.connect(
            list(options.servers),
            name="natspubsub-console",
            connect_timeout=max(1, math.ceil(options.timeout)),
            max_reconnect_attempts=-1,  # a server keeps trying, unlike one-shot commands
            **kwargs,
        )

    try:
        app = StandaloneConsole(
            connect,
            env=env,
            app=app_name,
            actions=actions,
            token=console_token,
            secret=console_secret.encode() if console_secret else None,
            idempotency="kv" if idempotency == "kv" else "memory",
        )
    except ConsoleConfigError as exc:
        raise CliError(str(exc)) from None
    # Actions are logged (who, what) at INFO: an operator running this wants to see them.
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    typer.echo(
        f"natspubsub console of {env}/{app_name} on http://{host}:{port}/ "
        f"({'actions enabled' if actions else 'read-only'}); NATS {options.display_servers}",
        err=True,
    )
    try:
        run(serve(app, host=host, port=port))
    except ImportError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        # uvicorn shuts down cleanly, then raises the signal again: Ctrl+C is a normal end.
        pass
    # Also reached without that KeyboardInterrupt: a shell's background job ignores SIGINT,
    # so the signal uvicorn raises again after its clean shutdown does nothing.
    typer.echo("natspubsub console stopped", err=True)
