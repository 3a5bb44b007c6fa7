"""Running untrusted generated code: the operating system confines it, and its reward cannot be
forged because the program never learns what a pass looks like.

Rewards. A test is the statement `assert EXPR == LITERAL` (e.g. "assert f(2) == 4"). The parent
parses it, keeps LITERAL, and sends the child only the candidate's code and the EXPRs. The child
(the harness) runs the code, evaluates each EXPR and writes the plain values it got (None, bool,
int, float, str, list, tuple, dict, set; anything else is an error) to a report file; the parent
decodes them and compares them with the literals itself. Why this is sound where a "pass" line is
not: the candidate runs in the harness's process, so anything the harness can do the candidate can
do too -- read a nonce, rebind the harness's globals, write the report, exit early. No report
channel inside that process can be kept out of its reach. So the report carries no verdict: it
only says "EXPR evaluated to V", and a forged report claiming V earns exactly what an honest
program returning V earns. The expected values never enter the child, so it cannot learn them.
Unparseable, truncated or missing reports score 0, as do timeouts and policy stops. The parent
walks a report along the expected value's shape: it builds no set or dict of reported values, so
a report of colliding hashes costs it linear time (a 950 KB set of ints k * (2**61 - 1) took 13 s
to decode into a set). Ints over 4096 bits travel as hex: JSON writes ints in decimal, which
Python refuses beyond 4300 digits (and corp keeps that limit).

A sandbox failure is not a score: the harness writes a "started" marker to a file of its own, and
closes it, before it compiles the candidate's code. No marker means the candidate never ran
(bwrap or the launcher failed, the harness could not set its limits, the start took longer than
the timeout): corp raises SandboxError naming the mode and the stderr tail, and nothing is
scored. Once the marker is there every failure, exit 98 included, is the candidate's and scores
0; the candidate cannot reach the marker's file to undo it.

Confinement, strongest available first (`confinement()` says which is active and what it lacks;
corp logs that line before the first sandboxed run; CORP_SANDBOX=bwrap|unshare|process asks for
one and fails if it is not available):

1. `bwrap` (bubblewrap installed): new user, mount, network, pid, ipc, uts and cgroup namespaces.
   The file system is read-only /usr (and the top-level /bin, /lib... links) plus a minimal
   read-only /dev; /tmp, /dev/shm and the working folder /work are private 16 MiB tmpfs that
   vanish with the sandbox; /proc, /etc, /home, /root and the repository do not exist in it. No
   network interface but a down loopback. No nested user namespaces (--disable-userns), which
   would let the program mount tmpfs of any size. bwrap sets no-new-privileges and runs the
   program in its own session; as root, corp starts bwrap as user `nobody`, so the program is
   uid 65534 outside too.
2. `unshare` (no bwrap): the same view built by a small launcher with unshare(2), mount(2) and
   pivot_root(2) -- as root directly, then dropping to `nobody` and entering a user namespace of
   its own; as another user inside a new user namespace (the program keeps that user's uid).
   Either way the launcher sets that namespace's max_user_namespaces to 0 before it execs the
   program, which has no capability in it to set it back.
3. `process` (neither works): only a separate process with the limits below; it can see and
   write what its user can (e.g. the host's /tmp). As root that user is `nobody`, its working
   folder sits in a root-owned 0711 folder so it cannot move it away, and corp falls back to this
   mode with a warning. As another user the program would have corp's uid: it could read and
   change that user's files (the repository included) and signal corp, so corp never falls back
   to it on its own; CORP_SANDBOX=process (or confinement="process") accepts that, and corp then
   makes itself non-dumpable (prctl PR_SET_DUMPABLE 0) so that its memory is not readable or
   writable through /proc/<pid>/mem.

In every mode the harness sets, before the candidate's code is compiled: CPU seconds, address
space, file size (1 MiB, which also bounds stdout, stderr and the report: all three are files, not
pipes), open files and no new processes (RLIMIT_NPROC 0, which binds because the program is never
uid 0). The parent enforces the wall-clock timeout with SIGKILL: first to the pid namespace's
pid 1 (the kernel kills everything in it, and bwrap or the launcher exits once it is gone, so
nothing is left running), then to the whole process group.

A Python audit hook stays as a second layer: it ends the program with exit code 97 ("blocked") at
a subprocess, fork, exec, socket, signal or ctypes use, an import of a module that reaches those
without an audit event, or a write outside the working folder. The hook reads nothing a
candidate can rebind (no globals or closures: the builtins it needs are default arguments, tests
check its bytecode), and replacing a function's __code__, __defaults__ or __kwdefaults__ is itself
blocked. It is a convenience that turns the common accidents into a clear status, not the
boundary: a determined program can get past an in-process hook (e.g. with dir_fd-relative calls),
never past the kernel's namespaces and limits.

Not confined: the kernel's full system-call surface (no seccomp filter); memory is RLIMIT_AS per
process plus up to 48 MiB of tmpfs, not a cgroup; the program can read all of /usr.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger("corp")

BLOCKED_EXIT = 97  # the audit hook stopped the program (the literal in _HOOK)
SETUP_EXIT = 98    # the launcher could not build the sandbox, or the harness found itself uid 0
                   # (before the started marker, so corp raises SandboxError)
_STARTED = b"started"  # the harness's marker (the literal in _HARNESS): the candidate's turn
_PR_SET_DUMPABLE = 4
_NOBODY = 65534
_OUTPUT_BYTES = 1 << 20   # RLIMIT_FSIZE: any file the program writes, stdout, stderr, the report
_TMPFS_BYTES = 16 << 20   # each of /tmp, /dev/shm and /work inside the sandbox
_OPEN_FILES = 64
_STDERR_TAIL = 2000
_REAP_SECONDS = 5  # after SIGKILL of the namespace's pid 1, for bwrap or the launcher to exit
_WORK = "/work"
_PATH = "/usr/bin:/bin"
KINDS = ("bwrap", "unshare", "process")

# Runs inside the child, in `python -I -S`. stdin is a file holding {"code", "calls", "report_fd",
# "started_fd", "root", "audit", "cpu", "memory", "fsize", "nofile"}; it writes the marker to
# started_fd and closes it, then runs the candidate and writes the report to report_fd: a JSON
# list with {"value": encoded} or {"error": "ExceptionName"} per call. Everything before `exec`
# of the candidate is trusted; nothing after it is relied upon by the parent.
_HARNESS = r'''
import json, os, resource, sys

_DECIMAL_BITS = 4096  # larger ints go as hex: json.dumps refuses ints over 4300 digits

def _encode(v, depth=0):
    """Plain data only; containers are tagged so the parent can tell a tuple from a list."""
    if depth > 100:
        raise ValueError("nested too deeply")
    if v is None or type(v) is bool:
        return v
    if isinstance(v, int):
        v = int.__index__(v)
        return v if v.bit_length() <= _DECIMAL_BITS else {"int": format(v, "x")}
    if isinstance(v, float):
        v = float.__float__(v)
        return v if v - v == 0.0 else {"float": repr(v)}
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, list):
        return [_encode(x, depth + 1) for x in list.copy(v)]
    if isinstance(v, tuple):
        return {"tuple": [_encode(x, depth + 1) for x in tuple.__iter__(v)]}
    if isinstance(v, dict):
        return {"dict": [[_encode(k, depth + 1), _encode(x, depth + 1)]
                         for k, x in dict.items(v)]}
    if isinstance(v, (set, frozenset)):
        return {"set": [_encode(x, depth + 1) for x in frozenset(v)]}
    raise TypeError("cannot report a " + type(v).__name__)

cfg = json.loads(sys.stdin.buffer.read())
sys.stdin = None
os.close(0)
_low = 3  # e.g. bwrap's info fd: the candidate keeps only 1, 2 and the report
for _fd in sorted((cfg["report_fd"], cfg["started_fd"])):
    os.closerange(_low, _fd)
    _low = _fd + 1
os.closerange(_low, 1 << 16)
for limit, value in ((resource.RLIMIT_CPU, cfg["cpu"]), (resource.RLIMIT_AS, cfg["memory"]),
                     (resource.RLIMIT_FSIZE, cfg["fsize"]), (resource.RLIMIT_NOFILE, cfg["nofile"]),
                     (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 0)):
    resource.setrlimit(limit, (value, value))
if os.getuid() == 0 or os.geteuid() == 0:
    os.write(2, b"corp-sandbox: refusing to run the candidate as uid 0\n")
    os._exit(98)
if cfg["audit"]:
    _scope = {"os": os, "ROOT": cfg["root"]}
    exec(cfg["hook"], _scope)
    sys.addaudithook(_scope["_hook"])
    del _scope
os.write(cfg["started_fd"], b"started")  # before the candidate's code is even compiled
os.close(cfg["started_fd"])
_report_fd, _dumps, _write = cfg["report_fd"], json.dumps, os.write
calls, code = cfg["calls"], cfg["code"]
del cfg
namespace = {"__name__": "__candidate__"}
try:
    exec(compile(code, "<candidate>", "exec"), namespace)
    failed = None
except BaseException as e:
    failed = "load:" + type(e).__name__
results = []
for expr in calls:
    if failed:
        results.append({"error": failed})
        continue
    try:
        results.append({"value": _encode(eval(compile(expr, "<test>", "eval"), dict(namespace)))})
    except BaseException as e:
        results.append({"error": type(e).__name__})
data = _dumps(results).encode()
while data:
    data = data[_write(_report_fd, data):]
for stream in (sys.stdout, sys.stderr):  # what the candidate printed, for the stderr tail
    try:
        stream.flush()
    except BaseException:
        pass
os._exit(0)
'''

# The audit hook (the second layer), exec'd by the harness with `os` and `ROOT` (the working
# folder) in its globals. Everything the hook and `_inside` use is a default argument bound at
# definition, so rebinding a module global or a builtin later changes nothing; the bytecode is
# checked for global and closure loads in tests/test_sandbox.py.
_HOOK = r'''
def _inside(p, _root=ROOT, _str=str, _bytes=bytes, _int=int, _isinstance=isinstance,
            _fspath=os.fspath, _getcwd=os.getcwd):
    if p is None or _isinstance(p, _int):
        return True  # no path (or an fd the program already holds)
    p = _fspath(p)
    if _isinstance(p, _bytes):
        p = _bytes.decode(p, "utf-8", "surrogateescape")
    p = _str.__str__(p)
    if not _str.startswith(p, "/"):
        p = _getcwd() + "/" + p
    parts = []
    for part in _str.split(p, "/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    p = "/" + "/".join(parts)
    return p == _root or _str.startswith(p, _root + "/")

def _hook(event, args, _inside=_inside, _str=str, _bytes=bytes, _int=int,
          _isinstance=isinstance, _hasattr=hasattr, _write=os.write, _exit=os._exit,
          _modules=frozenset(("_posixsubprocess", "subprocess", "_ctypes", "ctypes", "_socket",
                              "socket", "ssl", "multiprocessing", "_multiprocessing", "pty",
                              "signal", "_signal", "resource")),
          _always=("socket.", "subprocess.", "os.fork", "os.forkpty", "os.posix_spawn",
                   "os.exec", "os.spawn", "os.system", "os.kill", "os.killpg", "os.putenv",
                   "os.unsetenv", "ctypes.", "pty.", "webbrowser.", "urllib.", "http.",
                   "ftplib.", "smtplib.", "resource.setrlimit", "resource.prlimit",
                   "sys.setrecursionlimit", "os.setuid", "os.chroot"),
          _paths=("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                  "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree",
                  "shutil.move", "shutil.copyfile", "os.replace"),
          _attributes=frozenset(("__code__", "__defaults__", "__kwdefaults__")),
          _write_flags=os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
    what = None
    if event == "import":
        if _str.partition(_str.__str__(args[0]), ".")[0] in _modules:
            what = "import"
    elif event == "open":
        path, mode, flags = args[0], args[1], args[2]
        writing = _isinstance(flags, _int) and flags & _write_flags
        if _isinstance(mode, _str):
            for c in "wax+":
                if _str.find(_str.__str__(mode), c) >= 0:
                    writing = True
        if writing and not _inside(path):
            what = "write outside the working folder"
    elif event == "object.__setattr__":
        if _str.__str__(args[1]) in _attributes:
            what = "replacing " + _str.__str__(args[1])
    elif _str.startswith(event, _always):
        what = event
    elif _str.startswith(event, _paths):
        for a in args:
            if _isinstance(a, (_str, _bytes)) or _hasattr(a, "__fspath__"):
                if not _inside(a):
                    what = event + " outside the working folder"
    if what is not None:
        try:
            _write(2, b"corp-sandbox: blocked " + _str.encode(what, "utf-8", "replace") + b"\n")
        except:
            pass
        _exit(97)
'''

# The `unshare` mode's launcher, run as root (or inside a new user namespace) with argv
# [python-in-sandbox, harness, tmpfs bytes, root mode (0/1), info fd]. It builds the same view as
# the bwrap mode and execs the harness as pid 1 of a new pid namespace; exit 98 = setup failed.
# The harness runs in a user namespace whose max_user_namespaces is 0 (as root: one it enters as
# nobody after building the view), and has no capability there to raise it: no nested user
# namespace, so no tmpfs it mounts itself.
_LAUNCHER = r'''
import ctypes, errno, os, sys
python, harness, tmpfs, as_root = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
info_fd = int(sys.argv[5])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p)
RDONLY, NOSUID, NODEV, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
NEWNS, NEWCGROUP, NEWUTS, NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
NEWUSER, NEWPID, NEWNET = 0x10000000, 0x20000000, 0x40000000
STATVFS_TO_MS = ((os.ST_RDONLY, RDONLY), (os.ST_NOSUID, NOSUID), (os.ST_NODEV, NODEV),
                 (os.ST_NOEXEC, 8), (os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048),
                 (os.ST_RELATIME, 1 << 21))
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}.get(os.uname().machine)

def fail(what):
    os.write(2, ("corp-sandbox: setup failed: %s: %s\n" % (what, os.strerror(ctypes.get_errno())))
             .encode())
    os._exit(98)

def call(ret, what):
    if ret != 0:
        fail(what)

def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    call(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), "mount " + dst)

def write_proc(path, text):  # through the host's /proc, still open after pivot_root
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        ctypes.set_errno(e.errno)
        fail("write /proc/" + path)

def bind_ro(src, dst):
    mount(src, dst, None, BIND | REC)
    keep = 0  # flags the host mount has must be kept (a user namespace cannot clear them)
    for st, ms in STATVFS_TO_MS:
        if os.statvfs(src).f_flag & st:
            keep |= ms
    mount(None, dst, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV | keep)

uid, gid = os.getuid(), os.getgid()
call(libc.unshare(NEWNS | NEWNET | NEWIPC | NEWUTS | NEWPID | NEWCGROUP
                  | (0 if as_root else NEWUSER)), "unshare")
if not as_root:
    for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)),
                       ("gid_map", "%d %d 1" % (gid, gid))):
        with open("/proc/self/" + name, "w") as f:
            f.write(text)
pid = os.fork()
if pid:
    os.write(info_fd, b'{"child-pid": %d}' % pid)  # as bwrap's --info-fd does
    os.close(info_fd)
    while True:
        try:
            status = os.waitpid(pid, 0)[1]
            break
        except InterruptedError:
            continue
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status)
             else 128 + os.WTERMSIG(status))
# pid 1 of the new pid namespace
os.close(info_fd)
proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
mount(None, "/", None, REC | PRIVATE)
new = "/tmp"  # the host /tmp is hidden in this mount namespace: the new root is built over it
mount("tmpfs", new, "tmpfs", NOSUID | NODEV, "size=1048576,mode=0755")
os.mkdir(new + "/usr")
bind_ro("/usr", new + "/usr")
for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
    if os.path.islink("/" + top):
        os.symlink(os.readlink("/" + top), new + "/" + top)
    elif os.path.isdir("/" + top):
        os.mkdir(new + "/" + top)
        bind_ro("/" + top, new + "/" + top)
os.mkdir(new + "/dev")
mount("tmpfs", new + "/dev", "tmpfs", NOSUID, "size=65536,mode=0755")
for dev in ("null", "zero", "full", "random", "urandom"):
    open(new + "/dev/" + dev, "w").close()
    mount("/dev/" + dev, new + "/dev/" + dev, None, BIND)
owner = ",uid=%d,gid=%d" % (65534, 65534) if as_root else ""
for path, mode in (("/dev/shm", "1777"), ("/tmp", "1777"), ("/work", "0700")):
    os.mkdir(new + path)
    mount("tmpfs", new + path, "tmpfs", NOSUID | NODEV,
          "size=%d,mode=%s%s" % (tmpfs, mode, owner if path == "/work" else ""))
mount(None, new + "/dev", None, REMOUNT | BIND | RDONLY | NOSUID)
os.chdir(new)
if PIVOT_ROOT is not None:
    call(libc.syscall(PIVOT_ROOT, b".", b"."), "pivot_root")
    call(libc.umount2(b".", 2), "umount old root")  # MNT_DETACH
else:
    os.chroot(".")
os.chdir("/")
mount(None, "/", None, REMOUNT | BIND | RDONLY | NOSUID | NODEV)
os.chdir("/work")
own_userns = not as_root
if as_root:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    call(libc.prctl(4, 1, 0, 0, 0), "PR_SET_DUMPABLE")  # setuid cleared it: /proc/self is root's
    if libc.unshare(NEWUSER) == 0:  # as nobody: a namespace whose limit is not the host's
        for name, text in (("setgroups", "deny"), ("uid_map", "65534 65534 1"),
                           ("gid_map", "65534 65534 1")):
            write_proc("self/" + name, text)
        own_userns = True
    elif ctypes.get_errno() != errno.EPERM:  # EPERM: this host denies nobody user namespaces,
        fail("unshare user namespace")     # the program's attempts included
if own_userns:  # the capabilities this process holds in it end at execve (uid != 0 there)
    write_proc("sys/user/max_user_namespaces", "0")
os.close(proc)
call(libc.prctl(1, 9, 0, 0, 0), "PR_SET_PDEATHSIG")  # after setuid, which clears it
call(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
os.execve(python, [python, "-I", "-S", "-c", harness], {"PATH": "/usr/bin:/bin"})
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


class SandboxError(RuntimeError):
    """The sandbox failed before the candidate's code ran: nothing was scored."""


