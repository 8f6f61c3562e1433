"""Memory and process limits for a whole sandbox run, through cgroups.

`RLIMIT_AS` and `RLIMIT_NPROC` bound each process (and each uid), so six
children of 800 MB held 3.9 GB under a 1 GB limit (issue 13). A cgroup bounds
the run: every process the child starts is charged to it, however it forks.
One group per leased slot uid (unique on the host, see `leases`), reused by the
slot's runs and removed when the sandbox closes. cgroup v1 (a hierarchy per
controller, as on this machine) and v2 (one unified hierarchy) both work; the
per-process limits stay as a second line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
GROUP = "streamcascade"


class CgroupError(OSError):
    """The host would not give this run a cgroup."""


class RunCgroup:
    """The memory and pids groups of one sandbox slot.

    Created on construction (raises `CgroupError` when the host cannot), with
    `memory_mb` and `max_processes` for everything in it together.
    """

    def __init__(self, name: str, memory_mb: int, max_processes: int, root: Path = ROOT) -> None:
        self.dirs: list[Path] = []
        memory_bytes = str(memory_mb * 1024 * 1024)
        try:
            if (root / "cgroup.controllers").exists():
                self._unified(root, name, memory_bytes, max_processes)
            else:
                memory = self._make(root / "memory" / GROUP / name)
                _write(memory / "memory.limit_in_bytes", memory_bytes)
                swap = memory / "memory.memsw.limit_in_bytes"
                if swap.exists():  # with swap accounting: memory and swap together
                    _write(swap, memory_bytes)
                pids = self._make(root / "pids" / GROUP / name)
                _write(pids / "pids.max", str(max_processes))
        except OSError as error:
            self.remove()
            raise CgroupError(error.errno, f"cgroup for the sandbox: {error}") from None

    def _make(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self.dirs.append(path)
        return path

    def _unified(self, root: Path, name: str, memory_bytes: str, max_processes: int) -> None:
        parent = self._make(_own_group(root) / GROUP)
        # A v2 group passes controllers down only when asked, and only from a
        # group without processes of its own: ours is made for that.
        _write(parent / "cgroup.subtree_control", "+memory +pids")
        group = self._make(parent / name)
        _write(group / "memory.max", memory_bytes)
        _write(group / "memory.swap.max", "0")
        _write(group / "pids.max", str(max_processes))

    def add(self, pid: int) -> None:
        """Put a process (before it runs anything untrusted) in every group."""
        for directory in self.dirs:
            if directory.name != GROUP:
                _write(directory / "cgroup.procs", str(pid))

    def kill(self) -> None:
        """SIGKILL every process in the group, however it got away from its
        process group and session (v2's `cgroup.kill`; v1: each listed pid)."""
        for directory in self.dirs:
            if directory.name == GROUP:
                continue
            kill_file = directory / "cgroup.kill"
            if kill_file.exists():
                _write(kill_file, "1")
                continue
            with contextlib.suppress(FileNotFoundError):
                for pid in (directory / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> None:
        """Remove the groups (empty once their processes are reaped)."""
        remove_groups([d for d in reversed(self.dirs) if d.name != GROUP])  # GROUP: host-wide
        self.dirs = []


def _own_group(root: Path) -> Path:
    """This process's own v2 group."""
    own = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1].lstrip("/")
    return root / own


def _slot_parents(root: Path) -> list[Path]:
    """Where this process's slot groups live (see `RunCgroup`)."""
    if (root / "cgroup.controllers").exists():
        return [_own_group(root) / GROUP]
    return [root / "memory" / GROUP, root / "pids" / GROUP]


def slot_groups(root: Path = ROOT) -> dict[int, list[Path]]:
    """Every slot group on the host, by the uid it is named for (`slot-UID`),
    whoever made it: a sandbox killed before it closed leaves its own."""
    groups: dict[int, list[Path]] = {}
    for parent in _slot_parents(root):
        for path in sorted(parent.glob("slot-*")) if parent.is_dir() else ():
            uid = path.name.removeprefix("slot-")
            if uid.isdigit() and path.is_dir():
                groups.setdefault(int(uid), []).append(path)
    return groups


def remove_groups(dirs: list[Path], wait_s: float = 2.0) -> bool:
    """rmdir each group; True when none is left. A group whose last process
    is still exiting is busy for a moment, so a busy one is retried for
    `wait_s`; one still left is logged, never silently kept (the next sandbox
    to start reclaims it, see `runner.reclaim_stale_groups`)."""
    deadline = time.monotonic() + wait_s
    left = list(dirs)
    while True:
        busy = []
        for directory in left:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as error:
                if error.errno != errno.EBUSY:
                    log.warning("sandbox cgroup %s not removed: %s", directory, error)
                    continue
                busy.append(directory)
        if not busy:
            return not any(d.exists() for d in dirs)
        if time.monotonic() >= deadline:
            log.warning("sandbox cgroups still busy after %.0f s, left: %s", wait_s,
                        ", ".join(map(str, busy)))  # fmt: skip
            return False
        left = busy
        time.sleep(0.05)


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
