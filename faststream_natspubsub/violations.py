"""Permission violations the server reports on a connection, and failing fast on them.

nats-server refuses a publish or a subscription the user may not make with one error line on
the connection (``Permissions Violation for Publish to "<subject>"``) and nothing else: a
refused JetStream request gets no answer and waits out its timeout, a refused ack or pull is
lost in silence. The connection's error callback hears the line; :class:`PermissionWatch`
turns it into a :class:`Violation`, fails the request that waits on that subject at once
(:meth:`PermissionWatch.guarding`) and tells its listeners (an app stops the subscribers that
need the right).

nats-py hands the server's line over lower-cased, so a violation's subject is lower-case;
:func:`restore_case` gives it back the case of a subject the caller knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from .advisory_check import subject_matches
from .errors import PermissionDeniedError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

__all__ = (
    "PermissionWatch",
    "Violation",
    "restore_case",
    "violation_in",
)

T = TypeVar("T")

# The server's text after nats-py lower-cased it; a refused subscription may end with its sid.
_VIOLATION: Final = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"')
# Violations remembered per connection (for probes and health); older ones are forgotten.
_REMEMBERED: Final = 256
# The tokens of the server's own subjects, to give a lower-cased subject its case back.
_SERVER_TOKENS: Final = frozenset(
    {
        "$js",
        "api",
        "ack",
        "event",
        "advisory",
        "consumer",
        "stream",
        "info",
        "create",
        "update",
        "delete",
        "list",
        "names",
        "msg",
        "get",
        "next",
        "purge",
        "durable",
        "direct",
        "max_deliveries",
        "$kv",
        "$sys",
        "req",
        "user",
    }
)


@dataclass(frozen=True, slots=True)
class Violation:
    """One refusal the server reported: ``action`` is ``publish`` or ``subscribe``."""

    action: str
    subject: str
    """As the server named it, lower-cased by nats-py."""

    def is_for(self, action: str, subject: str) -> bool:
        """Whether this refuses ``action`` on exactly ``subject``."""
        return self.action == action and self.subject == subject.lower()

    def covered_by(self, action: str, pattern: str) -> bool:
        """Whether ``pattern`` (a permission, wildcards allowed) covers the refused subject."""
        return self.action == action and subject_matches(pattern.lower(), self.subject)

    def error(self, subject: str | None = None, *, what: str = "") -> PermissionDeniedError:
        """The error to raise for this refusal, naming ``subject`` (its known case) if given."""
        return PermissionDeniedError(self.action, subject or self.subject, what=what)


def violation_in(error: BaseException) -> Violation | None:
    """The permission violation an error of the connection's callback reports, if it is one."""
    found = _VIOLATION.search(str(error).lower())
    if found is None:
        return None
    action = "publish" if found.group(1) == "publish" else "subscribe"
    return Violation(action, found.group(2))


def restore_case(subject: str, known: Iterable[str] = (), *, names: Iterable[str] = ()) -> str:
    """``subject`` (lower-cased) in the case of one of the ``known`` subjects, else with the
    server's own tokens (``$JS``, ``API``, ``STREAM``...) and the ``names`` (stream names,
    say) it holds in their case."""
    for candidate in known:
        if candidate.lower() == subject:
            return candidate
    tokens = subject.split(".")
    if not tokens or tokens[0] not in ("$js", "$kv", "$sys"):
        return subject
    cased = {name.lower(): name for name in names}
    return ".".join(t.upper() if t in _SERVER_TOKENS else cased.get(t, t) for t in tokens)


class _Guarded:
    """One guarded block of one task: :meth:`PermissionWatch.guarding`'s context manager.

    A class, not a generator, and itself the entry the watch keeps while the block runs: it
    wraps every JetStream publish, where each extra object and call is paid per message.
    """

    __slots__ = ("task", "violation", "watch", "what")

    def __init__(self, watch: PermissionWatch, what: str) -> None:
        self.watch = watch
        self.what = what
        self.task: asyncio.Task[object] | None = None
        """The task to interrupt, while the block runs."""
        self.violation: Violation | None = None

    def match(self, violation: Violation) -> bool:
        """Whether ``violation`` refuses what the block waits for."""
        raise NotImplementedError

    def name(self, violation: Violation) -> str | None:
        """The refused subject in its known case, if known."""
        return None

    def __enter__(self) -> None:
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to interrupt
            return
        refused = self.watch.reply_refusal
        if refused is not None and self.match(refused):  # no answer can come: do not wait
            raise self._error(refused)
        self.task = task
        self.violation = None
        self.watch._guards.append(self)  # add_guard, without the call (once per publish)

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        task = self.task
        if task is None:
            return
        self.task = None
        guards = self.watch._guards
        if guards and guards[-1] is self:  # remove_guard's usual case, without the call
            guards.pop()
        else:
            self.watch.remove_guard(self)
        violation = self.violation
        if violation is None:
            return
        # This guard cancelled the task: take that cancel back, even when something inside
        # swallowed it (nats-py's forced flush does), or a later guard's cancel would be
        # taken for one from outside and escape as CancelledError.
        if task.uncancel() > 0 and isinstance(exc, asyncio.CancelledError):
            return  # also cancelled from outside: that wins
        raise self._error(violation) from None

    def _error(self, violation: Violation) -> PermissionDeniedError:
        return violation.error(self.name(violation), what=self.what)


