"""HTTP plumbing of the console: requests and forms in, responses out, with safe headers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode

from .security import ConsoleRequest, parse_cookies

if TYPE_CHECKING:
    from .html import Html

__all__ = (
    "KEY_RE",
    "MAX_BODY",
    "SECURITY_HEADERS",
    "BadRequest",
    "Message",
    "Receive",
    "Request",
    "Response",
    "Scope",
    "Send",
    "cookie_header",
    "html_response",
    "positive_int",
    "query",
    "read_form",
    "read_request",
    "redirect",
    "safe_next",
)

# ASGI, as the console uses it.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# A form is small; anything larger is not one of ours.
MAX_BODY: Final = 64 * 1024
# Idempotency keys and CSRF cookies: random URL-safe text.
KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
# No inline script or style, no framing, forms only to the console itself.
_CSP: Final = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
)


SECURITY_HEADERS: Final = (
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    cache: str = "no-store"

    async def send(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
            (b"cache-control", self.cache.encode()),
            *SECURITY_HEADERS,
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def html_response(status: int, markup: Html) -> Response:
    return Response(status, markup.encode("utf-8", "replace"))


def redirect(location: str) -> Response:
    response = Response(303, b"")
    response.headers.append((b"location", location.encode()))
    return response


class BadRequest(Exception):  # noqa: N818 - the console's own control flow, never raised out
    """A request the console answers with an error page (``status`` and ``message``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    query: dict[str, str]
    query_string: str
    cookies: dict[str, str]
    console: ConsoleRequest


def read_request(scope: Scope) -> Request:
    raw_query = bytes(scope.get("query_string", b"")).decode("latin-1")
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, max_num_fields=64)
    except ValueError:
        pairs = []
    query: dict[str, str] = {}
    for name, value in pairs:
        query.setdefault(name, value)
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        headers.setdefault(bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
    cookies = parse_cookies(headers.get("cookie", ""))
    client = scope.get("client")
    path = str(scope.get("path", "/"))
    root = str(scope.get("root_path", ""))
    full_path = path if path.startswith(root) else root + path
    return Request(
        method=str(scope.get("method", "GET")).upper(),
        query=query,
        query_string=raw_query,
        cookies=cookies,
        console=ConsoleRequest(
            method=str(scope.get("method", "GET")).upper(),
            path=full_path,
            query=query,
            headers=headers,
            cookies=cookies,
            client=f"{client[0]}:{client[1]}" if client else None,
            scheme=str(scope.get("scheme", "http")),
        ),
    )


async def read_form(receive: Receive) -> dict[str, str]:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, "the browser went away")
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise BadRequest(413, "form too large")
        if not message.get("more_body"):
            break
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(400, "not a form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def positive_int(fields: dict[str, str], name: str) -> int | None:
    value = fields.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > 19:
        raise BadRequest(400, f"{name} must be a positive number")
    number = int(value)
    if number < 1 or number >= 2**63:
        raise BadRequest(400, f"{name} must be a positive number")
    return number


def safe_next(value: str | None) -> str:
    """Only the console's own query-only URLs: never an open redirect."""
    if value and value.startswith("?") and len(value) < 2000 and value.isprintable():
        return value
    return "?view=overview"


def query(params: dict[str, Any]) -> str:
    return urlencode({k: str(v) for k, v in params.items() if v is not None and v != ""})


def cookie_header(name: str, value: str, request: Request, *, max_age: int | None) -> str:
    path = request.console.path or "/"
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if request.console.secure:
        parts.append("Secure")
    return "; ".join(parts)
