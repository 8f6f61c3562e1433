"""Learner snapshots on disk: numbered JSON files, newest wins, old ones pruned.

A restart restores the latest snapshot; `rollback` makes an earlier snapshot
the latest again (as a new number, so history is never rewritten). Files are
written to a temporary name and renamed, so a crash mid-write leaves the
previous snapshot intact.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^snapshot-(\d{8})\.json$")
FORMAT_VERSION = 1


class SnapshotMismatch(ValueError):
    """A snapshot this learner cannot restore (another policy, version or shape)."""


def check_snapshot(
    state: dict[str, Any], kind: str, policy: str, version: int, n_levels: int
) -> None:
    """Raise SnapshotMismatch, before anything is restored, when `state` is not a
    snapshot of this kind of learner, at this version, for this many levels.
    Snapshots from before kinds existed are the Hedge learner's."""
    found = state.get("kind", "hedge")
    if found != kind:
        raise SnapshotMismatch(
            f"the snapshot is the {found!r} policy's; this cascade runs learning.policy: {policy}"
        )
    if state.get("version") != version:
        raise SnapshotMismatch(f"unsupported {kind} state version {state.get('version')!r}")
    if state.get("n_levels") != n_levels:
        raise SnapshotMismatch(
            f"snapshot is for {state.get('n_levels')} levels, this cascade has {n_levels}"
        )


class SnapshotStore:
    def __init__(self, directory: Path, keep: int = 20) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = directory
        self.keep = keep
        directory.mkdir(parents=True, exist_ok=True)

    def numbers(self) -> list[int]:
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _path(self, number: int) -> Path:
        return self.directory / f"snapshot-{number:08d}.json"

    def save(self, state: dict[str, Any], note: str = "") -> int:
        numbers = self.numbers()
        number = (numbers[-1] + 1) if numbers else 1
        envelope = {
            "format": FORMAT_VERSION,
            "number": number,
            "saved_at_unix_s": time.time(),
            "note": note,
            "state": state,
        }
        path = self._path(number)
        temporary = path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(envelope, handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
        for old in self.numbers()[: -self.keep]:
            self._path(old).unlink(missing_ok=True)
        return number

    def load(self, number: int | None = None) -> dict[str, Any] | None:
        """The state of snapshot `number` (default: the latest); None if there is none."""
        numbers = self.numbers()
        if not numbers:
            return None
        chosen = numbers[-1] if number is None else number
        if chosen not in numbers:
            raise KeyError(f"no snapshot {chosen} in {self.directory} (have {numbers})")
        envelope = json.loads(self._path(chosen).read_text(encoding="utf-8"))
        if envelope.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported snapshot format {envelope.get('format')!r}")
        state: dict[str, Any] = envelope["state"]
        return state

    def rollback(self, number: int) -> int:
        """Make snapshot `number` the latest again; returns the new number."""
        state = self.load(number)
        assert state is not None
        return self.save(state, note=f"rollback to {number}")
