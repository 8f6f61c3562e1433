"""Errors a person can act on, and the exit codes the command line gives them.

A `UserError` is a mistake the user can fix (a config field, a missing file, no
broker at the address given): the command line prints its message and hint in
one or two lines, never a traceback, and exits with the code of its kind, so
that a script can tell a typo from an outage. Anything else is a bug: one line,
exit code 1, and `--debug` shows the traceback.

>>> error = InputError("configs/x.yaml: levels.0.threshold: not a number", hint="use 0.0 to 1.0")
>>> error.exit_code, str(error)
(3, 'configs/x.yaml: levels.0.threshold: not a number')
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
"""A bug: the traceback is behind `--debug`."""
EXIT_USAGE = 2
"""The command line itself (argparse uses 2 as well)."""
EXIT_INPUT = 3
"""A config, input, ladder or state file the user gave."""
EXIT_UNAVAILABLE = 4
"""Something the command needs is not there: a broker, a model file, a server."""
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake the user can fix; `hint` says how, in one line."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(UserError):
    """The command line's arguments do not make sense together."""

    exit_code = EXIT_USAGE


class InputError(UserError):
    """A file the user named is missing, unreadable or not what it should be."""

    exit_code = EXIT_INPUT


class Unavailable(UserError):
    """A broker, model file or server the command needs cannot be reached."""

    exit_code = EXIT_UNAVAILABLE
