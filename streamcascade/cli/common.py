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
from streamcascade.errors import Unavailable
from streamcascade.schemas import CodeRequest, DeadLetter

log = logging.getLogger("streamcascade")
T = TypeVar("T")


class _Record(Protocol):
    request: CodeRequest | None
    dead_letter: DeadLetter | None


def connector(group: str, kind: str, **kwargs: Any) -> Any:
    """Sources and sinks live in the `connectors` package, found through entry
    points (groups streamcascade.sources and streamcascade.sinks) so that this
    library never imports it."""
    found = {ep.name: ep for ep in entry_points(group=group)}
    if kind not in found:
        raise Unavailable(
            f"nothing named {kind!r} in {group}; installed: {sorted(found)}",
            hint="reinstall the project (pip install -e .): its connectors are entry points",
        )
    return found[kind].load()(**kwargs)


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


def read_records(args: argparse.Namespace) -> Iterator[_Record]:
    if args.input:
        source = connector("streamcascade.sources", "jsonl", path=Path(args.input))
    else:
        source = connector("streamcascade.sources", "humaneval", limit=args.limit)
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