@dataclass(frozen=True)
class Confinement:
    """What confines sandboxed programs: `kind` is one of KINDS; `layers` and `lacks` are short
    phrases; str() is the one line corp logs."""
    kind: str
    layers: tuple[str, ...]
    lacks: tuple[str, ...]

    def __str__(self) -> str:
        return (f"code sandbox: {self.kind}: {'; '.join(self.layers)}. Lacks: "
                f"{'; '.join(self.lacks)}.")


# --- tests: "assert EXPR == LITERAL" -> (EXPR source for the child, expected value kept here) ---

def _check_plain(value, test: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            _check_plain(v, test)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, test)
            _check_plain(v, test)
    else:
        raise ValueError(f"test {test!r}: the expected value must be plain data (None, bool, int, "
                         f"float, str, list, tuple, dict, set), not {type(value).__name__}")


@lru_cache(maxsize=4096)
def _parse_test(test: str) -> tuple[str, object]:
    try:
        body = ast.parse(test).body
    except SyntaxError as e:
        raise ValueError(f"test {test!r} is not valid Python: {e}") from None
    node = body[0] if len(body) == 1 else None
    if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)
            and len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.Eq)):
        raise ValueError(f"test {test!r} must be one statement `assert EXPR == LITERAL`")
    try:
        expected = ast.literal_eval(node.test.comparators[0])
    except (ValueError, TypeError, SyntaxError, RecursionError):
        raise ValueError(f"test {test!r}: the right-hand side must be a literal (the sandboxed "
                         f"program never sees it)") from None
    _check_plain(expected, test)
    return ast.unparse(node.test.left), expected


