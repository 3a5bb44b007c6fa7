"""Running untrusted generated code: a separate process, time/CPU/memory/file/process limits, no
network, a throwaway directory, and a policy that ends the program at the first forbidden act.

Model-written code is scored by running unit tests against it. It never runs in the caller's
process. Layers, each enough for the common accidents and together a real obstacle:

1. Process: a fresh `python -I -S` child in its own session (the whole group is SIGKILLed on
   timeout), with the environment emptied and the working directory a new temporary folder that
   is deleted afterwards.
2. Kernel limits (set in the child before exec): CPU seconds, address space (a huge allocation
   fails with MemoryError), file size, open files, and no new processes (RLIMIT_NPROC 0; when
   corp runs as root, where that limit is not enforced, the child first drops to user `nobody`
   and runs a Python interpreter that `nobody` can execute, e.g. /usr/bin/python3; the harness
   needs only the standard library).
   As root the child also gets an empty network namespace (no interface but a down loopback).
3. Python audit hook, installed before the candidate's code is compiled: opening a file for
   writing, or creating/removing/renaming one, outside the sandbox folder; sockets; subprocesses,
   fork, exec, signals; ctypes; importing the modules that reach those without an audit event
   (`_posixsubprocess`, `_ctypes`, `_socket`, ...). The hook ends the process with exit code 97, so a violation scores
   0 whatever the candidate catches.

The harness reports through a line prefixed by a random nonce it reads from stdin before running
the candidate, so ordinary output cannot fake a result. This guards against the accidents a weak
model makes (loops, bombs, stray writes, network calls), not against a determined attacker with
arbitrary CPython introspection; see the tests for what is covered.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

BLOCKED_EXIT = 97
_NOBODY = 65534
_CLONE_NEWNET = 0x40000000

# Runs inside the child. Reads {"nonce", "root", "code", "tests", "audit"} from stdin.
_HARNESS = r'''
import json, os, sys
cfg = json.loads(sys.stdin.read())
nonce, root = cfg["nonce"], os.path.realpath(cfg["root"])
out = sys.stdout

def _blocked(what):
    sys.stderr.write("corp-sandbox: blocked " + what + "\n")
    sys.stderr.flush()
    os._exit(97)

def _inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "/proc/self/fd")
    except Exception:
        return False
    return p == root or p.startswith(root + os.sep)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_ALWAYS = ("socket.", "subprocess.", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec",
           "os.spawn", "os.system", "os.kill", "os.killpg", "os.putenv", "os.unsetenv",
           "ctypes.", "pty.", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.",
           "resource.setrlimit", "sys.setrecursionlimit", "os.setuid", "os.chroot")
_PATH_EVENTS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree",
                "shutil.move", "shutil.copyfile", "os.replace")

_MODULES = {"_posixsubprocess", "subprocess", "_ctypes", "ctypes", "_socket", "socket", "ssl",
            "multiprocessing", "_multiprocessing", "pty", "signal", "_signal", "resource"}

def _hook(event, args):
    if event == "import":
        if str(args[0]).split(".")[0] in _MODULES:
            _blocked("import " + str(args[0]))
    elif event == "open":
        path, mode, flags = (tuple(args) + (None, None))[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and not _inside(path):
            _blocked("write to " + repr(path))
    elif event.startswith(_ALWAYS):
        _blocked(event)
    elif event.startswith(_PATH_EVENTS):
        for a in args:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a):
                _blocked(event + " " + repr(a))

if cfg["audit"]:
    sys.addaudithook(_hook)
sys.stdin = None
namespace = {"__name__": "__candidate__"}
results = []
try:
    exec(compile(cfg["code"], "<candidate>", "exec"), namespace)
    loaded = True
except BaseException as e:
    loaded = False
    results = [False] * len(cfg["tests"])
if loaded:
    for test in cfg["tests"]:
        try:
            exec(compile(test, "<test>", "exec"), dict(namespace))
            results.append(True)
        except BaseException:
            results.append(False)
out.write("\n" + nonce + json.dumps(results) + "\n")
out.flush()
'''


@dataclass
class SandboxResult:
    passed: int
    total: int
    status: str  # "ok", "timeout", "blocked", "crashed", "no-result"
    stderr: str = ""

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def _world_executable(path: str) -> bool:
    """Can any user run this file (every parent directory searchable, the file readable and
    executable by others)?"""
    import stat
    real = os.path.realpath(path)
    if not os.path.isfile(real) or (os.stat(real).st_mode & 0o005) != 0o005:
        return False
    parent = os.path.dirname(real)
    while True:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
        if parent == os.path.dirname(parent):
            return True
        parent = os.path.dirname(parent)


def _interpreter(drop_privileges: bool) -> str:
    if not drop_privileges:
        return sys.executable
    for candidate in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if candidate and _world_executable(candidate):
            return candidate
    raise RuntimeError("the code sandbox runs as user nobody when corp runs as root, and no "
                       "Python interpreter is executable by nobody (install python3 from the "
                       "system packages, or run corp as an ordinary user)")


def _limit_child(cpu_seconds: int, memory_bytes: int, file_bytes: int, isolate_net: bool):
    """Runs in the forked child just before exec."""
    import resource
    os.setsid()
    if isolate_net and os.geteuid() == 0:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(_CLONE_NEWNET)  # best effort: the audit hook still blocks sockets
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() == 0:  # RLIMIT_NPROC does not bind root
        os.setgroups([])
        os.setgid(_NOBODY)
        os.setuid(_NOBODY)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def run_tests(code: str, tests: list[str], timeout: float = 3.0, memory_mb: int = 512,
              audit: bool = True, isolate_net: bool = True) -> SandboxResult:
    """Run `code`, then each test statement (e.g. "assert f(2) == 4"), in a sandboxed child.
    `audit=False` turns off the Python policy layer (tests use it to show the kernel limits hold
    on their own)."""
    if not tests:
        raise ValueError("run_tests needs at least one test")
    root = tempfile.mkdtemp(prefix="corp-sandbox-")
    try:
        as_root = os.geteuid() == 0
        python = _interpreter(as_root)
        if as_root:
            os.chown(root, _NOBODY, _NOBODY)
        nonce = secrets.token_hex(16)
        payload = json.dumps({"nonce": nonce, "root": root, "code": code, "tests": list(tests),
                              "audit": audit})
        out_path = os.path.join(root, ".stdout")
        with open(out_path, "wb") as out_file:
            proc = subprocess.Popen(
                [python, "-I", "-S", "-c", _HARNESS], stdin=subprocess.PIPE,
                stdout=out_file, stderr=subprocess.PIPE, cwd=root, env={"PATH": "/usr/bin:/bin"},
                preexec_fn=lambda: _limit_child(int(timeout) + 1, memory_mb << 20, 1 << 20,
                                                isolate_net))
            try:
                _, err = proc.communicate(payload.encode(), timeout=timeout)
                status = None
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, err = proc.communicate()
                status = "timeout"
        err_text = err.decode(errors="replace")[-2000:]
        if status == "timeout":
            return SandboxResult(0, len(tests), "timeout", err_text)
        if proc.returncode == BLOCKED_EXIT:
            return SandboxResult(0, len(tests), "blocked", err_text)
        with open(out_path, "rb") as f:
            f.seek(max(0, os.path.getsize(out_path) - 65536))
            tail = f.read().decode(errors="replace")
        for line in reversed(tail.splitlines()):
            if line.startswith(nonce):
                results = json.loads(line[len(nonce):])
                if len(results) == len(tests):
                    return SandboxResult(sum(map(bool, results)), len(tests), "ok", err_text)
        status = "crashed" if proc.returncode else "no-result"
        return SandboxResult(0, len(tests), status, err_text)
    finally:
        shutil.rmtree(root, ignore_errors=True)
