"""Options every command takes, the connection they describe, and one-line errors.

Connection options follow the ``nats`` command line's names and environment variables
(``NATS_URL``, ``NATS_CREDS``, ``NATS_USER``...), so an operator's shell setup works as is.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import logging
import math
import os
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Concatenate, Final, ParamSpec, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import typer
from nats.js.errors import APIError, ServiceUnavailableError

from ..compat import mark_tls_stream
from ..connection import describe_tls_error
from ..dlq_admin import DeadLetterNotFoundError
from ..errors import ConfigurationError, NatsPubsubError, SubjectError
from ..inbox_prefix import DEFAULT_INBOX_PREFIX, check_inbox_prefix
from ..subjects import dlq_stream_name, normalize_app, normalize_env, stream_name
from ..violations import PermissionWatch
from .durations import parse_duration, parse_since
from .output import echo_error

if TYPE_CHECKING:
    from nats.aio.client import Client

    from ..violations import Violation

__all__ = (
    "EXIT_FAILED",
    "EXIT_USAGE",
    "CliError",
    "CommonOptions",
    "common_options",
    "connect",
    "duration_option",
    "permission_violation",
    "run",
    "since_option",
    "translate",
    "watch_of",
)

P = ParamSpec("P")
T = TypeVar("T")

EXIT_FAILED: Final = 1
"""Not found, or the operation failed (a publish, a stream update)."""
EXIT_USAGE: Final = 2
"""Bad input, or the server cannot be reached or refuses the connection."""

DEFAULT_SERVERS: Final = "nats://127.0.0.1:4222"
# Seconds: a CLI should say "unreachable" quickly instead of retrying like a service.
DEFAULT_TIMEOUT: Final = 5.0
_CONNECTION: Final = "Connection"
_TARGET: Final = "Application"


class CliError(Exception):
    """A failure to report as one line on stderr with an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class CommonOptions:
    """The options of every command: where NATS is, how to log in, which env and app."""

    servers: tuple[str, ...]
    env: str | None
    app: str | None
    creds: Path | None = None
    nkey: Path | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    inbox_prefix: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    json: bool = False

    def require_env(self) -> str:
        """The normalised ``--env``; a usage error when missing or invalid."""
        if not self.env:
            raise CliError("missing --env (or NATSPUBSUB_ENV)")
        return normalize_env(self.env)

    def require_app(self) -> str:
        """The normalised ``--app``; a usage error when missing or invalid."""
        if not self.app:
            raise CliError("missing --app (or NATSPUBSUB_APP)")
        return normalize_app(self.app)

    @property
    def display_servers(self) -> str:
        """The server URLs without user names, passwords or tokens."""
        return ",".join(_redact(url) for url in self.servers)

    def connect_kwargs(self) -> dict[str, Any]:
        """Authentication and TLS keyword arguments for ``nats.connect``."""
        kwargs: dict[str, Any] = {}
        if self.creds is not None:
            kwargs["user_credentials"] = str(_readable(self.creds, "--creds"))
        if self.nkey is not None:
            kwargs["nkeys_seed"] = str(_readable(self.nkey, "--nkey"))
        if (self.creds or self.nkey) and importlib.util.find_spec("nkeys") is None:
            raise CliError(
                "--creds and --nkey need the nkeys package: pip install 'nats-py[nkeys]'"
            )
        if self.user is not None or self.password is not None:
            kwargs["user"], kwargs["password"] = self.user, self.password
        if self.token is not None:
            kwargs["token"] = self.token
        if self.tls_cert or self.tls_key or self.tls_ca:
            kwargs["tls"] = self._tls_context()
        if self.inbox_prefix is not None:
            try:
                kwargs["inbox_prefix"] = check_inbox_prefix(self.inbox_prefix)
            except ConfigurationError as exc:
                raise CliError(f"--inbox-prefix: {exc}") from None
        return kwargs

    def known_names(self) -> list[str]:
        """Stream names of --env and --app, to name refused subjects in their case."""
        try:
            env, app = normalize_env(self.env or ""), normalize_app(self.app or "")
            return [stream_name(env, app), dlq_stream_name(env, app)]
        except SubjectError:
            return []

    def _tls_context(self) -> ssl.SSLContext:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CliError("--tls-cert and --tls-key go together")
        try:
            context = ssl.create_default_context(
                cafile=str(_readable(self.tls_ca, "--tls-ca")) if self.tls_ca else None
            )
            if self.tls_cert is not None and self.tls_key is not None:
                context.load_cert_chain(
                    str(_readable(self.tls_cert, "--tls-cert")),
                    str(_readable(self.tls_key, "--tls-key")),
                )
        except ssl.SSLError as exc:
            raise CliError(f"cannot load TLS files: {exc.reason or exc}") from None
        return context