_NOT_A_LEAF = object()


def _leaf(x):
    """A reported None, bool, int, float or str (tagged floats and big ints decoded), else
    _NOT_A_LEAF."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, dict) and len(x) == 1:
        (tag, body), = x.items()
        if isinstance(body, str) and tag in ("float", "int"):
            try:
                return float(body) if tag == "float" else int(body, 16)
            except ValueError:
                pass
    return _NOT_A_LEAF


def _key(x):
    """A reported set element or dict key: a leaf or a tuple of keys (all an expected literal's
    can be), else _NOT_A_LEAF."""
    body = _body(x, "tuple")
    if body is None:
        return _leaf(x)
    items = tuple(_key(v) for v in body)
    return _NOT_A_LEAF if any(v is _NOT_A_LEAF for v in items) else items


def _body(x, tag: str) -> list | None:
    """The list of a reported {tag: [...]} container, else None."""
    if isinstance(x, dict) and len(x) == 1 and isinstance(x.get(tag), list):
        return x[tag]
    return None


def _positions(reported: list, where: dict) -> list[int] | None:
    """The position in `where` (an expected key -> its position) of each reported set element or
    dict key; None if one is missing or two are the same (a set or dict holds a value once)."""
    seen = set()  # small ints: cheap to hash
    out = []
    for x in reported:
        i = where.get(_key(x))  # _NOT_A_LEAF hashes by identity: never found
        if i is None or i in seen:
            return None
        seen.add(i)
        out.append(i)
    return out


def _equal(x, want) -> bool:
    """Does the reported (encoded) value `x` equal the expected value `want`, as `==` would say?
    It follows `want`'s shape and builds a set or dict only of expected values: a report's sets
    and dicts are matched by looking their members up in the expected one, after a length check,
    so colliding hashes cost lookups in a table corp built, not a table the report built."""
    if isinstance(want, list):
        return (isinstance(x, list) and len(x) == len(want)
                and all(_equal(v, w) for v, w in zip(x, want)))
    if isinstance(want, tuple):
        body = _body(x, "tuple")
        return (body is not None and len(body) == len(want)
                and all(_equal(v, w) for v, w in zip(body, want)))
    if isinstance(want, set):
        body = _body(x, "set")
        return (body is not None and len(body) == len(want)
                and _positions(body, {w: i for i, w in enumerate(want)}) is not None)
    if isinstance(want, dict):
        pairs = _body(x, "dict")
        if pairs is None or len(pairs) != len(want) or not all(
                isinstance(p, list) and len(p) == 2 for p in pairs):
            return False
        keys = list(want)
        found = _positions([k for k, _ in pairs], {k: i for i, k in enumerate(keys)})
        return found is not None and all(_equal(v, want[keys[i]])
                                         for (_, v), i in zip(pairs, found))
    value = _leaf(x)
    return value is not _NOT_A_LEAF and value == want


def _score(report: bytes, expected: list) -> int | None:
    """Tests whose reported value equals the expected one; None when the report is unusable."""
    try:
        results = json.loads(report)
        if not (isinstance(results, list) and len(results) == len(expected)):
            return None
        passed = 0
        for entry, want in zip(results, expected):
            if isinstance(entry, dict) and set(entry) == {"value"}:
                passed += _equal(entry["value"], want)
        return passed
    except (ValueError, TypeError, RecursionError, MemoryError):
        return None


# --- confinement modes ---

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


@lru_cache(maxsize=None)
def _system_python() -> str | None:
    """An interpreter under /usr that any user can run: the only one the namespaced modes see."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        real = os.path.realpath(candidate)
        if real.startswith("/usr/") and _world_executable(real):
            return candidate
    return None


