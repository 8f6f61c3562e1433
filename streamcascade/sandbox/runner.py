"""Parent side of the sandbox: starts the harness child, enforces wall-clock
limits, collects per-assert results, and cleans up whatever the child left.

One child process runs one program against many asserts (a process start is
the dominant cost; one per assert is what the throughput benchmark compares
against). Children run in parallel on a pool of worker slots; as root, each
slot has its own unprivileged uid, leased host-wide (`leases`), so a slot's
leftovers (a fork bomb's children that left the process group) can be found
and killed by uid without touching any other sandbox's programs.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import json
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from streamcascade.config import SandboxConfig
from streamcascade.sandbox.cgroups import CgroupError, RunCgroup, remove_groups, slot_groups
from streamcascade.sandbox.compare import same_output
from streamcascade.sandbox.leases import UidLease, UidLeaser, release_all
from streamcascade.sandbox.protocol import ResultChannel
from streamcascade.sandbox.verdicts import MAX_VALUE_BYTES, TestPlan, plan_test

log = logging.getLogger(__name__)

_HARNESS = Path(__file__).with_name("_harness.py")
_STARTUP_GRACE_S = 10.0  # interpreter start + namespace setup on a loaded machine
_GRACE_S = 2.0  # on top of the harness's own per-test deadline (itself 0.5 s past the test's)


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program it ran)."""


@dataclass
class ExecutionResult:
    """What happened when one program ran against a list of asserts, or on a
    list of inputs.

    `test_status[i]` is "passed", "failed: ...", "error: ...", "timed out" or
    "not run" (the child died or was killed before reaching it); for a program
    run on inputs without expected outputs, or an expression evaluated for its
    value, "ran" where it ended normally.
    `outputs[i]`: what the program printed on input i (programs only).
    `trusted[i]`: test i was judged where the program could not reach it:
    here, from plain values the program's process sent (see `verdicts`), or
    in a fork of the harness that never ran the program, which called its
    functions across a pipe. False: judged where the program ran (no test
    is, today; the field stays for results recorded before).
    `values[i]`: the plain value of expression i (`Sandbox.values` only).
    """

    load_status: str
    test_status: list[str]
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    killed: bool = False
    isolation: dict[str, object] = field(default_factory=dict)
    outputs: list[str | None] = field(default_factory=list)
    trusted: list[bool] = field(default_factory=list)
    values: list[object] = field(default_factory=list)

    @property
    def passed(self) -> list[bool]:
        return [status == "passed" for status in self.test_status]

    @property
    def n_passed(self) -> int:
        return sum(self.passed)


class _CappedReader(threading.Thread):
    """Drains a pipe, keeping the first `cap` bytes: a chatty program can neither
    block on a full pipe nor fill the parent's memory."""

    def __init__(self, stream: IO[bytes], cap: int) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._cap = cap
        self._chunks: list[bytes] = []
        self._kept = 0
        self.truncated = False

    def run(self) -> None:
        while chunk := self._stream.read(65536):
            room = self._cap - self._kept
            if room > 0:
                self._chunks.append(chunk[:room])
                self._kept += min(room, len(chunk))
            if len(chunk) > room:
                self.truncated = True

    def text(self) -> str:
        data = b"".join(self._chunks).decode("utf-8", errors="replace")
        return data + ("\n[truncated]" if self.truncated else "")


