"""The ``natspubsub`` command line: topology, dead letters, outbox and health, for operators.

Built with typer, like FastStream's own ``faststream`` command.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from . import dlq, outbox, topology
from .console import console
from .health import health
from .options import EXIT_USAGE
from .output import echo_error
from .permissions import permissions

__all__ = ("app", "main")

app = typer.Typer(
    name="natspubsub",
    help=(
        "Operate NatsPubsub applications on NATS JetStream: topology, dead letters, outbox, "
        "health, permissions, and a web console."
    ),
    no_args_is_help=True,
    # Locals can hold passwords and tokens; never print them with a traceback.
    pretty_exceptions_show_locals=False,
)
app.add_typer(topology.app, name="topology")
app.add_typer(dlq.app, name="dlq")
app.add_typer(outbox.app, name="outbox")
app.command("health")(health)
app.command("console")(console)
app.command("permissions")(permissions)


@app.command()
def demo(
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for the demo's events.")
    ] = 20.0,
) -> None:
    """Run the demo: two apps on a throw-away nats-server (needs the server extra)."""
    from ..demo import run_demo
    from ..testing import NatsServerError

    try:
        paid = asyncio.run(run_demo(sys.stdout, timeout=timeout))
    except (NatsServerError, TimeoutError) as exc:
        echo_error(str(exc).splitlines()[0])
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(f"demo finished: {len(paid)} orders paid (ORD-2 after a retry), ORD-3 dead-lettered")


def main() -> None:
    """Entry point of the ``natspubsub`` script."""
    app(prog_name="natspubsub")