def _process_python() -> str:
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if candidate and _world_executable(candidate):
            return candidate
    raise RuntimeError("the code sandbox runs as user nobody when corp runs as root, and no "
                       "Python interpreter is executable by nobody (install python3 from the "
                       "system packages, or run corp as an ordinary user)")


def _top_level_binds(ro_bind: str) -> list[str]:
    args = []
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + top
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += [ro_bind, path, path]
    return args


@lru_cache(maxsize=None)
def _bwrap_supports(option: str) -> bool:
    try:
        help_text = subprocess.run([shutil.which("bwrap") or "bwrap", "--help"],
                                   capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return option in help_text


def _command(kind: str, info_fd: int) -> tuple[list[str], dict, str]:
    """argv, extra Popen arguments and the working folder (as the program sees it) of a mode;
    the namespaced modes write {"child-pid": N} to `info_fd`."""
    as_root = os.geteuid() == 0
    as_nobody = {"user": _NOBODY, "group": _NOBODY, "extra_groups": []} if as_root else {}
    if kind == "process":
        return [_process_python(), "-I", "-S", "-c", _HARNESS], as_nobody, ""
    python = _system_python()
    if python is None:
        raise RuntimeError("no Python interpreter under /usr (e.g. /usr/bin/python3) for the "
                           "namespaced sandbox")
    if kind == "bwrap":
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise RuntimeError("bubblewrap (bwrap) is not installed")
        size = str(_TMPFS_BYTES)
        argv = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr", *_top_level_binds("--ro-bind"),
                # --size binds only the next --tmpfs, and --remount-ro / not /dev: without the
                # second, /dev is a writable tmpfs of half the RAM
                "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
                "--size", size, "--tmpfs", "/tmp", "--size", size, "--perms", "0700",
                "--tmpfs", _WORK,
                "--chdir", _WORK, "--remount-ro", "/", "--info-fd", str(info_fd)]
        if _bwrap_supports("--disable-userns"):
            argv.insert(3, "--disable-userns")
        return argv + ["--", python, "-I", "-S", "-c", _HARNESS], as_nobody, _WORK
    if kind == "unshare":
        argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, python, _HARNESS,
                str(_TMPFS_BYTES), "1" if as_root else "0", str(info_fd)]
        return argv, {}, _WORK
    raise ValueError(f"unknown sandbox kind {kind!r}; one of {KINDS}")


