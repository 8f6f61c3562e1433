"""A directory of files in and out: one request per `.json` file in (read in
name order), one answer per file out, named by its request id. For pipelines
that hand work over as files (a spool directory, a shared volume).

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> from streamcascade.schemas import CodeRequest
>>> inbox = Path(tempfile.mkdtemp())
>>> _ = (inbox / "a.json").write_text('{"id": "a/1", "prompt": "def f():", "entry_point": "f"}')
>>> _ = (inbox / "b.json").write_text("not json")
>>> [(r.request.id if r.request else r.dead_letter.error_type)
...  for r in open_source(str(inbox), None).records()]
['a/1', 'NotJson']
>>> outbox = open_sink(str(inbox / "out"), None, "--out")
>>> outbox.write(CodeRequest(id="a/1", prompt="p", entry_point="f"))
>>> sorted(p.name for p in (inbox / "out").iterdir())
['a%2F1.json']
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import quote

from pydantic import BaseModel

from connectors.base import Record
from streamcascade.errors import InputError
from streamcascade.schemas import DeadLetter
from streamcascade.service.codec import Rejected, parse_request


class DirectorySource:
    """Each `*.json` file of a directory is one request (the same codec as
    the JSONL and Kafka paths: a file that is not a request is a dead letter
    with its reason and the file's path)."""

    def __init__(self, directory: Path, limit: int | None = None,
                 max_file_bytes: int = 16 * 1024 * 1024) -> None:  # fmt: skip
        self.directory = directory
        self.limit = limit
        self.max_file_bytes = max_file_bytes

    def records(self) -> Iterator[Record]:
        paths = sorted(p for p in self.directory.iterdir() if p.suffix == ".json" and p.is_file())
        for number, path in enumerate(paths):
            if self.limit is not None and number >= self.limit:
                return
            with path.open("rb") as handle:
                raw = handle.read(self.max_file_bytes + 1)
            parsed = parse_request(raw.strip(), self.max_file_bytes)
            if isinstance(parsed, Rejected):
                yield Record(dead_letter=DeadLetter(
                    reason=parsed.reason, error_type=parsed.error_type,
                    raw=raw.decode("utf-8", errors="replace"), source=str(path),
                ))  # fmt: skip
            else:
                yield Record(request=parsed)


class DirectorySink:
    """One file per record, named by its `id` (escaped so that any id is one
    file name), written whole: to a temporary file first, then renamed, so a
    reader of the directory never sees half an answer. A record without an id
    is numbered."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._n_written = 0

    def write(self, record: BaseModel) -> None:
        self._n_written += 1
        name = getattr(record, "id", None) or f"record-{self._n_written}"
        target = self.directory / f"{quote(str(name), safe='')}.json"
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".writing-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(record.model_dump_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)

    def close(self) -> None:
        pass


def open_source(location: str | None, limit: int | None) -> DirectorySource:
    """A `streamcascade.sources` entry point: the directory at `location`."""
    if location is None or not Path(location).is_dir():
        raise InputError(f"the directory source reads a directory: {location} is not one")
    return DirectorySource(Path(location), limit)


def open_sink(location: str | None, stream: IO[str] | None, option: str = "--out") -> DirectorySink:
    """A `streamcascade.sinks` entry point: files in the directory at `location`
    (made if missing; its parent must exist)."""
    if location is None:
        raise InputError(f"the directory sink writes files: name the directory with {option}")
    path = Path(location)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file, not a directory")
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise InputError(f"{option} {path}: its parent directory does not exist")
    return DirectorySink(path)
