"""What the commands share: connectors, progress, argument types, Kafka options."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar

from streamcascade.config import load_config
from streamcascade.errors import UsageError
from streamcascade.schemas import CodeRequest, DeadLetter

log = logging.getLogger("streamcascade")
T = TypeVar("T")


class _Record(Protocol):
    request: CodeRequest | None
    dead_letter: DeadLetter | None


def connector(group: str, kind: str) -> Any:
    """The factory of a source or sink (see `connectors/base.py`), found
    through the entry points of `group` (streamcascade.sources or
    streamcascade.sinks), so that this library never imports a connector and
    any installed one is opened by name."""
    found = {ep.name: ep for ep in entry_points(group=group)}
    if kind not in found:
        raise UsageError(
            f"no {group.rsplit('.', 1)[1][:-1]} named {kind!r}; installed: "
            f"{', '.join(sorted(found)) or 'none'}",
            hint="a connector package adds one with an entry point; reinstall the project "
            "(pip install -e .) if its own are missing",
        )
    return found[kind].load()


def open_source(args: argparse.Namespace) -> Any:
    """The source `--source` names (default: jsonl with --input, else the
    bundled humaneval), opened on `--input`: checked before any model loads."""
    kind = getattr(args, "source", None) or ("jsonl" if args.input else "humaneval")
    return connector("streamcascade.sources", kind)(args.input, args.limit)


def show_progress(
    items: Iterable[T], label: str, enabled: bool, total: int | None = None
) -> Iterable[T]:
    if not enabled:
        return items
    from tqdm import tqdm

    bar: Iterable[T] = tqdm(
        items, desc=label, total=total, file=sys.stderr, unit="req", dynamic_ncols=True
    )
    return bar


def read_records(args: argparse.Namespace, source: Any = None) -> Iterator[_Record]:
    """The records of `source` (default: `open_source(args)`), at most `--limit`."""
    source = source if source is not None else open_source(args)
    for count, record in enumerate(source.records()):
        if args.limit is not None and count >= args.limit:
            return
        yield record


def read_lines(path: Path | None) -> Iterator[str]:
    """A file's lines, or stdin's (left open) when no file is named."""
    if path is None:
        yield from sys.stdin
        return
    with path.open(encoding="utf-8") as handle:
        yield from handle


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def positive_float(value: str) -> float:
    """An argparse type: a number above 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return number


def interrupt_on_sigterm() -> None:
    """SIGTERM ends the command as Ctrl-C does, through its `finally`s (by
    default it ends Python at once, and child brokers and services live on)."""
    import signal

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def kafka_config(args: argparse.Namespace) -> Any:
    config = load_config(Path(args.config) if args.config else None)
    update: dict[str, Any] = {}
    if getattr(args, "bootstrap_servers", None):
        update["bootstrap_servers"] = [args.bootstrap_servers]
    if getattr(args, "instance_id", None):
        update["instance_id"] = args.instance_id
    if update:
        config = config.model_copy(update={"kafka": config.kafka.model_copy(update=update)})
    return config


def kafka_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", help="YAML config with a kafka section (configs/kafka.yaml)")
    command.add_argument("--bootstrap-servers", help="host:port, instead of the config's")