def _tail(fd: int, limit: int) -> bytes:
    """The last `limit` bytes of a file, by pread: the file offset is shared with the child."""
    size = os.fstat(fd).st_size
    return os.pread(fd, min(size, limit), max(0, size - limit))


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _kill(proc: subprocess.Popen, info_fd: int) -> None:
    """SIGKILL a run that is out of time. The pid-namespace modes report the host pid of the
    namespace's pid 1 on `info_fd`; killing it first makes the kernel kill everything in the
    namespace, and bwrap or the launcher exit only once it is reaped, so nothing is left running
    when `proc.wait()` returns. The group kill covers the rest (and runs before pid 1 exists)."""
    try:
        child = int(json.loads(os.pread(info_fd, 4096, 0))["child-pid"])
    except (ValueError, KeyError, TypeError):
        child = None
    if child is not None and _parent(child) == proc.pid:  # never a pid the info fd made up
        try:
            os.kill(child, signal.SIGKILL)
            proc.wait(timeout=_REAP_SECONDS)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    for kill in (os.killpg, os.kill):  # the group, and the leader if it left it
        try:
            kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _not_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0) on corp, before a process-mode program runs as corp's own uid:
    otherwise it can read (and write) corp's memory through /proc/<ppid>/mem, or ptrace it. Only
    that mode, the one an ordinary user must ask for by name, pays the side effects, for the rest
    of the process: no core dumps of corp, no debugger or py-spy of the same uid attaching to it,
    and its /proc/<pid> files owned by root (corp itself keeps access to /proc/self). Set back
    after each run it would have to count the runs of every thread in flight, to gain little
    where every candidate runs this way."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


