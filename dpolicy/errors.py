"""Errors that mean "the input is wrong", as opposed to a bug.

The ``dpolicy`` command prints these as one or two plain lines (``error: <what>, <where>, <what was
expected>``) and exits 1 (2 for :class:`UsageError`); ``--debug`` or ``DPOLICY_DEBUG=1`` shows the
traceback. Each also derives from the builtin a caller would expect (``ValueError``, ...), so code
that catches those keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class: a problem with what the user gave (a file, an option, a config value)."""

    exit_code = 1


class UsageError(UserError, ValueError):
    """A bad command-line option or config value (checked before anything is written)."""

    exit_code = 2


class ConfigError(UsageError):
    """A config that cannot be composed or does not describe a valid experiment."""


class DatasetError(UserError, ValueError):
    """A dataset is missing, malformed, or does not hold what the caller expected."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, corrupt, of an unknown format or names an unknown policy."""