class _MatchGuarded(_Guarded):
    """A block guarded by a caller's match (and naming) functions."""

    __slots__ = ("_match", "_name")

    def __init__(
        self,
        watch: PermissionWatch,
        match: Callable[[Violation], bool],
        name: Callable[[Violation], str] | None,
        what: str,
    ) -> None:
        super().__init__(watch, what)
        self._match = match
        self._name = name

    def match(self, violation: Violation) -> bool:
        return self._match(violation)

    def name(self, violation: Violation) -> str | None:
        return self._name(violation) if self._name is not None else None


class _RequestGuarded(_Guarded):
    """A request (or JetStream publish) to one subject: no closures built per call."""

    __slots__ = ("subject",)

    def __init__(self, watch: PermissionWatch, subject: str, what: str) -> None:
        # The base's fields set here: one call less on every JetStream publish.
        self.watch = watch
        self.what = what
        self.task = None
        self.violation = None
        self.subject = subject

    def match(self, violation: Violation) -> bool:
        return violation.is_for("publish", self.subject) or self.watch.replies_refused(violation)

    def name(self, violation: Violation) -> str:
        if violation.is_for("publish", self.subject):
            return self.subject
        return self.watch.named(violation)


class PermissionWatch:
    """The permission violations heard on one connection.

    ``inbox_prefix`` is the connection's: a refused subscription under it means that no
    request can get its answer, so every guarded request fails with it.
    """

    def __init__(self, *, inbox_prefix: str = "_INBOX") -> None:
        self.inbox_prefix = inbox_prefix
        self._heard: deque[Violation] = deque(maxlen=_REMEMBERED)
        self._count = 0
        self._guards: list[_Guarded] = []
        self._listeners: list[Callable[[Violation], None]] = []
        self.reply_refusal: Violation | None = None
        """A refused subscription under the inbox prefix: nats-py keeps using its one reply
        subscription, so every later request of the connection fails without a new word
        from the server."""

    def connected(self) -> None:
        """A new connection: its reply subscription is made afresh."""
        self.reply_refusal = None

    @property
    def count(self) -> int:
        """How many violations were heard so far (a mark for :meth:`since`)."""
        return self._count

    def since(self, mark: int) -> list[Violation]:
        """The violations heard after :attr:`count` was ``mark`` (the remembered ones)."""
        new = self._count - mark
        return list(self._heard)[-new:] if new > 0 else []

    def add_listener(self, listener: Callable[[Violation], None]) -> None:
        """Call ``listener`` (synchronously: it must not block) for every violation."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Violation], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def add_guard(self, guard: _Guarded) -> None:
        self._guards.append(guard)

    def remove_guard(self, guard: _Guarded) -> None:
        guards = self._guards
        if guards and guards[-1] is guard:  # the usual case: the newest block ends first
            guards.pop()
            return
        with contextlib.suppress(ValueError):
            guards.remove(guard)

    def hear(self, error: BaseException) -> Violation | None:
        """Take an error of the connection's callback; a violation fails the innermost
        guard of each task that waits on it and is told to every listener."""
        violation = violation_in(error)
        if violation is None:
            return None
        self._heard.append(violation)
        self._count += 1
        if self.replies_refused(violation):
            self.reply_refusal = violation
        claimed: set[asyncio.Task[object]] = set()
        for guard in reversed(self._guards):  # the innermost guard of a task first
            task = guard.task
            if task is None or task in claimed or guard.violation is not None:
                continue
            if guard.match(violation):
                claimed.add(task)
                guard.violation = violation
                task.cancel()
        for listener in list(self._listeners):
            listener(violation)
        return violation

    def replies_refused(self, violation: Violation) -> bool:
        """Whether ``violation`` refuses a subscription under the connection's inbox prefix:
        then no request can get its answer."""
        prefix = self.inbox_prefix.lower() + "."
        return violation.action == "subscribe" and violation.subject.startswith(prefix)

    def guarding(
        self,
        match: Callable[[Violation], bool],
        *,
        name: Callable[[Violation], str] | None = None,
        what: str = "",
    ) -> contextlib.AbstractContextManager[None]:
        """Run the block; a matching violation heard meanwhile ends it at once with
        :class:`PermissionDeniedError` (``name`` gives the subject its known case)."""
        return _MatchGuarded(self, match, name, what)

    def guarding_request(
        self, subject: str, *, what: str = ""
    ) -> contextlib.AbstractContextManager[None]:
        """:meth:`guarding` for a request (or JetStream publish) to ``subject``."""
        return _RequestGuarded(self, subject, what)

    def named(self, violation: Violation, names: Iterable[str] = ()) -> str:
        """The refused subject to tell a person: the inbox prefix's ``<prefix>.>`` for a
        reply subscription (what to allow), else the subject in its case where known."""
        if self.replies_refused(violation):
            return f"{self.inbox_prefix}.>"
        return restore_case(violation.subject, names=names)

    async def guard(self, awaitable: Awaitable[T], *, subject: str, what: str = "") -> T:
        """Await a request (or JetStream publish) to ``subject``; a violation refusing it
        raises :class:`PermissionDeniedError` at once instead of waiting for the timeout."""
        return await self.run(awaitable, self.guarding_request(subject, what=what))

    @staticmethod
    async def run(awaitable: Awaitable[T], guarded: contextlib.AbstractContextManager[None]) -> T:
        """Await ``awaitable`` inside ``guarded`` (closed unawaited if the guard refuses
        at once)."""
        try:
            guarded.__enter__()
        except BaseException:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise
        with contextlib.ExitStack() as stack:
            stack.push(guarded)
            return await awaitable
