"""Who is asking, and whether a form really comes from the console's own page.

Authentication is a token (or named tokens, so the log says who acted) exchanged on a login
form for a signed session cookie, or the application's own check given as ``auth=``: a
function of the request returning the operator's name, or ``None`` to refuse.

CSRF: every form carries a token derived (HMAC) from a random per-browser cookie; an action
whose form token does not match its cookie, or whose ``Origin`` is another site, is refused.
The cookies are ``HttpOnly`` and ``SameSite=Strict``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Final, TypeAlias
from urllib.parse import urlsplit

from pydantic_core import from_json, to_json

from .errors import ConsoleConfigError

logger = logging.getLogger("faststream_natspubsub.console")

__all__ = (
    "CSRF_COOKIE",
    "SESSION_COOKIE",
    "AuthDependency",
    "Authenticator",
    "ConsoleRequest",
    "same_origin",
)

SESSION_COOKIE: Final = "natspubsub_console_session"
CSRF_COOKIE: Final = "natspubsub_console_csrf"
# How long a login lasts.
DEFAULT_SESSION_SECONDS: Final = 8 * 3600.0
# Tokens shorter than this are refused: a console token must not be guessable.
MIN_TOKEN_LENGTH: Final = 16
# The operator name used for a single unnamed token.
DEFAULT_OPERATOR: Final = "operator"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleRequest:
    """What an ``auth=`` function sees of a request."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    """Header names in lower case."""
    cookies: Mapping[str, str]
    client: str | None
    """The peer's address (a proxy's, behind one)."""
    scheme: str

    @property
    def secure(self) -> bool:
        """Whether the browser talks HTTPS (directly, or to a proxy that says so)."""
        return self.scheme == "https" or self.headers.get("x-forwarded-proto") == "https"


AuthDependency: TypeAlias = Callable[[ConsoleRequest], "str | Awaitable[str | None] | None"]
"""``auth=``: returns the operator's name, or ``None`` when the request is not allowed."""


class Authenticator:
    """Identifies operators and signs the console's cookies with one secret."""

    def __init__(
        self,
        *,
        token: str | Mapping[str, str] | None,
        auth: AuthDependency | None,
        secret: bytes | None,
        session_seconds: float = DEFAULT_SESSION_SECONDS,
    ) -> None:
        if token is not None and auth is not None:
            raise ConsoleConfigError("give token= or auth=, not both")
        tokens = {DEFAULT_OPERATOR: token} if isinstance(token, str) else dict(token or {})
        for name, value in tokens.items():
            if not isinstance(value, str) or len(value) < MIN_TOKEN_LENGTH:
                raise ConsoleConfigError(
                    f"the console token of {name!r} must be at least {MIN_TOKEN_LENGTH} characters"
                )
        if token is not None and not tokens:
            raise ConsoleConfigError("token= names no operator")
        # Compared as digests: equal length, so the comparison says nothing about the length.
        self._tokens = {name: _digest(value) for name, value in tokens.items()}
        self._auth = auth
        self._secret = secret or secrets.token_bytes(32)
        if len(self._secret) < MIN_TOKEN_LENGTH:
            raise ConsoleConfigError(f"secret must be at least {MIN_TOKEN_LENGTH} bytes")
        self.session_seconds = session_seconds

    @property
    def enabled(self) -> bool:
        """Whether any authentication is configured."""
        return bool(self._tokens) or self._auth is not None

    @property
    def uses_login(self) -> bool:
        """Whether operators log in with a token on the console's form."""
        return bool(self._tokens)

    async def identify(self, request: ConsoleRequest) -> str | None:
        """The operator behind ``request``, or ``None``."""
        if self._auth is not None:
            try:
                result = self._auth(request)
                if inspect.isawaitable(result):
                    result = await result
            except Exception:  # a failing check refuses: never open the console by accident
                logger.exception("console: the auth function failed; request refused")
                return None
            return str(result) if result else None
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            return self.check_token(bearer[7:].strip())
        return self._session_operator(request.cookies.get(SESSION_COOKIE, ""))

    def check_token(self, token: str) -> str | None:
        """The operator whose token this is, or ``None``."""
        given = _digest(token)
        found = None
        for name, digest in self._tokens.items():
            if hmac.compare_digest(given, digest):
                found = name
        return found

    def session_cookie(self, operator: str) -> str:
        """A signed session value for ``operator``."""
        payload = to_json({"o": operator, "e": int(time.time() + self.session_seconds)})
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign('session', body)}"

    def _session_operator(self, value: str) -> str | None:
        body, _, signature = value.partition(".")
        if not body or not hmac.compare_digest(signature, self._sign("session", body)):
            return None
        try:
            data = from_json(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            operator, expires = data["o"], data["e"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(operator, str) or not isinstance(expires, int):
            return None
        if expires < time.time() or operator not in self._tokens:
            return None
        return operator

    # -- CSRF -----------------------------------------------------------------------------

    @staticmethod
    def new_csrf_cookie() -> str:
        """A fresh random value for the CSRF cookie."""
        return secrets.token_urlsafe(24)

    def csrf_token(self, cookie: str) -> str:
        """The form token that goes with the browser's CSRF cookie."""
        return self._sign("csrf", cookie)

    def csrf_ok(self, cookie: str | None, form_token: str | None) -> bool:
        """Whether a form's token matches the browser's cookie."""
        if not cookie or not form_token:
            return False
        return hmac.compare_digest(form_token, self.csrf_token(cookie))

    def _sign(self, purpose: str, value: str) -> str:
        mac = hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def same_origin(request: ConsoleRequest) -> bool:
    """False when the browser says the request comes from another site."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Old browsers send no Origin on same-origin posts; "null" is sent by sandboxed
        # frames and privacy settings. The CSRF token decides then.
        return origin is None
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.split(",")[0].strip().lower()


def parse_cookies(header: str) -> dict[str, str]:
    """Cookies of a ``Cookie`` header; a malformed header gives none rather than an error."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # noqa: BLE001 - http.cookies raises CookieError or others on junk
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()
