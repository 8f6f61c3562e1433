"""JSON Lines in and out: one CodeRequest per line in, one CascadeAnswer per line out."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from connectors.base import Record
from streamcascade.errors import InputError
from streamcascade.preflight import check_input_file, check_output_file
from streamcascade.schemas import DeadLetter
from streamcascade.service.codec import Rejected, parse_request


def open_source(location: str | None, limit: int | None) -> JsonlSource:
    """A `streamcascade.sources` entry point: the JSONL file at `location`."""
    if location is None:
        raise InputError("the jsonl source reads a file: name it with --input FILE")
    check_input_file(Path(location))
    return JsonlSource(Path(location))


def open_sink(location: str | None, stream: IO[str] | None, option: str = "--out") -> JsonlSink:
    """A `streamcascade.sinks` entry point: append to the file at `location`,
    or write to `stream` (stdout by default)."""
    if location is not None:
        check_output_file(Path(location), option)
    return JsonlSink(Path(location) if location is not None else None, stream)


class JsonlSource:
    """Reads CodeRequests from a .jsonl file. A line that is not a request
    becomes a dead letter with the reason and the same `error_type` as on
    the Kafka path (NotUtf8, NotJson, WrongSchema, Unsupported, TooLarge): one
    codec decides for both. Reading goes on."""

    def __init__(self, path: Path, max_line_bytes: int = 16 * 1024 * 1024) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes

    def records(self) -> Iterator[Record]:
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                parsed = parse_request(line, self.max_line_bytes)
                if isinstance(parsed, Rejected):
                    text = line.decode("utf-8", errors="replace")
                    yield Record(
                        dead_letter=DeadLetter(
                            reason=parsed.reason,
                            error_type=parsed.error_type,
                            raw=text,
                            source=f"{self.path}:{number}",
                        )
                    )
                else:
                    yield Record(request=parsed)


class JsonlSink:
    """Appends one JSON object per line and flushes it, to a file or a stream
    (stdout by default), so that what was written survives a crash."""

    def __init__(self, path: Path | None = None, stream: IO[str] | None = None) -> None:
        self.path = path
        self._handle: IO[str] = path.open("a", encoding="utf-8") if path else (stream or sys.stdout)

    def write(self, record: BaseModel) -> None:
        self._handle.write(record.model_dump_json() + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self.path is not None:
            self._handle.close()
