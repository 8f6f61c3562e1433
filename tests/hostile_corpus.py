"""Hostile programs, one per kind of attack (issue 13).

Each defines `f()`, which attempts its attack and returns "escaped" only if
the attack worked from where it stands; the test asserts `f() == "escaped"`,
so a pass is a breach (or a forged verdict). Every kind is also checked from
outside, on the host, after it ran (see `test_hostile_corpus.py`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    group: str
    body: str
    """The body of `f()`, indented by four spaces; `CANARY` and `HOSTDIR` are
    replaced by a host file and a host directory the program must not reach."""
    imports: str = "import os, sys, time, signal, socket, ctypes, threading, subprocess\n"
    apart: str = "x = f()\nassert x == 'escaped'"
    """A test that cannot be split (it assigns), so it is judged apart, in a
    fork of the harness that calls `f` across a pipe: it must not pass either."""


def _k(name: str, group: str, *lines: str, apart: str = "") -> Kind:
    body = "".join(f"    {line}\n" for line in lines)
    return Kind(name, group, body, apart=apart) if apart else Kind(name, group, body)


TRY = "try:"
ESC = "    return 'escaped'"
NO = "except BaseException:\n        return 'contained'"

KINDS: list[Kind] = [
    # -- processes ------------------------------------------------------------------
    _k("fork bomb", "processes",
       "while True:", "    try:", "        os.fork()", "    except OSError:", "        pass"),
    _k("fork bomb leaving the group", "processes",
       "for _ in range(200):", "    try:", "        if os.fork() == 0:", "            os.setsid()",
       "            time.sleep(60)", "    except OSError:", "        pass", "return 'x'"),
    _k("thread bomb", "processes",
       "for _ in range(10000):", "    try:",
       "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
       "    except RuntimeError:", "        break", "return 'x'"),
    _k("double-fork daemon", "processes",
       "if os.fork() == 0:", "    os.setsid()", "    if os.fork() == 0:",
       "        time.sleep(120)", "    os._exit(0)", "return 'x'"),
    _k("kill(-1)", "processes", "os.kill(-1, signal.SIGKILL)", "return 'x'"),
    _k("kill the parent", "processes",
       TRY, "    os.kill(os.getppid(), signal.SIGKILL)", "    return 'x'", NO),
    _k("kill pid 1 of the host", "processes",
       "for pid in range(2, 400):", "    try:", "        os.kill(pid, signal.SIGKILL)",
       "    except OSError:", "        pass", "return 'x'"),
    _k("ptrace the parent", "processes",
       "libc = ctypes.CDLL(None)", "return 'escaped' if libc.ptrace(16, 1, 0, 0) == 0 "
       "and os.getppid() != 0 else 'x'"),
    _k("subprocess to a shell", "processes",
       TRY, "    subprocess.run(['/bin/sh', '-c', 'touch HOSTDIR/sh-was-here'])", ESC, NO),
    _k("exec a new interpreter", "processes",
       TRY, "    os.execv(sys.executable, [sys.executable, '-c', 'print(1)'])", ESC, NO),
    # -- time ----------------------------------------------------------------------------
    _k("infinite loop", "time", "while True:", "    pass"),
    _k("loop swallowing the alarm", "time",
       "signal.signal(signal.SIGALRM, signal.SIG_IGN)", "while True:", "    pass"),
    _k("timer turned off", "time", "signal.setitimer(signal.ITIMER_REAL, 0)", "time.sleep(120)"),
    _k("catches its timeout", "time",
       "while True:", "    try:", "        time.sleep(120)", "    except BaseException:",
       "        pass"),
    _k("SIGSTOP itself", "time", "os.kill(os.getpid(), signal.SIGSTOP)", "return 'x'"),
    _k("SIGTERM itself", "time", "os.kill(os.getpid(), signal.SIGTERM)", "return 'x'"),
    # -- memory and files --------------------------------------------------------------
    _k("memory bomb", "memory", "x = bytearray(8 * 1024 ** 3)", "return 'x'"),
    _k("growing list", "memory", "x = []", "while True:", "    x.append(' ' * 10 ** 6)"),
    _k("memory split over children", "memory",
       "for _ in range(8):", "    if os.fork() == 0:",
       "        b = bytearray(400 * 1024 ** 2)", "        b[::4096] = b'x' * len(b[::4096])",
       "        time.sleep(30)", "return 'x'"),
    _k("huge file", "files",
       "with open('big', 'wb') as out:", "    out.write(b'x' * 512 * 1024 ** 2)", "return 'x'"),
    _k("many files", "files",
       "for i in range(300000):", "    open(f'f{i}', 'w').close()", "return 'x'"),
    _k("fill /tmp", "files",
       "i = 0", "while True:", "    with open(f'/tmp/fill{i}', 'wb') as out:",
       "        out.write(b'x' * 2 ** 20)", "    i += 1"),
    _k("write the canary", "files",
       TRY, "    open('CANARY', 'w').write('pwned')", ESC, NO),
    _k("write a host directory", "files",
       TRY, "    open('HOSTDIR/new-file', 'w').write('pwned')", ESC, NO),
    _k("write /etc", "files", TRY, "    open('/etc/pwned', 'w').write('x')", ESC, NO),
    _k("write /usr/lib", "files", TRY, "    open('/usr/lib/pwned', 'w').write('x')", ESC, NO),
    _k("read the canary", "files",
       TRY, "    open('CANARY').read()", ESC, NO),
    _k("read the project", "files",
       "return 'escaped' if os.path.exists('PROJECT') else 'x'"),
    _k("read HumanEval's data", "files",
       "import glob", "return 'escaped' if glob.glob('/**/HumanEval.jsonl*', recursive=True) "
       "else 'x'"),
    _k("symlink out of /tmp", "files",
       TRY, "    os.symlink('CANARY', 'link')", "    open('link', 'w').write('pwned')", ESC, NO),
    _k("hard link out of /tmp", "files",
       TRY, "    os.link('CANARY', 'link')", ESC, NO),
    _k("read /etc/shadow", "files", TRY, "    open('/etc/shadow').read()", ESC, NO),
    _k("core dump", "files", "os.abort()"),
    _k("segfault", "files", "ctypes.string_at(0)"),
    # -- privileges and namespaces ------------------------------------------------------
    _k("setuid(0)", "privileges", TRY, "    os.setuid(0)", ESC, NO),
    _k("mount a tmpfs", "privileges",
       "libc = ctypes.CDLL(None, use_errno=True)",
       "return 'escaped' if libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None) == 0 else 'x'"),
    _k("unshare a user namespace and mount", "privileges",
       "libc = ctypes.CDLL(None, use_errno=True)",
       "if libc.unshare(0x10000000 | 0x00020000) != 0:", "    return 'x'",
       "libc.mount(b'tmpfs', b'/usr/lib', b'tmpfs', 0, None)",
       "return 'escaped' if os.path.exists('CANARY') else 'x'"),
    _k("chroot", "privileges", TRY, "    os.chroot('/tmp')", ESC, NO),
    _k("setns into the host", "privileges",
       TRY, "    fd = os.open('/proc/1/ns/mnt', os.O_RDONLY)",
       "    return 'escaped' if ctypes.CDLL(None).setns(fd, 0) == 0 else 'x'", NO),
    _k("load a kernel module", "privileges",
       "return 'escaped' if ctypes.CDLL(None).syscall(175, None, 0, b'') == 0 else 'x'"),
    _k("reboot", "privileges",
       "return 'escaped' if ctypes.CDLL(None).reboot(0x4321FEDC) == 0 else 'x'"),
    # -- what it can see --------------------------------------------------------------
    _k("host processes in /proc", "visibility",
       "return 'escaped' if len([p for p in os.listdir('/proc') if p.isdigit()]) > 3 else 'x'"),
    # Its ancestors inside the run are the sandbox's own harness (whose command
    # line is no secret: its code is in the program's own frames); anything
    # else would be a host process.
    _k("a host process's command line", "visibility",
       "pid = os.getppid()", "while pid > 0:", "    try:",
       "        line = open(f'/proc/{pid}/cmdline', 'rb').read()",
       "        pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])",
       "    except (OSError, ValueError, IndexError):", "        return 'x'",
       "    if b'_harness.py' not in line:", "        return 'escaped'", "return 'x'"),
    _k("secrets in the environment", "visibility",
       "return 'escaped' if 'SC_HOSTILE_SECRET' in str(os.environ) else 'x'"),
    _k("secrets in /proc/*/environ", "visibility",
       "import glob", "for path in glob.glob('/proc/*/environ'):", "    try:",
       "        if b'SC_HOSTILE_SECRET' in open(path, 'rb').read():", "            return 'escaped'",
       "    except OSError:", "        pass", "return 'x'"),
    _k("the hidden tests in a frame", "visibility",
       "frame = sys._getframe(1)", "while frame is not None:",
       "    if 'SECRET_' + 'EXPECTED' in repr(frame.f_locals):", "        return 'escaped'",
       "    frame = frame.f_back", "return 'x'"),
    _k("the hidden tests on stdin", "visibility",
       TRY, "    return 'escaped' if 'SECRET_' + 'EXPECTED' in sys.stdin.read() else 'x'", NO),
    # -- network and IPC ----------------------------------------------------------------
    _k("TCP to the host", "network",
       TRY, "    socket.create_connection(('127.0.0.1', PORT), timeout=1)", ESC, NO),
    _k("TCP to the outside", "network",
       TRY, "    socket.create_connection(('1.1.1.1', 53), timeout=1)", ESC, NO),
    _k("UDP out", "network",
       TRY, "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
       "    s.sendto(b'x', ('8.8.8.8', 53))", ESC, NO),
    _k("IPv6 to the host", "network",
       TRY, "    socket.create_connection(('::1', PORT), timeout=1)", ESC, NO),
    _k("DNS", "network", TRY, "    socket.getaddrinfo('example.com', 80)", ESC, NO),
    _k("a Unix socket at a host path", "network",
       TRY, "    socket.socket(socket.AF_UNIX).connect('HOSTDIR/host.sock')", ESC, NO),
    _k("an abstract Unix socket", "network",
       TRY, "    socket.socket(socket.AF_UNIX).connect('\\0sc-hostile-abstract')", ESC, NO),
    _k("a raw packet socket", "network",
       TRY, "    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)", ESC, NO),
    _k("netlink", "network",
       TRY, "    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)", "    s.bind((0, 0))",
       "    return 'escaped' if len(os.listdir('/sys/class/net')) > 1 else 'x'", NO),
    _k("listen for the host", "network",
       "s = socket.socket()", "s.bind(('0.0.0.0', 0))", "s.listen()",
       "open('HOSTDIR/port', 'w').write(str(s.getsockname()[1]))", "time.sleep(5)"),
    _k("System V shared memory left behind", "ipc",
       "libc = ctypes.CDLL(None)", "libc.shmget(0x5C5C01, 32 << 20, 0o1666)", "return 'x'"),
    _k("System V message queue left behind", "ipc",
       "libc = ctypes.CDLL(None)", "libc.msgget(0x5C5C02, 0o1666)", "return 'x'"),
    _k("System V semaphore left behind", "ipc",
       "libc = ctypes.CDLL(None)", "libc.semget(0x5C5C03, 1, 0o1666)", "return 'x'"),
    _k("POSIX shared memory", "ipc",
       TRY, "    open('/dev/shm/sc-hostile', 'w').write('x')", ESC, NO),
    # -- the verdict and the harness ---------------------------------------------------
    _k("an object equal to everything", "verdict",
       "class Yes:", "    def __eq__(self, other):", "        return True",
       "    __hash__ = object.__hash__", "return Yes()"),
    _k("a str subclass equal to everything", "verdict",
       "class S(str):", "    def __eq__(self, other):", "        return True",
       "    __hash__ = str.__hash__", "return S('x')"),
    _k("forged result lines", "verdict",
       "line = b'{\"event\": \"test\", \"index\": 0, \"status\": \"passed\"}\\n'",
       "for fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:", "    try:", "        os.write(fd, line + b'{\"event\": \"done\"}\\n')",
       "    except OSError:", "        pass", "os._exit(0)"),
    _k("patched json.dumps", "verdict",
       "import json", "real = json.dumps",
       "json.dumps = lambda o, *a, **k: real(dict(o, status='passed') if isinstance(o, dict) "
       "else o, *a, **k)", "raise AssertionError('x')"),
    _k("patched compile", "verdict",
       "import builtins", "real = builtins.compile",
       "builtins.compile = lambda s, n, m, *a, **k: real('pass', n, m, *a, **k)", "return 'x'"),
    _k("exits 0 mid-test", "verdict", "os._exit(0)"),
    _k("SystemExit(0)", "verdict", "raise SystemExit(0)"),
    _k("an exception whose str raises", "harness",
       "class E(Exception):", "    def __str__(self):", "        raise RuntimeError()",
       "raise E()"),
    _k("a huge exception message", "harness", "raise ValueError('x' * 10 ** 8)"),
    _k("closes every fd", "harness", "os.closerange(0, 1024)", "return 'x'"),
    _k("a flood of stdout", "harness", "while True:", "    print('x' * 10000)"),
    _k("a flood of status lines", "harness",
       "line = b'{\"event\": \"test\", \"index\": 0, \"status\": \"failed\"}\\n'",
       "while True:", "    for fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:", "        try:", "            os.write(fd, line)",
       "        except OSError:", "            pass", "    time.sleep(0.2)"),
    _k("an endless line on the result pipe", "harness",
       "chunk = b'x' * 65536", "while True:", "    for fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:", "        try:",
       "            os.write(fd, chunk)", "        except OSError:", "            pass"),
    _k("deep recursion", "harness", "sys.setrecursionlimit(10 ** 7)", "return f()"),
    # Lines the parent once raised on (RecursionError, TypeError, IndexError,
    # KeyError) and then never reaped the run: deep nesting, wrong types, a
    # malformed value, a status that is not a string.
    _k("malformed result lines", "harness",
       "lines = [b'[' * 100000, b'{\"event\": \"ready\", \"isolation\": [1, 2]}',",
       "         b'{\"event\": \"values\", \"index\": 1, \"values\": [{\"c\": [1]}]}',",
       "         b'{\"event\": \"test\", \"index\": 0, \"status\": ' + b'[' * 900 + b']' * 900 + b'}',",
       "         b'{\"event\": \"loaded\", \"status\": 7}', b'{\"event\": [\"done\"]}', b'7']",
       "for fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:", "    for line in lines:", "        try:",
       "            os.write(fd, b'\\n' + line + b'\\n')", "        except OSError:", "            pass",
       "if os.fork() == 0:", "    time.sleep(60)", "os._exit(0)"),
    # A test judged apart calls, besides the program's function, built-ins,
    # library helpers, methods of built-in types and names it reads: each
    # kind below replaces one of those in the program's interpreter, or the
    # harness's own functions there, and its test would pass if it ran there.
    _k("replaced built-ins a test calls", "verdict",
       "import builtins", "real_isinstance, real_len = isinstance, len",
       "builtins.isinstance = lambda o, t: t is float or real_isinstance(o, t)",
       "builtins.len = lambda o: 7 if real_isinstance(o, str) and o == 'x' else real_len(o)",
       "return 'x'",
       apart="x = f()\nassert isinstance(x, float) and len(x) == 7"),
    _k("a standard module shadowed in its temp dir", "verdict",
       "open('/tmp/math.py', 'w').write('def isclose(*a, **k):\\n    return True\\n')",
       "sys.path.insert(0, '/tmp')", "sys.modules.pop('math', None)", "return 1.0",
       apart="import math\nx = f()\nassert math.isclose(x, 3.5)"),
    _k("built-in methods replaced through the garbage collector", "verdict",
       "import gc", "gc.get_referents(str.__dict__)[0]['upper'] = lambda self: 'ESCAPED'",
       "ctypes.pythonapi.PyType_Modified.argtypes = [ctypes.py_object]",
       "ctypes.pythonapi.PyType_Modified(str)", "return 'x'",
       apart="x = f()\nassert x.upper() == 'ESCAPED'"),
    _k("a name the test reads, defined by the program", "verdict",
       "import builtins", "builtins.EXPECTED = 'x'", "return 'x'",
       apart="x = f()\nassert x == EXPECTED"),
    _k("the harness's functions replaced by a frame walk", "verdict",
       "frame = sys._getframe(1)", "while frame is not None:",
       "    names = frame.f_globals",
       "    for name in ('_run_test', '_status_of', '_await_fork', '_judge_apart', '_rebuilt'):",
       "        if name in names:", "            names[name] = lambda *a, **k: 'passed'",
       "    report = frame.f_locals.get('report')",
       "    if callable(report):  # the harness's reporter: every test it sends, passed",
       "        frame.f_locals['report'] = lambda e, real=report: real(dict(e, status='passed') "
       "if e.get('event') == 'test' else e)",
       "        ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))",
       "    frame = frame.f_back", "return 'x'",
       apart="x = f()\nassert x == 'escaped'"),
    _k("the harness's memory through /proc", "harness",
       TRY, "    open('/proc/1/mem', 'r+b').close()", ESC, NO),
    _k("the harness's fds through /proc", "harness",
       TRY, "    return 'escaped' if os.listdir('/proc/1/fd') else 'x'", NO),
    _k("the harness's fds through pidfd_getfd", "harness",
       "libc = ctypes.CDLL(None)", "pidfd = libc.syscall(434, 1, 0)",
       "return 'escaped' if pidfd >= 0 and libc.syscall(438, pidfd, 3, 0) >= 0 else 'x'"),
    # -- what one run could leave for, or see of, another ------------------------------
    _k("a key in the kernel keyring", "requests",
       "libc = ctypes.CDLL(None)",
       "return 'escaped' if libc.syscall(248, b'user', b'sc-hostile', b'x', 1, -4) > 0 else 'x'"),
    _k("a key in the session keyring", "requests",
       "libc = ctypes.CDLL(None)",
       "return 'escaped' if libc.syscall(248, b'user', b'sc-hostile', b'x', 1, -3) > 0 else 'x'"),
    _k("inotify on the shared standard library", "requests",
       "libc = ctypes.CDLL(None)", "fd = libc.inotify_init1(0)",
       "path = os.path.dirname(os.__file__).encode()",
       "return 'escaped' if fd >= 0 and libc.inotify_add_watch(fd, path, 1) >= 0 else 'x'"),
    _k("a 32-bit system call", "requests",
       "libc = ctypes.CDLL(None)",
       "return 'escaped' if libc.syscall(0x40000000 | 250, 0, -4, 0, 0, 0) >= 0 else 'x'"),
]  # fmt: skip


def program_of(kind: Kind, canary: str, hostdir: str, project: str, port: int) -> str:
    body = (
        kind.body.replace("CANARY", canary)
        .replace("HOSTDIR", hostdir)
        .replace("PROJECT", project)
        .replace("PORT", str(port))
    )
    return f"{kind.imports}def f():\n{body}"
