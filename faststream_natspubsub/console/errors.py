"""Errors of the operations console, under the package's root error.

NatsPubsubError
└── ConsoleError                       a console operation failed (a scan, a server request)
    └── ConsoleConfigError (ValueError)  settings that would make the console unsafe or unusable
"""

from __future__ import annotations

from ..errors import NatsPubsubError

__all__ = ("ConsoleConfigError", "ConsoleError")


class ConsoleError(NatsPubsubError):
    """A console operation failed: reading a stream timed out, the server refused a request."""


class ConsoleConfigError(ConsoleError, ValueError):
    """Console settings that are refused, e.g. actions enabled without any authentication."""
