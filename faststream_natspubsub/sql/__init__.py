"""The transactional outbox and the SQL inbox, on SQLAlchemy 2 (asyncio). Needs the ``[sql]`` extra.

- :class:`Outbox`: ``await outbox.add(session, topic, message)`` inserts the event in the
  caller's transaction; a relay publishes committed rows through JetStream with
  ``Nats-Msg-Id`` = event id. ``NatsPubsub(..., outbox=engine)`` creates one.
- :class:`SqlInboxStore`: ``NatsPubsub(..., inbox=SqlInboxStore(engine))``; the processed mark
  commits with what the handler writes through its ``InboxSession``.

SQLite (``sqlite+aiosqlite://``) and PostgreSQL (``postgresql+asyncpg://``) are supported.
"""

from ._require import require_sql_extra

require_sql_extra("faststream_natspubsub.sql")

from .dialects import use_sqlite_wal  # noqa: E402
from .inbox import SqlInboxStore  # noqa: E402
from .options import OutboxOptions  # noqa: E402
from .outbox import Outbox, OutboxStatus  # noqa: E402
from .relay import OutboxRelay  # noqa: E402
from .schema import (  # noqa: E402
    DEFAULT_PREFIX,
    inbox_table,
    outbox_table,
    render_ddl,
    tables_metadata,
)

__all__ = (
    "DEFAULT_PREFIX",
    "Outbox",
    "OutboxOptions",
    "OutboxRelay",
    "OutboxStatus",
    "SqlInboxStore",
    "inbox_table",
    "outbox_table",
    "render_ddl",
    "tables_metadata",
    "use_sqlite_wal",
)
