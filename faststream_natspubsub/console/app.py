"""The console as an ASGI application: requests, routing, safety checks, responses.

Every page is on one path and chosen by the query (``?view=dlq``), so the console works
wherever it is mounted, including FastStream's ``AsgiFastStream``, whose routes match one exact
path: ``asgi_routes=[("/natspubsub", pubsub.console())]``. Links are query-only and resolve
against that path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Final, Literal

import nats.errors
from pydantic_core import to_json

from ..health import DEFAULT_MAX_PENDING
from .actions import ActionKind, ActionRequest, ActionRunner, Job, JobConflictError
from .backend import ConsoleBackend, NotConnectedError
from .errors import ConsoleConfigError, ConsoleError
from .http import (
    KEY_RE,
    BadRequest,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    cookie_header,
    html_response,
    positive_int,
    query,
    read_form,
    read_request,
    redirect,
    safe_next,
)
from .idempotency import (
    IdempotencyStore,
    KvIdempotencyStore,
    MemoryIdempotencyStore,
    console_bucket_name,
)
from .index import DEFAULT_INDEX_LIMIT, IndexBuildingError
from .overview import collect_overview
from .pages import (
    FilterChoices,
    PageContext,
    confirm_page,
    dlq_page,
    error_page,
    indexing_page,
    job_page,
    login_page,
    overview_page,
    record_page,
)
from .query import DeadLetterFilter, FilterError, load_record, page
from .security import (
    CSRF_COOKIE,
    DEFAULT_SESSION_SECONDS,
    SESSION_COOKIE,
    AuthDependency,
    Authenticator,
    same_origin,
)

if TYPE_CHECKING:
    from nats.aio.client import Client

    from .outbox import OutboxProvider

__all__ = ("OperationsConsole",)

logger = logging.getLogger("faststream_natspubsub.console")


# Seconds an action request waits for its job before showing the progress page.
ACTION_WAIT: Final = 1.5
# Seconds a page waits for the index; a first build of a large DLQ shows its progress instead.
INDEX_WAIT: Final = 1.0
_ASSETS: Final = {"console.css": "text/css", "console.js": "text/javascript"}


class OperationsConsole:
    """The operations console of one app: an ASGI application.

    Read-only unless ``actions=True``; actions need ``token=`` (or named tokens,
    ``{"alice": "...", "bob": "..."}``) or ``auth=``, a function of the
    :class:`~faststream_natspubsub.console.ConsoleRequest` returning the operator's name or
    ``None``. With either, every page needs a logged-in operator.

    Args:
        connection: returns the NATS client to use (the broker's, for a mounted console).
        env: the environment.
        app: the consuming app whose dead letters are shown.
        actions: allow replay and purge.
        token: console token(s); operators log in with it on the console's form.
        auth: the application's own check, instead of a token.
        secret: key signing sessions and CSRF tokens; give the same one to every process
            serving the console (default: random, so sessions end with the process).
        outbox: a provider of outbox lag (see :class:`OutboxStats`), shown on the overview.
        idempotency: ``"memory"`` (one process), ``"kv"`` (a NATS KV bucket shared by every
            process), or an :class:`IdempotencyStore`.
        max_pending: a consumer with more undelivered messages is shown as lagging.
        index_limit: records indexed at most (about 110 bytes each).
        session_seconds: how long a login lasts.
    """

    def __init__(
        self,
        connection: Callable[[], Client],
        *,
        env: str,
        app: str,
        actions: bool = False,
        token: str | dict[str, str] | None = None,
        auth: AuthDependency | None = None,
        secret: bytes | None = None,
        outbox: OutboxProvider | None = None,
        idempotency: IdempotencyStore | Literal["memory", "kv"] = "memory",
        max_pending: int = DEFAULT_MAX_PENDING,
        index_limit: int = DEFAULT_INDEX_LIMIT,
        session_seconds: float = DEFAULT_SESSION_SECONDS,
    ) -> None:
        self.backend = ConsoleBackend(connection, env=env, app=app, index_limit=index_limit)
        self.auth = Authenticator(
            token=token, auth=auth, secret=secret, session_seconds=session_seconds
        )
        if actions and not self.auth.enabled:
            raise ConsoleConfigError(
                "actions=True needs token= or auth=: replay and purge must know who asks"
            )
        self.actions = actions
        self.outbox = outbox
        self.max_pending = max_pending
        if idempotency == "memory":
            self.store: IdempotencyStore = MemoryIdempotencyStore()
        elif idempotency == "kv":
            self.store = KvIdempotencyStore(console_bucket_name(self.backend.env, self.backend.app))
        elif isinstance(idempotency, IdempotencyStore):
            self.store = idempotency
        else:
            raise ConsoleConfigError(
                f"idempotency must be 'memory', 'kv' or a store, not {idempotency!r}"
            )
        self.runner = ActionRunner(self.backend, self.store)
        self._starting = asyncio.Lock()
        self._assets = {name: _read_asset(name) for name in _ASSETS}
        self._asset_version = hashlib.sha256(b"".join(self._assets.values())).hexdigest()[:12]

    # -- lifecycle -----------------------------------------------------------------------

    async def startup(self) -> None:
        """Prepare what needs the server (the KV bucket of a shared idempotency store).

        A mounted console gets no lifespan events: the first request that needs it does this.
        """
        async with self._starting:
            if isinstance(self.store, KvIdempotencyStore) and not self.store.bound:
                await self.store.bind(self.backend.js())

    async def shutdown(self) -> None:
        """Stop running actions."""
        await self.runner.close()

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (``http``); ``lifespan`` runs :meth:`startup` and :meth:`shutdown`."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request = read_request(scope)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        new_cookie = None
        if not KEY_RE.fullmatch(cookie or ""):
            cookie = new_cookie = self.auth.new_csrf_cookie()
        try:
            await self.startup()
            response = await self._dispatch(request, receive, cookie)
        except BadRequest as exc:
            response = self._error(request, cookie, exc.status, exc.message)
        except IndexBuildingError as exc:
            ctx = self._context(request, None, cookie)
            response = html_response(200, indexing_page(ctx, exc.done, exc.total))
        except NotConnectedError as exc:
            response = self._error(request, cookie, 503, str(exc))
        except (ConsoleError, nats.errors.Error, TimeoutError) as exc:
            logger.warning("console: %s %s failed: %s", request.method, request.query, exc)
            message = f"the NATS server did not answer as expected: {exc or type(exc).__name__}"
            response = self._error(request, cookie, 502, message)
        if new_cookie is not None:
            response.headers.append(
                (
                    b"set-cookie",
                    cookie_header(CSRF_COOKIE, new_cookie, request, max_age=None).encode(),
                )
            )
        elapsed = (time.perf_counter() - started) * 1000
        response.headers.append((b"server-timing", f"total;dur={elapsed:.1f}".encode()))
        await response.send(send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - the server reports it and does not start
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, request: Request, receive: Receive, cookie: str) -> Response:
        if request.method == "GET" and "asset" in request.query:
            return self._asset(request.query["asset"])
        if request.method == "POST":
            form = await read_form(receive)
            return await self._post(request, form, cookie)
        if request.method != "GET":
            raise BadRequest(405, "only GET and POST are served")
        view = request.query.get("view", "overview")
        if view == "login" and self.auth.uses_login:
            ctx = self._context(request, None, cookie, view=view)
            next_url = safe_next(request.query.get("next"))
            return html_response(200, login_page(ctx, error=None, next_url=next_url))
        operator = await self._operator(request)
        if operator is None:
            return self._unauthorised(request, cookie)
        ctx = self._context(request, operator, cookie, view=view)
        handler = {
            "overview": self._overview,
            "dlq": self._dlq,
            "record": self._record,
            "confirm": self._confirm,
            "job": self._job,
        }.get(view)
        if handler is None:
            raise BadRequest(404, "no such page")
        return await handler(request, ctx)

    # -- identity ------------------------------------------------------------------------

    async def _operator(self, request: Request) -> str | None:
        if not self.auth.enabled:
            return "anonymous"
        return await self.auth.identify(request.console)

    def _unauthorised(self, request: Request, cookie: str) -> Response:
        if self.auth.uses_login:
            back = "?" + request.query_string if request.query_string else "?view=overview"
            return redirect("?" + query({"view": "login", "next": back}))
        ctx = self._context(request, None, cookie)
        return html_response(401, error_page(ctx, 401, "not authorised for the natspubsub console"))

    def _context(
        self, request: Request, operator: str | None, cookie: str, *, view: str = ""
    ) -> PageContext:
        return PageContext(
            env=self.backend.env,
            app=self.backend.app,
            operator=operator,
            csrf=self.auth.csrf_token(cookie),
            actions=self.actions and operator is not None,
            login=self.auth.uses_login,
            asset_version=self._asset_version,
            view=view,
        )

    # -- pages ---------------------------------------------------------------------------

    async def _overview(self, request: Request, ctx: PageContext) -> Response:
        nc = self.backend.nc()
        await self.backend.index.refresh(nc, wait=INDEX_WAIT)
        overview = await collect_overview(
            nc,
            env=self.backend.env,
            app=self.backend.app,
            index=self.backend.index,
            prefix=self.backend.prefix,
            outbox=self.outbox,
            max_pending=self.max_pending,
        )
        return html_response(200, overview_page(ctx, overview))

    async def _dlq(self, request: Request, ctx: PageContext) -> Response:
        nc = self.backend.nc()
        index = self.backend.index
        state = await index.refresh(nc, wait=INDEX_WAIT)
        choices = _choices(index.subjects, index.reasons, self.backend.prefix)
        try:
            flt = DeadLetterFilter.from_query(request.query)
            before = positive_int(request.query, "before")
            after = positive_int(request.query, "after")
        except (FilterError, BadRequest) as exc:
            message = exc.message if isinstance(exc, BadRequest) else str(exc)
            return html_response(
                400, dlq_page(ctx, DeadLetterFilter(), None, choices, error=message)
            )
        found = page(index, flt, prefix=self.backend.prefix, before=before, after=after)
        return html_response(200, dlq_page(ctx, flt, found, choices, dlq_exists=state.exists))

    async def _record(self, request: Request, ctx: PageContext) -> Response:
        seq = positive_int(request.query, "seq")
        if seq is None:
            raise BadRequest(400, "which record? (seq is missing)")
        nc = self.backend.nc()
        await self.backend.index.refresh(nc, wait=INDEX_WAIT)
        loaded = await load_record(nc, self.backend.stream, seq)
        if loaded is None:
            raise BadRequest(404, f"no record at seq {seq}: replayed or purged meanwhile?")
        event_id = loaded.record.event_id if loaded.record is not None else None
        others = self.backend.index.event_records(event_id) if isinstance(event_id, str) else []
        return html_response(200, record_page(ctx, loaded, others=others, key=_new_key()))

    async def _confirm(self, request: Request, ctx: PageContext) -> Response:
        self._require_actions(ctx)
        action = _action_request(request.query)
        count: int | None = 1
        if action.seq is None:
            await self.backend.index.refresh(self.backend.nc(), wait=INDEX_WAIT)
            where = action.filter.index_filter(self.backend.prefix, upto_seq=action.upto)
            count = self.backend.index.count(where)
            back = "?" + query({"view": "dlq", **action.filter.to_query()})
        else:
            back = "?" + query({"view": "record", "seq": action.seq})
        markup = confirm_page(ctx, action, count=count, key=_new_key(), back=back)
        return html_response(200, markup)

    async def _job(self, request: Request, ctx: PageContext) -> Response:
        key = request.query.get("id", "")
        if not KEY_RE.fullmatch(key):
            raise BadRequest(400, "not an action id")
        job = self.runner.job(key)
        data = job.to_dict() if job is not None else await self.runner.stored(key)
        if data is None:
            raise BadRequest(404, "no such action (it may have expired)")
        if request.query.get("format") == "json":
            return Response(200, to_json(data), content_type="application/json")
        return html_response(200, job_page(ctx, data, here=job is not None))

    # -- forms ---------------------------------------------------------------------------

    async def _post(self, request: Request, form: dict[str, str], cookie: str) -> Response:
        what = form.get("do", "")
        if not same_origin(request.console) or not self.auth.csrf_ok(
            request.cookies.get(CSRF_COOKIE), form.get("csrf")
        ):
            logger.warning(
                "console: refused a %r form from %s: CSRF check failed (origin %r)",
                what,
                request.console.client,
                request.console.headers.get("origin"),
            )
            raise BadRequest(
                403,
                "this form is not from this console page (CSRF check failed); "
                "reload the page and try again",
            )
        if what == "login" and self.auth.uses_login:
            return self._login(request, form, cookie)
        if what == "logout":
            response = redirect("?view=login" if self.auth.uses_login else "?view=overview")
            cleared = cookie_header(SESSION_COOKIE, "", request, max_age=0)
            response.headers.append((b"set-cookie", cleared.encode()))
            return response
        if what != "action":
            raise BadRequest(400, "unknown form")
        if not self.actions:
            raise BadRequest(403, "actions are disabled on this console (read-only)")
        operator = await self._operator(request)
        if operator is None:
            logger.warning(
                "console: refused an action from %s: not authenticated", request.console.client
            )
            raise BadRequest(401, "log in first")
        key = form.get("key", "")
        if not KEY_RE.fullmatch(key):
            raise BadRequest(400, "the form has no valid idempotency key; reload the page")
        action = _action_request(form, kind_field="kind")
        try:
            outcome = await self.runner.submit(
                key, action, operator=operator, client=request.console.client
            )
        except JobConflictError as exc:
            raise BadRequest(409, str(exc)) from None
        if isinstance(outcome, Job):
            await self.runner.wait(outcome, ACTION_WAIT)
        return redirect("?" + query({"view": "job", "id": key}))

    def _login(self, request: Request, form: dict[str, str], cookie: str) -> Response:
        operator = self.auth.check_token(form.get("token", ""))
        next_url = safe_next(form.get("next"))
        if operator is None:
            logger.warning("console: failed login from %s", request.console.client)
            ctx = self._context(request, None, cookie, view="login")
            return html_response(401, login_page(ctx, error="wrong token", next_url=next_url))
        logger.info("console: %s logged in from %s", operator, request.console.client)
        response = redirect(next_url)
        value = self.auth.session_cookie(operator)
        max_age = int(self.auth.session_seconds)
        cookie_line = cookie_header(SESSION_COOKIE, value, request, max_age=max_age)
        response.headers.append((b"set-cookie", cookie_line.encode()))
        return response

    def _error(self, request: Request, cookie: str, status: int, message: str) -> Response:
        return html_response(
            status, error_page(self._context(request, None, cookie), status, message)
        )

    def _require_actions(self, ctx: PageContext) -> None:
        if not ctx.actions:
            raise BadRequest(403, "actions are disabled on this console (read-only)")

    def _asset(self, name: str) -> Response:
        body = self._assets.get(name)
        if body is None:
            raise BadRequest(404, "no such file")
        # The URL carries the content's hash (?v=...): a changed file gets a new URL.
        immutable = "public, max-age=31536000, immutable"
        return Response(200, body, content_type=_ASSETS[name], cache=immutable)


def _action_request(fields: dict[str, str], *, kind_field: str = "action") -> ActionRequest:
    try:
        kind = ActionKind(fields.get(kind_field, ""))
    except ValueError:
        raise BadRequest(400, "unknown action") from None
    seq = positive_int(fields, "seq")
    if seq is not None:
        return ActionRequest(kind=kind, seq=seq)
    upto = positive_int(fields, "upto")
    if upto is None:
        raise BadRequest(400, "the action names no record and no snapshot (upto)")
    try:
        flt = DeadLetterFilter.from_query(fields)
    except FilterError as exc:
        raise BadRequest(400, str(exc)) from None
    return ActionRequest(kind=kind, filter=flt, upto=upto)


def _choices(subjects: list[str], reasons: list[str], prefix: str) -> FilterChoices:
    topics, apps = set(), set()
    for subject in subjects:
        rest = subject[len(prefix) + 1 :] if subject.startswith(prefix + ".") else ""
        source_app, _, topic = rest.partition(".")
        if topic:
            apps.add(source_app)
            topics.add(topic)
    return FilterChoices(reasons=reasons, topics=sorted(topics)[:500], apps=sorted(apps)[:500])


def _new_key() -> str:
    return secrets.token_urlsafe(18)


def _read_asset(name: str) -> bytes:
    return resources.files("faststream_natspubsub.console").joinpath("static", name).read_bytes()
