"""Host-wide leases on the unprivileged uids that sandbox slots run as.

Clean-up kills every process of a slot's uid (a fork bomb's children leave
the process group, the uid is what they cannot leave). That is only safe if no
other run on the host uses the uid at the same time: two `serve` replicas on
one host, `serve` beside `bench`, two test workers. Fixed uids per slot made
them kill each other's programs (issue 13), so each uid is now leased: an
exclusive `flock` on a file per uid, held while the slot owns it. The kernel
drops the lock when its holder dies, however it dies, so a crashed process
never strands a uid; the next holder first kills whatever the dead one left
running under it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

BASE_UID = 61_000
"""First sandbox uid; chosen far above login uids."""
N_UIDS = 4_096
"""How many uids the sandboxes of one host share (61000-65095, below nobody)."""
LOCK_DIR = Path("/run/streamcascade/sandbox-uids")
"""Where the lock files live: root's, host-wide, not writable by sandbox uids."""


class NoFreeUid(RuntimeError):
    """Every sandbox uid on this host is leased."""


class UidLease:
    """One leased uid; `release` (or the holder's death) frees it."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None


class UidLeaser:
    """Leases uids from the host-wide pool.

    `clean` is called with a uid just leased, before it is handed out: what a
    dead holder left running as that uid must not share it with a new program.

    >>> import tempfile
    >>> a = UidLeaser(Path(tempfile.mkdtemp()), base_uid=70_000, n_uids=2)
    >>> b = UidLeaser(a.lock_dir, base_uid=70_000, n_uids=2)
    >>> first, second = a.lease(), b.lease()
    >>> first.uid != second.uid
    True
    >>> b.lease()
    Traceback (most recent call last):
    ...
    streamcascade.sandbox.leases.NoFreeUid: all 2 sandbox uids from 70000 are leased ...
    >>> first.release()
    >>> b.lease().uid == first.uid
    True
    """

    def __init__(
        self,
        lock_dir: Path = LOCK_DIR,
        base_uid: int = BASE_UID,
        n_uids: int = N_UIDS,
        clean: Callable[[int], None] | None = None,
    ) -> None:
        self.lock_dir = lock_dir
        self.base_uid = base_uid
        self.n_uids = n_uids
        self._clean = clean
        self._next = 0
        self._mutex = threading.Lock()

    def _open(self, uid: int) -> int:
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def lease(self) -> UidLease:
        """The next free uid, scanning round-robin from the last one leased so
        that processes starting together spread out rather than collide."""
        with self._mutex:
            for step in range(self.n_uids):
                offset = (self._next + step) % self.n_uids
                lease = self._take(self.base_uid + offset)
                if lease is not None:
                    self._next = (offset + 1) % self.n_uids
                    return lease
        raise NoFreeUid(
            f"all {self.n_uids} sandbox uids from {self.base_uid} are leased "
            f"(lock files in {self.lock_dir})"
        )

    def try_lease(self, uid: int) -> UidLease | None:
        """This uid's lease if nobody holds it, else None (never waits): what
        reclaims a dead holder's leftovers takes the uid first, so that no
        sandbox starts using it meanwhile."""
        if not self.base_uid <= uid < self.base_uid + self.n_uids:
            raise ValueError(f"uid {uid} is not a sandbox uid of this pool")
        with self._mutex:
            return self._take(uid)

    def _take(self, uid: int) -> UidLease | None:
        fd = self._open(uid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        lease = UidLease(uid, fd)
        if self._clean is not None:
            try:
                self._clean(uid)
            except BaseException:
                lease.release()
                raise
        return lease


def release_all(leases: dict[int, UidLease]) -> None:
    for lease in leases.values():
        with contextlib.suppress(OSError):
            lease.release()
    leases.clear()
