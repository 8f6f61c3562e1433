"""Learner snapshots on disk: numbered JSON files, newest wins, old ones pruned.

A restart restores the latest snapshot; `rollback` makes an earlier snapshot
the latest again (as a new number, so history is never rewritten). Files are
written to a temporary name and renamed, so a crash mid-write leaves the
previous snapshot intact.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_NAME = re.compile(r"^snapshot-(\d{8})\.json$")
FORMAT_VERSION = 1


class SnapshotMismatch(ValueError):
    """A snapshot this learner cannot restore (another policy, version or shape)."""


class SnapshotUnreadable(SnapshotMismatch):
    """A snapshot file that is not JSON, or not in this store's format."""


class NoSuchSnapshot(KeyError):
    """A snapshot number the store does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "no such snapshot"


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

    def _read(self, number: int) -> dict[str, Any]:
        path = self._path(number)
        try:
            envelope = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SnapshotUnreadable(f"{path}: not a readable snapshot: {error}") from None
        if not isinstance(envelope, dict) or envelope.get("format") != FORMAT_VERSION:
            found = envelope.get("format") if isinstance(envelope, dict) else None
            raise SnapshotUnreadable(f"{path}: unsupported snapshot format {found!r}")
        state: dict[str, Any] = envelope["state"]
        return state

    def load(self, number: int | None = None) -> dict[str, Any] | None:
        """The state of snapshot `number`, or of the latest readable one (an
        unreadable latest one, say a disk that filled mid-write, is skipped with
        a warning, so a restart falls back to the one before); None if there is
        none."""
        numbers = self.numbers()
        if number is not None:
            if number not in numbers:
                have = ", ".join(map(str, numbers)) or "none"
                raise NoSuchSnapshot(f"no snapshot {number} in {self.directory} (have: {have})")
            return self._read(number)
        for chosen in reversed(numbers):
            try:
                return self._read(chosen)
            except SnapshotUnreadable as error:
                log.warning("%s; trying the one before", error)
        return None

    def rollback(self, number: int) -> int:
        """Make snapshot `number` the latest again; returns the new number."""
        return self.save(self._read_checked(number), note=f"rollback to {number}")

    def _read_checked(self, number: int) -> dict[str, Any]:
        state = self.load(number)
        assert state is not None  # load(number) raises rather than return None
        return state
