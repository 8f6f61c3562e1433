"""JSON Lines in and out: one CodeRequest per line in, one CascadeAnswer per line out."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ValidationError

from connectors.base import Record
from streamcascade.schemas import CodeRequest, DeadLetter
from streamcascade.tasks import check_request


class JsonlSource:
    """Reads CodeRequests from a .jsonl file. A line that is not valid JSON or not a
    valid request becomes a dead letter with the reason; reading goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> Iterator[Record]:
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if not text.strip():
                    continue
                where = f"{self.path}:{number}"
                try:
                    request = CodeRequest.model_validate_json(text)
                    check_request(request)  # what its kind asks of it
                except ValidationError as exc:
                    reason = "; ".join(
                        f"{'.'.join(str(p) for p in e['loc']) or '<record>'}: {e['msg']}"
                        for e in exc.errors()
                    )
                    yield Record(
                        dead_letter=DeadLetter(
                            reason=reason, error_type="ValidationError", raw=text, source=where
                        )
                    )
                except ValueError as exc:
                    yield Record(
                        dead_letter=DeadLetter(
                            reason=str(exc), error_type="WrongKind", raw=text, source=where
                        )
                    )
                else:
                    yield Record(request=request)


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