def _readable(path: Path, option: str) -> Path:
    if not path.is_file() or not os.access(path, os.R_OK):
        raise CliError(f"{option} {path}: not a readable file")
    return path


def _redact(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


def _connection_option(
    name: str, kind: type, flag: str, envvar: str, text: str
) -> inspect.Parameter:
    """An optional connection setting: ``--flag`` or ``$envvar``, of type ``kind``."""
    option = typer.Option(
        flag, envvar=envvar, help=text, rich_help_panel=_CONNECTION, show_default=False
    )
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


# Each parameter is added to every command by ``common_options``; the names match
# ``CommonOptions`` fields.
_OPTIONS: Final = (
    inspect.Parameter(
        "servers",
        inspect.Parameter.KEYWORD_ONLY,
        default=DEFAULT_SERVERS,
        annotation=Annotated[
            str,
            typer.Option(
                "--servers",
                "-s",
                envvar="NATS_URL",
                help="NATS server URLs, comma-separated.",
                rich_help_panel=_CONNECTION,
            ),
        ],
    ),
    inspect.Parameter(
        "env",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--env",
                "-e",
                envvar="NATSPUBSUB_ENV",
                help="Environment, the first subject token (production, staging...).",
                rich_help_panel=_TARGET,
            ),
        ],
    ),
    inspect.Parameter(
        "app",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--app",
                "-a",
                envvar="NATSPUBSUB_APP",
                help="Application: the one whose streams, DLQ or consumers are meant.",
                rich_help_panel=_TARGET,
            ),
        ],
    ),
    *(
        _connection_option(name, Path, flag, envvar, text)
        for name, flag, envvar, text in (
            ("creds", "--creds", "NATS_CREDS", "User credentials file (JWT and seed)."),
            ("nkey", "--nkey", "NATS_NKEY", "NKey seed file."),
            ("tls_cert", "--tls-cert", "NATS_CERT", "TLS client certificate (PEM)."),
            ("tls_key", "--tls-key", "NATS_KEY", "TLS client key (PEM)."),
            ("tls_ca", "--tls-ca", "NATS_CA", "CA certificates to verify the server (PEM)."),
        )
    ),
    *(
        _connection_option(name, str, flag, envvar, text)
        for name, flag, envvar, text in (
            ("user", "--user", "NATS_USER", "User name."),
            ("password", "--password", "NATS_PASSWORD", "Password."),
            ("token", "--token", "NATS_TOKEN", "Authentication token."),
            (
                "inbox_prefix",
                "--inbox-prefix",
                "NATS_INBOX_PREFIX",
                "Reply subject prefix, for a user allowed only its own (_INBOX_ops, say); "
                f"default {DEFAULT_INBOX_PREFIX}.",
            ),
        )
    ),
    inspect.Parameter(
        "timeout",
        inspect.Parameter.KEYWORD_ONLY,
        default=DEFAULT_TIMEOUT,
        annotation=Annotated[
            float,
            typer.Option(
                "--timeout",
                min=0.1,
                help="Seconds to wait for the server (connect and each request).",
                rich_help_panel=_CONNECTION,
            ),
        ],
    ),
    inspect.Parameter(
        "json",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool, typer.Option("--json", help="Print JSON for programs instead of tables.")
        ],
    ),
)
_OPTION_NAMES: Final = tuple(p.name for p in _OPTIONS)


def common_options(
    command: Callable[Concatenate[CommonOptions, P], None],
) -> Callable[P, None]:
    """Give ``command`` every common option, handed to it as one :class:`CommonOptions`.

    Typer builds options from the signature, so the wrapper's signature is the command's
    own parameters plus the common ones. Errors the command raises end as one line.
    """
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        _quiet_library_logs()
        values: dict[str, Any] = {name: kwargs.pop(name) for name in _OPTION_NAMES}
        servers = tuple(s.strip() for s in str(values.pop("servers")).split(",") if s.strip())
        try:
            options = CommonOptions(servers=servers or (DEFAULT_SERVERS,), **values)
            command(options, *args, **kwargs)
        except CliError as exc:
            echo_error(exc.message)
            raise typer.Exit(exc.code) from None
        except _KNOWN_ERRORS as exc:
            error = translate(exc)
            echo_error(error.message)
            raise typer.Exit(error.code) from None

    wrapper.__signature__ = inspect.Signature([*own, *_OPTIONS])  # type: ignore[attr-defined]
    # Typer also reads type hints; they are all in the signature already.
    wrapper.__annotations__ = {}
    return wrapper


