"""The console's pages, rendered on the server; every value from a record goes through escape."""

from .common import PageContext, layout
from .dead_letters import FilterChoices, dlq_page
from .flow import confirm_page, error_page, indexing_page, job_page, login_page
from .overview import overview_page
from .record import record_page

__all__ = (
    "FilterChoices",
    "PageContext",
    "confirm_page",
    "dlq_page",
    "error_page",
    "indexing_page",
    "job_page",
    "layout",
    "login_page",
    "overview_page",
    "record_page",
)