@dataclass(frozen=True)
class _Outcome:
    status: str         # "exited" or "timeout"
    report: bytes
    exit_code: int | None
    stderr: str         # the last _STDERR_TAIL bytes
    started: bool       # the harness wrote its marker: the candidate's code ran


def _run(kind: str, code: str, calls: list[str], timeout: float, memory_mb: int,
         audit: bool) -> _Outcome:
    """Run the harness in mode `kind`."""
    holder = None
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, \
            tempfile.TemporaryFile() as stderr, tempfile.TemporaryFile() as report, \
            tempfile.TemporaryFile() as info, tempfile.TemporaryFile() as started:
        argv, extra, root = _command(kind, info.fileno())
        try:
            if not root:  # process mode: a host folder, inside a 0711 folder of corp's, so that
                holder = tempfile.mkdtemp(prefix="corp-sandbox-")  # it cannot be renamed away
                os.chmod(holder, 0o711)
                root = os.path.join(holder, "work")
                os.mkdir(root, 0o700)
                if os.geteuid() == 0:
                    os.chown(root, _NOBODY, _NOBODY)
                else:
                    _not_dumpable()
            stdin.write(json.dumps({
                "code": code, "calls": calls, "report_fd": report.fileno(),
                "started_fd": started.fileno(), "root": root, "audit": audit, "hook": _HOOK,
                "cpu": int(math.ceil(timeout)) + 1, "memory": memory_mb << 20,
                "fsize": _OUTPUT_BYTES, "nofile": _OPEN_FILES,
            }).encode())
            stdin.flush()
            stdin.seek(0)
            proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr,
                                    pass_fds=(report.fileno(), info.fileno(), started.fileno()),
                                    cwd=root if holder else "/", env={"PATH": _PATH},
                                    start_new_session=True, **extra)
            try:
                proc.wait(timeout=timeout)
                status = "exited"
            except subprocess.TimeoutExpired:
                status = "timeout"
                _kill(proc, info.fileno())
            size = os.fstat(report.fileno()).st_size
            return _Outcome(status, os.pread(report.fileno(), min(size, _OUTPUT_BYTES + 1), 0),
                            proc.returncode,
                            _tail(stderr.fileno(), _STDERR_TAIL).decode(errors="replace"),
                            os.pread(started.fileno(), len(_STARTED) + 1, 0) == _STARTED)
        finally:
            if holder:
                shutil.rmtree(holder, ignore_errors=True)


