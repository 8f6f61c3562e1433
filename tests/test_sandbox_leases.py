"""Sandbox uids are leased host-wide: sandboxes in other processes, cleaning up
their own slots, never touch this one's programs (issue 13, item 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streamcascade.config import SandboxConfig
from streamcascade.sandbox import Sandbox
from streamcascade.sandbox.leases import UidLeaser
from streamcascade.sandbox.runner import _processes_of_uid

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="uid leases matter only as root")
GOOD = "def f(x):\n    return x + 1\n"


def test_a_lease_is_exclusive_across_processes(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from streamcascade.sandbox.leases import UidLeaser
            lease = UidLeaser(Path({str(tmp_path)!r}), base_uid=70_000, n_uids=2).lease()
            print(lease.uid, flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        held = int(holder.stdout.readline())
        mine = UidLeaser(tmp_path, base_uid=70_000, n_uids=2)
        lease = mine.lease()
        assert lease.uid != held
        holder.send_signal(signal.SIGKILL)  # dies without releasing: the kernel does
        holder.wait()
        assert mine.lease().uid == held
    finally:
        holder.kill()


@root_only
def test_a_dead_holders_leftovers_are_killed_before_the_uid_is_reused(tmp_path: Path) -> None:
    from streamcascade.sandbox.runner import _clean_leased

    uid = 65_000
    leftover = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os,time; os.setgid({uid}); os.setuid({uid}); time.sleep(60)",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while not _processes_of_uid(uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_of_uid(uid)
        lease = UidLeaser(tmp_path, base_uid=uid, n_uids=1, clean=_clean_leased).lease()
        assert lease.uid == uid
        assert _processes_of_uid(uid) == []
    finally:
        leftover.kill()
        leftover.wait()


@root_only
def test_two_sandboxes_in_one_process_run_as_different_uids() -> None:
    with Sandbox(SandboxConfig(workers=2)) as a, Sandbox(SandboxConfig(workers=2)) as b:
        uids = {
            r.isolation["uid"]
            for r in a.run_many([(GOOD, ["assert f(1) == 2"])] * 4)
            + b.run_many([(GOOD, ["assert f(1) == 2"])] * 4)
        }
        assert len(uids) == 4


@root_only
def test_another_process_cleaning_up_never_kills_this_ones_programs() -> None:
    """The issue's case: a correct, slow program here came back 'not run' when a
    sandbox in another process cleaned up its slots."""
    noisy = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import time
            from streamcascade.config import SandboxConfig
            from streamcascade.sandbox import Sandbox
            bomb = "import os\\nfor _ in range(20):\\n    os.fork()\\n"
            with Sandbox(SandboxConfig(workers=2, per_test_timeout_s=0.5)) as box:
                end = time.monotonic() + 8
                while time.monotonic() < end:
                    box.run_many([(bomb, ["assert True"])] * 2)
        """)],
    )  # fmt: skip
    try:
        time.sleep(1.0)
        slow = "import time\ndef f(x):\n    time.sleep(0.5)\n    return x + 1\n"
        with Sandbox(SandboxConfig(workers=2)) as box:
            results = box.run_many([(slow, ["assert f(1) == 2", "assert f(2) == 3"])] * 8)
        assert [r.test_status for r in results] == [["passed", "passed"]] * 8
    finally:
        noisy.kill()
        noisy.wait()


def test_try_lease_takes_only_a_free_uid(tmp_path: Path) -> None:
    holder = UidLeaser(tmp_path, base_uid=70_000, n_uids=2)
    held = holder.lease()
    other = UidLeaser(tmp_path, base_uid=70_000, n_uids=2)
    assert other.try_lease(held.uid) is None
    free = other.try_lease(held.uid + 1)
    assert free is not None and free.uid == held.uid + 1
    with pytest.raises(ValueError, match="not a sandbox uid"):
        other.try_lease(69_999)
    held.release()
    taken = other.try_lease(held.uid)
    assert taken is not None and taken.uid == held.uid


def _slot_groups_of(uids: set[int]) -> dict[int, list[Path]]:
    from streamcascade.sandbox.cgroups import slot_groups

    return {uid: dirs for uid, dirs in slot_groups().items() if uid in uids}


@root_only
def test_a_sandbox_killed_before_it_closed_has_its_cgroups_reclaimed() -> None:
    """A SIGKILLed sandbox never removes its slots' groups; the next sandbox to
    start on the host does, once nobody holds their uids (the CI soak counted
    8 such groups, left by a service killed in an earlier fault run)."""
    killed = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from streamcascade.config import SandboxConfig
            from streamcascade.sandbox import Sandbox
            box = Sandbox(SandboxConfig(workers=2))
            uids = {{r.isolation["uid"] for r in box.run_many([({GOOD!r}, ["assert True"])] * 4)}}
            print(" ".join(map(str, sorted(uids))), flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert killed.stdout is not None
        uids = {int(uid) for uid in killed.stdout.readline().split()}
        assert len(uids) == 2
        assert set(_slot_groups_of(uids)) == uids  # made, and held by a live sandbox
        with Sandbox(SandboxConfig(workers=1)):
            assert set(_slot_groups_of(uids)) == uids  # a live holder's are kept
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert set(_slot_groups_of(uids)) == uids  # left behind
        with Sandbox(SandboxConfig(workers=1)):
            assert _slot_groups_of(uids) == {}
    finally:
        killed.kill()
        killed.wait()


@root_only
def test_close_waits_for_the_run_in_flight_then_refuses_new_runs() -> None:
    """Closing while a run is in flight (the service stopping mid-request) must
    not remove the groups under it, nor let a later run make new ones that
    nobody removes."""
    import threading

    from streamcascade.sandbox.runner import SandboxError

    slow = "import time\ndef f(x):\n    time.sleep(1.0)\n    return x + 1\n"
    box = Sandbox(SandboxConfig(workers=1))
    results: list[object] = []
    running = threading.Thread(target=lambda: results.append(box.run(slow, ["assert f(1) == 2"])))
    running.start()
    deadline = time.monotonic() + 30
    while not box._uids and time.monotonic() < deadline:  # the run has its slot's uid
        time.sleep(0.01)
    [uid] = [lease.uid for lease in box._uids.values()]
    box.close()
    running.join()
    assert [r.test_status for r in results] == [["passed"]]  # type: ignore[attr-defined]
    assert _slot_groups_of({uid}) == {}
    with pytest.raises(SandboxError, match="closed"):
        box.run(GOOD, ["assert f(1) == 2"])
    box.close()  # twice is fine
    assert _slot_groups_of({uid}) == {}
