"""Errors whose message is the whole story for the user.

The CLI prints a :class:`UserError` as its message alone (no traceback) and exits with its
``exit_code``; everything else is a bug and keeps its traceback. ``agentropy --debug`` shows
the traceback of user errors too.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix from the message alone (a bad config, a reused run folder)."""

    exit_code: int = 1


class UsageError(UserError):
    """The command line or the files it names do not make sense; nothing heavy has started."""

    exit_code = 2
