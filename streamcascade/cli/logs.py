"""How the command line speaks: log formats, and an error as one or two lines and an exit code."""

from __future__ import annotations

import json
import logging
import re
import sys

from streamcascade.errors import EXIT_INTERNAL, InputError, Unavailable, UserError


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (time, level, logger, message, and the
    traceback if any), for log collectors; control characters in a message
    (a request id with a newline, say) cannot forge a line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x9b]")


def escape_controls(text: str) -> str:
    r"""Control characters as escapes: a value from a request (an id with a
    newline or a terminal escape code) can neither forge a log line nor drive
    the reader's terminal.

    >>> escape_controls("r1\nINFO forged\x1b[2J")
    'r1\\nINFO forged\\x1b[2J'
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class PlainLogFormatter(logging.Formatter):
    """Time, level, logger and message on one line; the message's control
    characters escaped (tracebacks, from --debug, keep their lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def report_error(error: BaseException) -> int:
    """One or two lines for an error, and its exit code (see `streamcascade.errors`)."""
    from streamcascade.learning.snapshots import NoSuchSnapshot, SnapshotMismatch
    from streamcascade.models import ModelFetchError, ModelNotCached, UnknownModel

    if isinstance(error, (SnapshotMismatch, NoSuchSnapshot)):
        error = InputError(str(error), hint="`streamcascade state --state-dir DIR` lists them")
    elif isinstance(error, UnknownModel):
        error = InputError(str(error))
    elif isinstance(error, (ModelNotCached, ModelFetchError)):
        error = Unavailable(str(error))
    elif isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                            PermissionError)):  # fmt: skip
        error = InputError(f"{error.filename}: {error.strerror}" if error.filename else str(error))
    elif type(error).__module__.startswith("kafka"):
        from streamcascade.preflight import KAFKA_HINT

        error = Unavailable(f"Kafka: {type(error).__name__}: {error}", hint=KAFKA_HINT)
    if isinstance(error, UserError):
        print(f"error: {error}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        return error.exit_code
    print(f"error: internal error: {type(error).__name__}: {error}", file=sys.stderr)
    print("hint: run again with --debug for the traceback, and please report it",
          file=sys.stderr)  # fmt: skip
    return EXIT_INTERNAL
