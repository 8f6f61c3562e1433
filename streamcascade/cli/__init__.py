"""streamcascade: answer a stream of coding requests with a cascade of models.

Commands: run (a stream through the cascade), serve (the Kafka service), bench
and perf (benchmarks), feed and follow (topics), state (learner snapshots),
explain (why an answer came from where it did), faults (fault runs), kafka (a
local broker), models (fetch the model files).
"""

from __future__ import annotations

import argparse
import logging
import sys

from streamcascade.cli import bench, kafka, perf, stream
from streamcascade.cli.logs import (
    JsonLogFormatter,
    PlainLogFormatter,
    escape_controls,
    report_error,
)
from streamcascade.errors import EXIT_INTERRUPTED

__all__ = ["JsonLogFormatter", "PlainLogFormatter", "build_parser", "escape_controls", "main"]


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("streamcascade")
    except PackageNotFoundError:
        installed = "unknown (not installed)"
    parser = argparse.ArgumentParser(
        prog="streamcascade",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamcascade {installed}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging, and a traceback for any error")  # fmt: skip
    parser.add_argument("--log-json", action="store_true",
                        help="logs as one JSON object per line")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    for module in (stream, bench, perf, kafka):
        module.add_commands(sub)
    for command in sub.choices.values():
        # Also after the command name, where people type it (SUPPRESS: not unset by it).
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="debug logging, and a traceback for any error")  # fmt: skip
        command.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS,
                             help="logs as one JSON object per line")  # fmt: skip
    parser.epilog = (
        "exit codes: 0 done; 1 a bug (--debug shows the traceback); 2 the command line; "
        "3 a config, input or state file; 4 a broker, model or server unavailable; "
        "130 interrupted"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line. Exit codes: 0 done, 1 a bug, 2 usage, 3 a file or
    config the user gave, 4 something needed is unavailable, 130 interrupted."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    verbose = args.verbose or debug
    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_json", False):
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(PlainLogFormatter())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    # httpx logs every HTTP call at INFO: one line per generation is noise.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # the one place errors become exit codes
        if debug:
            raise
        return report_error(error)
    return result