def _did_not_start(kind: str, run: _Outcome) -> str:
    how = "timed out" if run.status == "timeout" else f"exit {run.exit_code}"
    return (f"code sandbox {kind!r} failed before the program ran ({how}): "
            f"{run.stderr.strip()[-_STDERR_TAIL:] or '(no stderr)'}")


@lru_cache(maxsize=None)
def _works(kind: str) -> str:
    """'' if mode `kind` runs a trivial program correctly here, else why not."""
    try:
        run = _run(kind, "x = 41 + 1", ["x"], 20.0, 256, True)
    except (RuntimeError, OSError) as e:
        return str(e)
    if not run.started:
        return _did_not_start(kind, run)
    if _score(run.report, [42]) == 1:
        return ""
    return (f"a trivial program did not run ({run.status}, exit {run.exit_code}): "
            f"{run.stderr.strip()[-300:]}")


@lru_cache(maxsize=None)
def _chosen(requested: str | None) -> str:
    requested = requested or os.environ.get("CORP_SANDBOX") or None
    if requested is not None:
        if requested not in KINDS:
            raise ValueError(f"CORP_SANDBOX / confinement must be one of {KINDS}, not "
                             f"{requested!r}")
        why = _works(requested)
        if why:
            raise RuntimeError(f"code sandbox {requested!r} was asked for and is not available "
                               f"here: {why}")
        return requested
    for kind in KINDS[:-1]:
        if not _works(kind):
            return kind
    if os.geteuid() != 0:
        why = "; ".join(f"{kind}: {_works(kind)}" for kind in KINDS[:-1])
        raise RuntimeError(
            f"no namespaced code sandbox works here ({why}). The fallback, process mode, would "
            f"run generated code as your own user (uid {os.getuid()}): it could read and change "
            f"your files, the repository included, and signal corp. Install bubblewrap "
            f"(apt-get install bubblewrap) or allow unprivileged user namespaces (sysctl "
            f"user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1, on Ubuntu "
            f"kernel.apparmor_restrict_unprivileged_userns=0), or set CORP_SANDBOX=process to "
            f"accept that")
    return "process"


