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
