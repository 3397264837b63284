"""Exceptions for user mistakes: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for (a spec, a path, an option, a config value)."""

    def __str__(self) -> str:
        """The message on one line: line breaks from user input (paths, specs) are escaped."""
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


class DataError(UserError):
    """Input data is unusable as a whole (too many bad items, wrong format)."""


class StoreError(UserError):
    """A feature store is missing, incomplete, corrupt or does not match the request."""


class DiskFullError(UserError):
    """A write failed for lack of space; nothing half-written was left where a rerun reads it."""