def available_kinds() -> list[str]:
    """The modes that work on this machine (tests run each)."""
    return [kind for kind in KINDS if not _works(kind)]


def confinement(kind: str | None = None) -> Confinement:
    """What confines sandboxed programs here (`kind`: describe that mode, checking it works)."""
    kind = _chosen(kind)
    as_root = os.geteuid() == 0
    user = ("user nobody (uid 65534)" if as_root
            else f"the invoking user (uid {os.getuid()}), no other privileges")
    limits = (f"rlimits: CPU, {_OUTPUT_BYTES >> 20} MiB per file (stdout/stderr are files), "
              f"address space, {_OPEN_FILES} open files, no new processes")
    hook = "audit hook (second layer)"
    if kind == "process":
        if as_root:
            return Confinement(kind, (f"separate process as {user}", limits, hook), (
                "mount namespace: the program sees and can write what its user can (e.g. /tmp)",
                "network namespace (the audit hook alone blocks sockets)", "pid namespace",
                "no-new-privileges", "install bubblewrap"))
        return Confinement(kind, (
            f"separate process as {user}", "corp not dumpable (its memory closed to /proc)",
            limits, hook), (
            "a uid of its own (same uid as corp: it can read and write that user's files, the "
            "repository included, and signal corp)",
            "mount namespace: the program sees and can write what its user can (e.g. /tmp)",
            "network namespace (the audit hook alone blocks sockets)", "pid namespace",
            "no-new-privileges", "install bubblewrap or allow unprivileged user namespaces"))
    view = (f"private mount namespace: read-only /usr and /dev (minimal), private "
            f"{_TMPFS_BYTES >> 20} MiB tmpfs /tmp, /dev/shm and {_WORK}; no /proc, /etc, /home")
    how = ("bubblewrap" if kind == "bwrap" else
           "unshare(2) as root" if as_root else "unshare(2) in a user namespace")
    layers = [f"{how}, as {user}", view, "empty network namespace",
              "pid, ipc, uts, cgroup namespaces", "no-new-privileges", limits, hook]
    lacks = ["seccomp filter (full system-call surface)",
             f"cgroup limits (memory is per-process RLIMIT_AS plus up to "
             f"{3 * _TMPFS_BYTES >> 20} MiB tmpfs)", "/usr is readable"]
    if kind == "unshare" or _bwrap_supports("--disable-userns"):
        layers.insert(4, "no nested user namespaces")
    else:
        lacks.append("a bar on nested user namespaces (bwrap older than 0.8: the program can "
                     "mount a tmpfs of any size)")
    return Confinement(kind, tuple(layers), tuple(lacks))


@lru_cache(maxsize=None)
def _announce(kind: str) -> None:
    description = confinement(kind)
    (log.warning if kind == "process" else log.info)("%s", description)


def run_tests(code: str, tests: list[str], timeout: float = 3.0, memory_mb: int = 512,
              audit: bool = True, confinement: str | None = None) -> SandboxResult:
    """Run `code` in the sandbox and score it against `tests`, each "assert EXPR == LITERAL"
    (e.g. "assert f(2) == 4"): the program evaluates EXPR, this process compares the value with
    LITERAL. `timeout` is wall-clock seconds for the whole run. `audit=False` turns off the
    Python audit hook (tests use it to show the OS confinement holds on its own); `confinement`
    asks for one of KINDS (default: the strongest that works, or $CORP_SANDBOX). Raises
    SandboxError when the sandbox fails before the program runs."""
    if not tests:
        raise ValueError("run_tests needs at least one test")
    parsed = [_parse_test(t) for t in tests]
    kind = _chosen(confinement)
    _announce(kind)
    run = _run(kind, code, [expr for expr, _ in parsed], timeout, memory_mb, audit)
    if not run.started:  # the candidate never ran: not a score (see the module docstring)
        raise SandboxError(_did_not_start(kind, run))
    n, err = len(tests), run.stderr
    if run.status == "timeout":
        return SandboxResult(0, n, "timeout", err)
    if run.exit_code == BLOCKED_EXIT:
        return SandboxResult(0, n, "blocked", err)
    passed = _score(run.report, [want for _, want in parsed])
    if passed is None:
        return SandboxResult(0, n, "crashed" if run.exit_code else "no-result", err)
    return SandboxResult(passed, n, "ok", err)
