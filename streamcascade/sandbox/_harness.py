"""Child side of the sandbox. Runs as `python -I _harness.py` in a new session.

Trusted code runs first: it reads its job from stdin, isolates itself (network,
IPC, mount and pid namespaces; a minimal root holding the shared libraries,
the standard library and a private size- and inode-limited /tmp), sets
resource limits, drops to an unprivileged uid, and only then executes the
untrusted program and its asserts, one result line per assert on the result
pipe (fd given in the job).

Standard library only, and no imports from streamcascade: this file is run by
path, and nothing the untrusted code can reach should matter to the parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

Job = dict[str, Any]
Report = Callable[[dict[str, Any]], None]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
MS_NOEXEC = 8
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38


class _TestTimeout(BaseException):
    """BaseException so that `except Exception` in the program cannot swallow it."""


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.syscall.argtypes = [ctypes.c_long, ctypes.c_char_p, ctypes.c_char_p]
    return libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
MNT_DETACH = 2


def _bind_read_only(libc: ctypes.CDLL, source: str, target: str) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass
    _check(libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None),
           f"bind {source}")  # fmt: skip
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    _check(libc.mount(None, target.encode(), None, flags, None), f"read-only {source}")


def _minimal_root(job: Job, libc: ctypes.CDLL, root: bool) -> None:
    """Pivot into a root that holds only what a program needs: the shared
    libraries, the interpreter's standard library, the packages the config
    names, four devices, a private /tmp with size and inode limits, and an
    empty /proc for the pid namespace. Nothing else of the host (the project,
    the venv's other packages, data files, path sockets) exists in it."""
    new = job["workdir"]
    _check(libc.mount(b"tmpfs", new.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                      b"size=1m,mode=0755"), "root tmpfs")  # fmt: skip
    for path in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib", "/lib", "/lib64"):
        if os.path.islink(path):
            os.symlink(os.readlink(path), new + path)
        elif os.path.isdir(path):
            _bind_read_only(libc, path, new + path)
    for path in job["expose"]:
        if not os.path.lexists(new + path):  # not already inside a bound directory
            _bind_read_only(libc, path, new + path)
    for hidden in job["hide"]:  # the base interpreter's own site-packages
        if os.path.isdir(new + hidden):
            flags = MS_NOSUID | MS_NODEV | MS_RDONLY
            target = (new + hidden).encode()
            _check(libc.mount(b"tmpfs", target, b"tmpfs", flags, b"size=4k"), f"hide {hidden}")
    for device in ("null", "zero", "random", "urandom"):
        _bind_read_only(libc, "/dev/" + device, f"{new}/dev/{device}")
    os.makedirs(new + "/proc")
    os.makedirs(new + "/tmp")
    opts = f"size={job['tmpfs_mb']}m,nr_inodes={job['tmpfs_inodes']},mode=0700"
    if root and job["uid"] is not None:
        opts += f",uid={job['uid']},gid={job['uid']}"
    _check(libc.mount(b"tmpfs", (new + "/tmp").encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                      opts.encode()), "tmp")  # fmt: skip
    os.makedirs(new + "/.old")
    number = _PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(0, f"pivot_root: unknown machine {os.uname().machine}")
    _check(libc.syscall(number, new.encode(), (new + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old", MNT_DETACH), "detach the host root")
    os.rmdir("/.old")
    _check(libc.mount(None, b"/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
           "read-only root")  # fmt: skip


def _isolate(job: Job, libc: ctypes.CDLL, report: Report) -> dict[str, Any]:
    """Namespaces and mounts. A step the kernel refuses is reported; the
    parent decides whether the run may go on without it."""
    isolation: dict[str, Any] = {
        "network": False, "filesystem": False, "ipc": False, "uid": os.getuid()
    }  # fmt: skip
    root = os.geteuid() == 0
    # A private IPC namespace: System V shared memory, queues and semaphores
    # (which no file or pid namespace covers) die with the run and never
    # reach the host or the next run on the slot.
    flags = CLONE_NEWNS | CLONE_NEWIPC | (CLONE_NEWNET if job["isolate_network"] else 0)
    try:
        if not root:
            # An unprivileged user namespace gives us the rights for the rest.
            uid, gid = os.getuid(), os.getgid()
            _check(libc.unshare(CLONE_NEWUSER | flags), "unshare")
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        else:
            _check(libc.unshare(flags), "unshare")
        isolation["network"] = bool(job["isolate_network"])
        isolation["ipc"] = True
        _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        _minimal_root(job, libc, root)
        isolation["filesystem"] = True
    except OSError as exc:
        report({"event": "isolation_error", "error": str(exc)})
    return isolation


def _enter_pid_namespace(libc: ctypes.CDLL, isolation: dict[str, Any]) -> None:
    """Run the rest as pid 1 of a new pid namespace: when it exits or is killed,
    the kernel kills and reaps everything it started, however it forked, so no
    process or zombie outlives the run. This process stays outside and waits."""
    isolation["pid_namespace"] = False
    if libc.unshare(CLONE_NEWPID) != 0:
        return
    isolation["pid_namespace"] = True
    pid = os.fork()
    if pid == 0:
        # A /proc of this namespace: the host's processes and their command
        # lines are no longer listed. Private to our mount namespace.
        isolation["proc"] = (
            libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0
        )
        return
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _limit(job: Job) -> None:
    cpu_s = int(job["cpu_s"]) + 1
    limits = [
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_AS, job["memory_mb"] * 1024 * 1024),
        (resource.RLIMIT_FSIZE, job["max_file_mb"] * 1024 * 1024),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 256),
    ]
    if job["uid"] is not None or os.geteuid() != 0:
        # Counted per real uid: meaningful only once we are not root.
        limits.append((resource.RLIMIT_NPROC, job["max_processes"]))
    for which, value in limits:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            _, hard = resource.getrlimit(which)
            if hard == resource.RLIM_INFINITY or value <= hard:
                raise
            resource.setrlimit(which, (hard, hard))


def _drop_privileges(job: Job, libc: ctypes.CDLL) -> None:
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if job["uid"] is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_SECCOMP_ALLOW = 0x7FFF0000
_SECCOMP_EPERM = 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
# (audit arch, system calls denied): the kernel keyrings (add_key,
# request_key, keyctl), which outlive a run and are keyed by uid, so the
# next run on a slot, or a run under another uid through /proc/keys, could
# read what one stored; and inotify/fanotify, through which a program could
# watch the read-only tree that every sandbox shares and see what another
# imports. Calls of another ABI (i386, x32) are denied whole: they would
# bypass the numbers below.
_DENIED = {
    "x86_64": (0xC000003E, (248, 249, 250, 253, 254, 294, 300)),
    "aarch64": (0xC00000B7, (217, 218, 219, 26, 27, 262)),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]  # fmt: skip


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _deny_shared_kernel_state(libc: ctypes.CDLL) -> bool:
    """A seccomp filter (inherited by every process the program starts, and
    irremovable) that fails the calls in `_DENIED` with EPERM. False where
    the kernel or machine cannot have it."""
    denied = _DENIED.get(os.uname().machine)
    if denied is None:
        return False
    arch, numbers = denied
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K
    n = len(numbers)
    # 0: load arch; 1: other arch -> deny; 2: load nr; 3: x32 -> deny;
    # 4..4+n-1: a denied nr -> deny; then allow; then deny.
    program = [(ld_abs, 0, 0, 4), (jeq, 0, n + 3, arch), (ld_abs, 0, 0, 0),
               (jge, n + 1, 0, 0x40000000)]  # fmt: skip
    program += [(jeq, n - i, 0, number) for i, number in enumerate(numbers)]
    program += [(ret, 0, 0, _SECCOMP_ALLOW), (ret, 0, 0, _SECCOMP_EPERM)]
    filters = (_SockFilter * len(program))(*[_SockFilter(*f) for f in program])
    fprog = _SockFprog(len(program), filters)
    libc.prctl.restype = ctypes.c_int
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return bool(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _TestTimeout()


def _describe(exc: BaseException) -> str:
    """The exception as one short line. The program chose the exception, so its
    `__str__` (or a metaclass's `__name__`) may raise or return anything."""
    try:
        name = type(exc).__name__
        name = name if isinstance(name, str) else "Exception"
    except BaseException:
        name = "Exception"
    try:
        text = str(exc)
        text = text if type(text) is str else ""
    except BaseException:
        text = "<unprintable>"
    return f"{name[:100]}: {text[:200]}" if text else name[:100]


class _NotPlain(Exception):
    pass


_TYPE_NAME = type.__dict__["__name__"]  # the C getter: a metaclass cannot fake it


def _plain(value: Any, budget: list[int], depth: int) -> Any:
    """`value` as JSON-ready plain data, or _NotPlain. Only the built-in types'
    own C methods run here, never the program's: a subclass's `__eq__`,
    `__iter__` or `__repr__` is not called, and what comes out is a copy made
    of exact built-in types (see `streamcascade.sandbox.verdicts`)."""
    budget[0] -= 1
    if budget[0] < 0 or depth > 100:
        raise _NotPlain("value too large or too deep")
    kind = type(value)
    if value is None or kind is bool:
        return value
    if issubclass(kind, int):
        return int.__index__(value)  # an exact int, whatever the subclass overrides
    if issubclass(kind, float):
        return float.__mul__(value, 1.0)
    if issubclass(kind, str):
        return str.__str__(value)
    if issubclass(kind, (bytes, bytearray)):
        return {"b": bytes.hex(value)}
    if issubclass(kind, complex):
        parts = complex.__getattribute__(value, "real"), complex.__getattribute__(value, "imag")
        return {"c": list(parts)}
    if issubclass(kind, list):
        return [_plain(x, budget, depth + 1) for x in list.copy(value)]
    if issubclass(kind, tuple):
        return {"t": [_plain(x, budget, depth + 1) for x in tuple.__getitem__(value, slice(None))]}
    if issubclass(kind, dict):
        return {"d": [[_plain(k, budget, depth + 1), _plain(v, budget, depth + 1)]
                      for k, v in list(dict.items(value))]}  # fmt: skip
    if issubclass(kind, frozenset):
        return {"fs": [_plain(x, budget, depth + 1) for x in list(frozenset.__iter__(value))]}
    if issubclass(kind, set):
        return {"s": [_plain(x, budget, depth + 1) for x in list(set.__iter__(value))]}
    raise _NotPlain("not plain data: " + str(_TYPE_NAME.__get__(kind))[:80])


def _values_of(test: dict[str, Any], scope: dict[str, Any], cap: int) -> list[Any]:
    """Run the test's prelude, then evaluate each hole; their plain values."""
    if test["prelude"]:
        exec(compile(test["prelude"], "<test prelude>", "exec"), scope)
    values = []
    for hole in test["holes"]:
        value = eval(compile(hole, "<test>", "eval"), scope)
        values.append(_plain(value, [1_000_000], 0))
    encoded = json.dumps(values)
    if len(encoded) > cap:
        raise _NotPlain(f"values over {cap} bytes")
    return values


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    out = os.fdopen(job["result_fd"], "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)

    def report(event: dict[str, Any]) -> None:
        if event["event"] in ("done", "loaded"):
            # The parent may reap us as soon as it reads this: output first.
            sys.stdout.flush()
            sys.stderr.flush()
        # The leading newline ends whatever the program left unterminated on
        # the pipe, so that junk cannot swallow this line.
        out.write("\n" + json.dumps(event) + "\n")

    libc = _libc()
    isolation = _isolate(job, libc, report)
    _enter_pid_namespace(libc, isolation)
    home = "/tmp" if isolation["filesystem"] else job["workdir"]
    os.chdir(home)
    os.environ.clear()
    os.environ.update({"HOME": home, "TMPDIR": home, "PATH": "/usr/bin:/bin"})
    _limit(job)
    _drop_privileges(job, libc)
    isolation["seccomp"] = _deny_shared_kernel_state(libc)
    isolation["uid"] = os.getuid()
    report({"event": "ready", "isolation": isolation})

    signal.signal(signal.SIGALRM, _on_alarm)
    if job.get("inputs") is not None:
        _run_program(job, report)
        return
    namespace: dict[str, Any] = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    try:
        signal.setitimer(signal.ITIMER_REAL, job["program_timeout_s"])
        exec(compile(job["program"], "<solution>", "exec"), namespace)
        signal.setitimer(signal.ITIMER_REAL, 0)
        report({"event": "loaded", "status": "ok"})
    except _TestTimeout:
        report({"event": "loaded", "status": "timed out"})
        return
    except BaseException as exc:  # the program is untrusted: any failure is a result
        signal.setitimer(signal.ITIMER_REAL, 0)
        report({"event": "loaded", "status": "error: " + _describe(exc)})
        return

    timeouts = 0
    evals = job.get("evals") or [None] * len(job["tests"])
    for index, (test, split) in enumerate(zip(job["tests"], evals, strict=True)):
        if timeouts >= job["max_timeouts"]:
            break  # a program that hangs once usually hangs again: spare the budget
        scope = dict(namespace)  # a test's assignments do not leak into the next
        try:
            if split is not None:
                # Only values go back: the parent holds the expected ones and judges.
                signal.setitimer(signal.ITIMER_REAL, job["per_test_timeout_s"])
                values = _values_of(split, scope, job["max_value_bytes"])
                signal.setitimer(signal.ITIMER_REAL, 0)
                report({"event": "values", "index": index, "values": values})
                continue
            code = compile(test, f"<test {index}>", "exec")
            signal.setitimer(signal.ITIMER_REAL, job["per_test_timeout_s"])
            exec(code, scope)
            signal.setitimer(signal.ITIMER_REAL, 0)
            status = "passed"
        except _TestTimeout:
            status = "timed out"
            timeouts += 1
        except AssertionError as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            status = "failed: " + _describe(exc) if str(exc) else "failed: AssertionError"
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            status = "error: " + _describe(exc)
        report({"event": "test", "index": index, "status": status})
    report({"event": "done"})


def _run_program(job: Job, report: Report) -> None:
    """A whole program, run once per input as `__main__` with that input on fd 0
    (so `input()`, `sys.stdin` and `open(0)` all read it) and fd 1 going to a
    file in the private tmpfs, whose first bytes go back to the parent. The
    parent compares them with what is expected: the verdict is not made here."""
    try:
        code = compile(job["program"], "<solution>", "exec")
    except BaseException as exc:  # a syntax error is a result
        report({"event": "loaded", "status": "error: " + _describe(exc)})
        return
    report({"event": "loaded", "status": "ok"})
    cap = int(job["max_case_output_bytes"])
    saved_out = os.dup(1)
    timeouts = 0
    for index, text in enumerate(job["inputs"]):
        if timeouts >= job["max_timeouts"]:
            break
        in_path, out_path = f"stdin-{index}", f"stdout-{index}"
        with open(in_path, "w") as f:
            f.write(text)
        in_fd = os.open(in_path, os.O_RDONLY)
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        sys.stdout.flush()
        # The previous case may have closed fd 0 or 1 (`open(0)` does when its
        # file is collected): then os.open returned that very number.
        for fd, target in ((in_fd, 0), (out_fd, 1)):
            if fd != target:
                os.dup2(fd, target)
                os.close(fd)
        real_stdin, real_stdout = sys.stdin, sys.stdout
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        status = "ran"
        try:
            signal.setitimer(signal.ITIMER_REAL, job["per_test_timeout_s"])
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _TestTimeout:
            status = "timed out"
            timeouts += 1
        except SystemExit as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if exc.code not in (None, 0):
                status = f"error: exit {exc.code!s:.50}"
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            status = "error: " + _describe(exc)
        with contextlib.suppress(BaseException):  # a broken stdout is the program's doing
            sys.stdout.flush()
        sys.stdin, sys.stdout = real_stdin, real_stdout
        os.dup2(saved_out, 1)
        with open(out_path, "rb") as f:
            output = f.read(cap + 1)
        os.remove(out_path)
        os.remove(in_path)
        report({"event": "case", "index": index, "status": status,
                "stdout": output[:cap].decode("utf-8", "replace"),
                "truncated": len(output) > cap})  # fmt: skip
    report({"event": "done"})


if __name__ == "__main__":
    main()
    # Skip interpreter teardown: the program may have left threads or handlers behind.
    sys.stdout.flush()
    os._exit(0)
