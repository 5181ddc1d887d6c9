"""The one exception type a user sees: a plain message that names the file and the fix."""

from __future__ import annotations


class BlazeportError(Exception):
    """An error the user can act on; the CLI prints its message alone, without a traceback."""