@functools.lru_cache(maxsize=32)
def _exposed(packages: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(paths shown read-only inside the sandbox's root, paths hidden in them):
    the standard library and the named packages; the base interpreter's own
    site-packages, which lies inside its standard library, is hidden."""
    # The base interpreter's, not a venv's (whose lib/ is only site-packages).
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    paths = {sysconfig.get_paths(vars=base)["stdlib"], sysconfig.get_paths(vars=base)["platstdlib"]}
    paths.update(p for p in sys.path if p.startswith(sys.base_prefix) and os.path.exists(p))
    hidden = [os.path.join(p, name) for p in sorted(paths)
              for name in ("site-packages", "dist-packages")]  # fmt: skip
    # The system's Pythons' packages lie under /usr/lib, bound for its shared
    # libraries: hidden too, unless one of them is the standard library in use.
    for directory in glob.glob("/usr/lib/python3*") + glob.glob("/usr/local/lib/python3*"):
        if not any(p == directory or p.startswith(directory + os.sep) for p in paths):
            hidden.append(directory)
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise SandboxError(f"sandbox.packages: {package!r} is not installed")
        locations = list(spec.submodule_search_locations or [])
        if not locations and spec.origin:
            locations = [spec.origin]
        for location in locations:
            paths.add(location)
            libs = f"{location}.libs"  # wheels' vendored shared libraries (numpy.libs)
            if os.path.isdir(libs):
                paths.add(libs)
    # Parents first, so that a path inside a bound directory is not bound again.
    return sorted(p for p in paths if os.path.exists(p)), hidden


def _processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes owned by `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            pids.append(int(entry))
    return pids


def _kill_uid(uid: int) -> None:
    """kill(-1) from a process running as `uid` signals exactly that uid's processes,
    atomically, so a fork bomb cannot outrun it."""
    code = f"import os,signal; os.setgid({uid}); os.setuid({uid}); os.kill(-1, signal.SIGKILL)"
    subprocess.run([sys.executable, "-I", "-c", code], check=False, capture_output=True)


def _sweep_uid(uid: int) -> bool:
    """Kill everything `uid` runs; True once nothing is left."""
    for _ in range(10):  # a child forked during a sweep is caught by the next
        if not _processes_of_uid(uid):
            return True
        _kill_uid(uid)
        time.sleep(0.01)
    return not _processes_of_uid(uid)


def _clean_leased(uid: int) -> None:
    """A uid just leased may still run what a dead holder left behind."""
    if not _sweep_uid(uid):
        raise SandboxError(f"sandbox uid {uid} still runs a dead holder's processes")


_LEASER = UidLeaser(clean=_clean_leased)
"""One per process: its mutex keeps this process's own sandboxes apart, the
lock files keep it apart from other processes."""


def reclaim_stale_groups() -> int:
    """Remove the slot cgroups of uids nobody leases: a sandbox killed before
    it closed (SIGKILL, OOM) leaves them. Each uid is leased while its groups
    go (its leftover processes killed first), so no sandbox takes it up
    meanwhile. Returns how many uids' groups were removed."""
    n_removed = 0
    for uid, dirs in slot_groups().items():
        try:
            lease = _LEASER.try_lease(uid)
        except (ValueError, OSError, SandboxError) as error:
            log.warning("stale sandbox cgroups of uid %d kept: %s", uid, error)
            continue
        if lease is None:
            continue  # a live sandbox's
        try:
            n_removed += remove_groups(dirs)
        finally:
            lease.release()
    if n_removed:
        log.info("removed the stale cgroups of %d sandbox uids", n_removed)
    return n_removed


def _job(
    config: SandboxConfig,
    program: str,
    tests: list[str],
    inputs: list[str] | None,
    split: list[TestPlan | None],
    uid: int | None,
    workdir: str,
    write_fd: int,
) -> dict[str, object]:
    """What the harness is told: the program, its tests (a split test only as
    its holes: its text, with the expected values, never reaches the child),
    the limits and the isolation to set up."""
    expose, hide = _exposed(tuple(config.packages))
    sent_tests = (
        [t if plan is None else "" for t, plan in zip(tests, split, strict=True)]
        if split
        else tests
    )
    evals = [
        None if plan is None else {"prelude": plan.prelude, "holes": plan.holes} for plan in split
    ]
    return {
        "program": program,
        "tests": sent_tests,
        "evals": evals,
        "max_value_bytes": MAX_VALUE_BYTES,
        "inputs": inputs,
        "max_case_output_bytes": config.max_output_bytes,
        "result_fd": write_fd,
        "workdir": workdir,
        "uid": uid,
        "isolate_network": config.isolate_network,
        "per_test_timeout_s": config.per_test_timeout_s,
        "program_timeout_s": config.program_timeout_s,
        "cpu_s": config.program_timeout_s
        + config.per_test_timeout_s * max(len(tests), len(inputs or ()), 1),
        "memory_mb": config.memory_mb,
        "max_processes": config.max_processes,
        "max_timeouts": config.max_timeouts,
        "max_file_mb": config.max_file_mb,
        "tmpfs_mb": config.max_file_mb * 4,
        "tmpfs_inodes": config.max_files,
        "expose": expose,
        "hide": hide,
    }


def _spawn(workdir: str, read_fd: int, write_fd: int) -> subprocess.Popen[bytes]:
    """The harness, in a session of its own (its process group is killed as
    one), holding the write end of the result pipe; SandboxError if it
    cannot start (the pipe and the work dir are gone then)."""
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-B", str(_HARNESS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(write_fd,),
            start_new_session=True,
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        shutil.rmtree(workdir, ignore_errors=True)
        raise SandboxError(f"could not start the sandbox child: {exc}") from exc
    os.close(write_fd)
    return child


def _refuse_if_unisolated(channel: ResultChannel, err_reader: _CappedReader) -> None:
    """SandboxError where the run lacked isolation it must have (fail closed),
    or the harness died before it could say what it got."""
    if channel.refused:
        raise SandboxError(
            f"this host did not give the sandbox {', '.join(channel.refused)} isolation "
            f"({'; '.join(channel.isolation_errors) or 'see isolation in the result'}): "
            f"refusing to run untrusted code without it; set "
            f"sandbox.accept_missing_isolation: [{', '.join(channel.refused)}] to run with less"
        )
    if channel.load_status == "not run" and not channel.isolation:
        raise SandboxError(
            f"sandbox child failed before running the program: {err_reader.text()[-2000:]}"
        )


class Sandbox:
    """Runs untrusted Python programs against assert lines. Thread-safe.

    >>> box = Sandbox(SandboxConfig())
    >>> box.run("def f(x):\\n    return x + 1", ["assert f(1) == 2", "assert f(1) == 3"]).passed
    [True, False]
    """

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._workers = config.workers or os.cpu_count() or 1
        self._as_root = os.geteuid() == 0
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self._workers):
            self._slots.put(slot)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sandbox")
        self._uids: dict[int, UidLease] = {}
        """Slot -> its leased uid (as root), leased on the slot's first run."""
        self._cgroups: dict[int, RunCgroup] = {}
        """Slot -> the cgroup its runs are charged to together (as root)."""
        self._uid_mutex = threading.Lock()
        self._closed = False
        self._close_mutex = threading.Lock()
        if self._as_root and config.drop_privileges:
            reclaim_stale_groups()

    @property
    def workers(self) -> int:
        return self._workers

    def close(self) -> None:
        """Wait for the runs in flight (each bounded by its timeouts), refuse
        new ones, then remove the slots' cgroups and free their uids. A run
        started after the groups went would make new ones nobody removes."""
        with self._close_mutex:
            if self._closed:
                return
            self._closed = True
            self._pool.shutdown(wait=True)
            slots = [self._slots.get() for _ in range(self._workers)]  # none in flight now
            with self._uid_mutex:
                for cgroup in self._cgroups.values():
                    cgroup.remove()
                self._cgroups.clear()
                release_all(self._uids)
            for slot in slots:  # a run still waiting for one wakes, and is refused
                self._slots.put(slot)

    def _uid_of(self, slot: int) -> int | None:
        if not (self._as_root and self._config.drop_privileges):
            return None
        with self._uid_mutex:
            lease = self._uids.get(slot)
            if lease is None:
                lease = self._uids[slot] = _LEASER.lease()
            return lease.uid

    def _cgroup_of(self, slot: int, uid: int | None) -> RunCgroup | None:
        """The slot's cgroup, or None where this host or user cannot make one."""
        if uid is None:
            return None
        with self._uid_mutex:
            cgroup = self._cgroups.get(slot)
            if cgroup is None:
                try:
                    cgroup = RunCgroup(
                        f"slot-{uid}", self._config.memory_mb, self._config.max_processes + 4
                    )  # +4: pid 1 of its namespace, the harness, a test judged apart, slack
                except CgroupError as error:
                    log.warning("%s", error)
                    return None
                self._cgroups[slot] = cgroup
            return cgroup

    def _required_isolation(self) -> list[str]:
        """The steps a run must get (fail closed), less those the config accepts
        going without."""
        config = self._config
        steps = ["filesystem", "ipc", "pid_namespace", "proc", "seccomp"]
        if config.isolate_network:
            steps.append("network")
        if self._as_root and config.drop_privileges:
            steps.append("cgroup")
        return [s for s in steps if s not in config.accept_missing_isolation]

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_many(self, jobs: Sequence[tuple[str, Sequence[str]]]) -> list[ExecutionResult]:
        """Run (program, tests) pairs on all worker slots; results in job order."""
        futures = [self._pool.submit(self.run, program, tests) for program, tests in jobs]
        return [future.result() for future in futures]

    @contextlib.contextmanager
    def _slot(self) -> Iterator[int]:
        """A free worker slot for one run; SandboxError once the sandbox is closed."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        slot = self._slots.get()
        try:
            if self._closed:  # closed while this run waited for a slot
                raise SandboxError("the sandbox is closed")
            yield slot
        finally:
            self._slots.put(slot)

    def run(self, program: str, tests: Sequence[str]) -> ExecutionResult:
        with self._slot() as slot:
            return self._run_in_slot(slot, program, list(tests))

    def values(self, program: str, expressions: Sequence[str]) -> ExecutionResult:
        """Evaluate each expression (a call of the program's function, say)
        after loading the program; `values[i]` is its value as plain data
        (numbers, strings, lists, tuples, sets, dicts), copied out by the
        built-in types' own methods, and `test_status[i]` "ran", or why not.
        Nothing is judged in the child: what the values mean is the caller's."""
        plans = [TestPlan("", [expression], []) for expression in expressions]
        with self._slot() as slot:
            return self._run_in_slot(slot, program, [""] * len(plans), plans=plans)

    def values_many(self, jobs: Sequence[tuple[str, Sequence[str]]]) -> list[ExecutionResult]:
        """`values` for (program, expressions) pairs on all worker slots; in order."""
        futures = [self._pool.submit(self.values, program, exprs) for program, exprs in jobs]
        return [future.result() for future in futures]

    def run_program(self, program: str, inputs: Sequence[str]) -> ExecutionResult:
        """Run a whole program once per input, the input on its stdin; each
        run's stdout (its first `max_output_bytes`) is in `outputs`."""
        with self._slot() as slot:
            return self._run_in_slot(slot, program, [], list(inputs))

    def run_io(
        self,
        program: str,
        cases: Sequence[tuple[str, str]],
        float_tolerance: float | None = None,
    ) -> ExecutionResult:
        """Run a whole program on each (stdin, expected stdout) case; a case
        passes when the output matches (see `compare.same_output`). The
        comparison is made here, outside the process that ran the program."""
        result = self.run_program(program, [stdin for stdin, _ in cases])
        result.trusted = [True] * len(cases)  # compared here, not in the child
        for i, (_, expected) in enumerate(cases):
            output = result.outputs[i]
            if result.test_status[i] == "ran" and output is not None:
                same = same_output(output, expected, float_tolerance)
                result.test_status[i] = "passed" if same else "failed: wrong output"
        return result

    def run_program_many(self, jobs: Sequence[tuple[str, Sequence[str]]]) -> list[ExecutionResult]:
        """`run_program` for (program, inputs) pairs on all worker slots; in order."""
        futures = [self._pool.submit(self.run_program, p, inputs) for p, inputs in jobs]
        return [future.result() for future in futures]

    def run_io_many(
        self,
        jobs: Sequence[tuple[str, Sequence[tuple[str, str]]]],
        float_tolerance: float | None = None,
    ) -> list[ExecutionResult]:
        """`run_io` for (program, cases) pairs on all worker slots; results in order."""
        futures = [
            self._pool.submit(self.run_io, program, cases, float_tolerance)
            for program, cases in jobs
        ]
        return [future.result() for future in futures]

    def _run_in_slot(
        self,
        slot: int,
        program: str,
        tests: list[str],
        inputs: list[str] | None = None,
        plans: list[TestPlan] | None = None,
    ) -> ExecutionResult:
        """One run: spawn the harness, feed the result channel to the end, reap
        everything (on every path out), then the result."""
        config = self._config
        uid = self._uid_of(slot)
        cgroup = self._cgroup_of(slot, uid)
        if plans is None:
            split = [plan_test(t) for t in tests] if inputs is None else []
        else:
            split = list(plans)
        workdir = tempfile.mkdtemp(prefix="streamcascade-sandbox-")
        read_fd, write_fd = os.pipe()
        started = time.perf_counter()
        job = _job(config, program, tests, inputs, split, uid, workdir, write_fd)
        child = _spawn(workdir, read_fd, write_fd)
        channel = ResultChannel(
            n_cases=len(inputs) if inputs is not None else len(tests), split=split,
            inputs=inputs, want_values=plans is not None,
            required=self._required_isolation(), has_cgroup=False,
        )  # fmt: skip
        out_reader = _CappedReader(child.stdout, config.max_output_bytes)  # type: ignore[arg-type]
        err_reader = _CappedReader(child.stderr, config.max_output_bytes)  # type: ignore[arg-type]
        killed = False
        try:
            if cgroup is not None:
                try:  # before the job is written: the child has run nothing yet
                    cgroup.add(child.pid)
                except OSError as error:
                    log.warning("sandbox cgroup: %s", error)
                    cgroup = None
            channel.has_cgroup = cgroup is not None
            out_reader.start()
            err_reader.start()
            assert child.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                child.stdin.write(json.dumps(job).encode())
                child.stdin.close()
            killed = self._read_results(read_fd, channel)
        finally:
            # Every path out, an exception included, kills and reaps the whole
            # run, and a slot whose uid still runs something gets a fresh uid.
            clean = self._reap(child, uid, cgroup)
            if not clean:
                self._drop_uid(slot)
            for reader in (out_reader, err_reader):
                if reader.is_alive() or reader.ident is not None:
                    reader.join(timeout=5)
            shutil.rmtree(workdir, ignore_errors=True)
        _refuse_if_unisolated(channel, err_reader)
        return ExecutionResult(
            load_status=channel.load_status,
            test_status=channel.statuses,
            stdout=out_reader.text(),
            stderr=err_reader.text(),
            seconds=time.perf_counter() - started,
            killed=killed,
            isolation=channel.isolation,
            outputs=channel.outputs,
            # Every test is judged where the program cannot reach: from its
            # values here, or by a harness fork that never ran it (`_harness`).
            trusted=[True] * len(split),
            values=channel.values,
        )

    def _read_results(self, read_fd: int, channel: ResultChannel) -> bool:
        """Feed the result pipe's lines to `channel` until the run is done, dies,
        or runs out of time (then True: killed). A flood of lines ends it too."""
        config = self._config
        n_cases = channel.n_cases
        buffer = bytearray()  # appended in place: a long line costs its length, not its square
        n_lines = 0
        max_lines = 2 * n_cases + 16  # ready, loaded, done, warnings, one event per case
        # a case's stdout, JSON-escaped, or a test's values
        max_line_bytes = max(8 * config.max_output_bytes, MAX_VALUE_BYTES) + 65_536
        # The deadline moves with progress (each step gets its own budget), but
        # never past the whole run's: a program writing status lines cannot
        # hold the runner longer than every step timing out in turn would.
        absolute_deadline = (
            time.monotonic() + _STARTUP_GRACE_S + config.program_timeout_s
            + config.per_test_timeout_s * max(n_cases, 1) + 2 * _GRACE_S
            + (config.program_timeout_s + _GRACE_S) * config.max_timeouts  # reloads
        )  # fmt: skip
        deadline = time.monotonic() + _STARTUP_GRACE_S
        killed = False
        with os.fdopen(read_fd, "rb", buffering=0) as results:
            while True:
                remaining = min(deadline, absolute_deadline) - time.monotonic()
                if remaining <= 0:
                    killed = True
                    break
                ready, _, _ = select.select([results], [], [], remaining)
                if not ready:
                    continue
                chunk = results.read(65536)
                if not chunk:
                    break  # the child closed the pipe: exited or died
                if b"\n" not in chunk:  # a long line arriving: no rescan of what came
                    buffer += chunk
                    if len(buffer) > max_line_bytes:
                        # Longer than any event the harness writes: a forger's
                        # endless line, which would cost this process a core
                        # to read to its end. The run ends here.
                        return self._abused(channel, "an over-long result line")
                    continue
                buffer += chunk
                lines = buffer.split(b"\n")
                buffer = bytearray(lines.pop())
                for line in map(bytes, lines):
                    if not line:
                        continue  # the harness starts each event on a fresh line
                    n_lines += 1
                    if n_lines > max_lines:
                        # More lines than the harness ever writes: a forger's
                        # flood. The run ends here, not at its deadline.
                        return self._abused(channel, "a flood of result lines")
                    outcome = channel.feed(line)
                    if outcome in ("done", "refused"):
                        return False
                    if outcome == "ready":
                        deadline = time.monotonic() + config.program_timeout_s + _GRACE_S
                    elif outcome == "step":
                        deadline = time.monotonic() + config.per_test_timeout_s + _GRACE_S
        if killed:
            # Whatever was running when time ran out timed out; later ones never ran.
            channel.interrupt("timed out")
        return killed

    @staticmethod
    def _abused(channel: ResultChannel, why: str) -> bool:
        """The program wrote on the result channel what the harness never
        does: the run ends now, and what was running is an error."""
        log.warning("sandbox: %s; the run is stopped", why)
        channel.interrupt(f"error: {why} (the program wrote on the result channel)")
        return True

    def _reap(
        self, child: subprocess.Popen[bytes], uid: int | None, cgroup: RunCgroup | None
    ) -> bool:
        """Kill the child's process group, its cgroup and, as root, everything
        its uid still runs. False: something of that uid survived every sweep."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)  # normally it is exiting already
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        if cgroup is not None:
            try:
                cgroup.kill()
            except OSError as error:
                log.warning("sandbox cgroup kill: %s", error)
        child.wait()
        if uid is not None and not _sweep_uid(uid):
            log.error("sandbox uid %d still has processes after 10 sweeps", uid)
            return False
        return True

    def _drop_uid(self, slot: int) -> None:
        """The slot's uid still runs something: the slot is not handed it again.
        Its lease goes (whoever leases it next sweeps it first, and refuses it
        while it is not clean), and the slot's next run leases another uid."""
        with self._uid_mutex:
            lease = self._uids.pop(slot, None)
            cgroup = self._cgroups.pop(slot, None)
        if cgroup is not None:
            with contextlib.suppress(CgroupError, OSError):
                cgroup.remove()
        if lease is not None:
            lease.release()