def _quiet_library_logs() -> None:
    """The commands report what they skip or fail themselves, as single escaped lines.

    Without logging configured, Python would print the package's own warnings (about a
    foreign entry in a DLQ, say) raw on stderr as well; a handler on its logger stops that.
    """
    library = logging.getLogger("faststream_natspubsub")
    if not any(isinstance(h, logging.NullHandler) for h in library.handlers):
        library.addHandler(logging.NullHandler())


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one command's async body."""
    return asyncio.run(coroutine)


@asynccontextmanager
async def connect(options: CommonOptions) -> AsyncIterator[Client]:
    """A connection for one command: a short timeout, no reconnecting, closed at the end."""
    kwargs = options.connect_kwargs()
    failures: list[Exception] = []
    watch = PermissionWatch()

    async def on_error(exc: Exception) -> None:
        # Reported once below; nats-py's default callback logs a traceback per attempt.
        if watch.hear(exc) is None:
            failures.append(exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                list(options.servers),
                error_cb=on_error,
                name="natspubsub-cli",
                allow_reconnect=False,
                # 1, not 0: nats-py reads 0 as "retry forever". Each server is tried twice.
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=max(1, math.ceil(options.timeout)),
                **kwargs,
            ),
            timeout=options.timeout,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        cause: BaseException = exc
        if isinstance(exc, nats.errors.NoServersError) and failures:
            cause = failures[-1]
        reason = _connect_failure(cause, options.timeout)
        raise CliError(f"cannot connect to {options.display_servers}: {reason}") from None
    watch.inbox_prefix = options.inbox_prefix or DEFAULT_INBOX_PREFIX
    _WATCHES[nc] = watch
    mark_tls_stream(nc)  # else asyncio warns about eof_received at every TLS close
    names = options.known_names()

    def name(violation: Violation) -> str:
        return watch.named(violation, names)

    try:
        # A refused request the command does not handle itself ends it at once, as one line.
        with watch.guarding(lambda _violation: True, name=name):
            yield nc
    finally:
        await nc.close()


# The permission violations the server reported on each open connection: it answers a
# refused request with nothing but such an error.
_WATCHES: weakref.WeakKeyDictionary[Client, PermissionWatch] = weakref.WeakKeyDictionary()


def watch_of(nc: Client) -> PermissionWatch:
    """The permission violations heard on a connection made by :func:`connect`."""
    return _WATCHES.setdefault(nc, PermissionWatch())


def permission_violation(nc: Client, subject: str) -> str | None:
    """The server's refusal of a publish to ``subject`` on ``nc``, if it reported one."""
    watch = _WATCHES.get(nc)
    heard = watch.since(0) if watch is not None else []
    if any(violation.is_for("publish", subject) for violation in heard):
        return f'permissions violation for publish to "{subject}"'
    return None


def _connect_failure(exc: BaseException, timeout: float) -> str:
    text = str(exc)
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text.lower():
        return "authorization violation (check --user/--password, --token, --creds or --nkey)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS failed: {describe_tls_error(exc)} (check --tls-ca)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {describe_tls_error(exc)}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    return text or type(exc).__name__


# What a command may raise that is the server's or the input's fault, not a bug.
_KNOWN_ERRORS: Final = (NatsPubsubError, nats.errors.Error, OSError, TimeoutError)


def translate(exc: BaseException) -> CliError:
    """The one line and exit code for an error a command let through."""
    if isinstance(exc, DeadLetterNotFoundError):
        return CliError(str(exc), EXIT_FAILED)
    if isinstance(exc, SubjectError):
        return CliError(str(exc), EXIT_USAGE)
    if isinstance(exc, NatsPubsubError):
        return CliError(str(exc), EXIT_FAILED)
    if isinstance(exc, (nats.errors.NoRespondersError, ServiceUnavailableError)):
        return CliError("JetStream is not available on this server (is it started with -js?)")
    if isinstance(exc, TimeoutError):
        return CliError("the server did not answer in time (see --timeout)")
    if isinstance(exc, APIError):
        return CliError(f"JetStream refused: {exc.description or exc}", EXIT_FAILED)
    if isinstance(exc, nats.errors.Error):
        return CliError(f"NATS: {str(exc).removeprefix('nats: ')}")
    return CliError(f"{type(exc).__name__}: {exc}")


def duration_option(value: str, option: str) -> timedelta:
    """``value`` of ``option`` parsed by :func:`parse_duration`; a usage error otherwise."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise CliError(f"{option}: {exc}") from None


def since_option(value: str, option: str) -> datetime:
    """``value`` of ``option`` parsed by :func:`parse_since`; a usage error otherwise."""
    try:
        return parse_since(value)
    except ValueError as exc:
        raise CliError(f"{option}: {exc}") from None
