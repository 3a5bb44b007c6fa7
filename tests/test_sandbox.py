"""The code sandbox: hostile programs score 0, forged results earn nothing, and the host is left as
it was.

Forgeries run in every confinement mode that works here (the protocol does not depend on the
mode); escapes run in the namespaced modes (`process` mode has no mount or network namespace, and
says so). An escape probe earns its reward only by reaching the host -- its function returns a
secret planted in the host's /tmp or /dev/shm, or reads the repository -- so "scores 0" means it
did not reach the host, and "no trace" that nothing it wrote is left outside.
"""

import dis
import glob
import json
import os
import secrets
import shutil
import socket
import types
import subprocess
import sys
import time

import pytest

from corp.tasks import sandbox
from corp.tasks.sandbox import run_tests

TESTS = ["assert f(1) == 2", "assert f(5) == 6"]
NAMESPACED = ("bwrap", "unshare")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORP_PEAK_MIB = 100  # corp's own peak-memory growth over a flooding program


def _usable(kind):
    try:
        sandbox.confinement(kind)
    except RuntimeError as e:
        pytest.skip(str(e))
    return kind


@pytest.fixture(params=sandbox.KINDS)
def kind(request):
    return _usable(request.param)


@pytest.fixture(params=NAMESPACED)
def namespaced(request):
    return _usable(request.param)


class Host:
    """A secret planted where only a program that reaches the host can read it, and the paths a
    probe may leave behind."""

    def __init__(self):
        self.token, self.secret = secrets.token_hex(6), secrets.token_hex(8)
        self.markers = [f"{d}/corp-marker-{self.token}" for d in ("/tmp", "/dev/shm")]
        for path in self.markers:
            with open(path, "w") as f:
                f.write(self.secret)
            os.chmod(path, 0o644)
        self.tests = [f"assert f(1) == {self.secret!r}"]

    def traces(self):
        return [path for d in ("/tmp", "/dev/shm")
                for path in glob.glob(f"{d}/corp-escape-{self.token}*")]

    def clean(self):
        for path in self.traces() + self.markers:
            os.remove(path)


@pytest.fixture
def host():
    planted = Host()
    yield planted
    planted.clean()


# --- the reward protocol ---

def test_correct_and_partly_correct_code(kind):
    assert run_tests("def f(x):\n    return x + 1", TESTS, confinement=kind).fraction == 1.0
    half = run_tests("def f(x):\n    return 2 if x == 1 else 0", TESTS, confinement=kind)
    assert (half.passed, half.total, half.status) == (1, 2, "ok")
    assert run_tests("def f(x) return", TESTS, confinement=kind).fraction == 0.0  # syntax error


def test_the_parent_compares_plain_values():
    code = ("import collections\ndef f(x):\n    return {'t': (x, [x]), 's': {x}, 'n': None, "
            "'c': collections.Counter('aab'), 'inf': float('inf')}")
    value = "{'t': (1, [1]), 's': {1}, 'n': None, 'c': {'a': 2, 'b': 1}, 'inf': %s}"
    tests = ["assert f(1) == " + value % "1e999",
             "assert f(1) == " + value.replace("(1, [1])", "[1, [1]]") % "1e999",  # list != tuple
             "assert f(2.0) == {'t': (2, [2]), 's': {2}, 'n': None, 'c': {'a': 2, 'b': 1}, "
             "'inf': 1e999}",  # 2.0 == 2, as in Python
             "assert g() == 0"]  # g returns an object: not reportable, fails
    result = run_tests(code + "\nclass Zero:\n    pass\ndef g():\n    return Zero()", tests)
    assert (result.passed, result.status) == (2, "ok")


@pytest.mark.parametrize("test", ["assert not f(1)", "assert f(1) == g(2)",
                                  "assert f(1) == b'x'", "x = f(1)", "assert f(1) == 2; y = 1"])
def test_tests_must_compare_with_a_literal(test):
    with pytest.raises(ValueError, match="assert"):
        run_tests("def f(x):\n    return x", [test])


FORGERIES = {
    "nonce pass line, early exit": (
        "import __main__, os, sys\n"
        "sys.stdout.write('\\n' + getattr(__main__, 'nonce', '') + '[true, true]\\n')\n"
        "sys.stdout.flush()\nos._exit(0)"),
    "lookup table from the harness's tests": (
        "import gc, ast\ntable = {}\nfor obj in gc.get_objects():\n"
        "    if isinstance(obj, list):\n        for item in obj:\n"
        "            if isinstance(item, str) and item.startswith('assert f(') \\\n"
        "                    and ') ==' in item:\n"
        "                left, right = item[len('assert f('):].split(') ==')\n"
        "                table[ast.literal_eval(left)] = ast.literal_eval(right.strip())\n"
        "def f(x):\n    return table[x]"),
    "object equal to everything": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "def f(x):\n    return Anything()"),
    "patched harness": (
        "import __main__, json\nclass Yes(list):\n    def append(self, v):\n"
        "        list.append(self, True)\n__main__.results = Yes()\n"
        "__main__._encode = lambda v, depth=0: True\n"
        "json.dumps = lambda *a, **k: '[true, true]'"),
    "passing report on every fd": (
        "import os\nfor fd in range(1, 20):\n    try:\n"
        "        os.write(fd, b'[{\"value\": true}, {\"value\": true}]')\n"
        "    except OSError:\n        pass\nos._exit(0)"),
}


@pytest.mark.parametrize("name", FORGERIES)
def test_a_forged_result_earns_nothing(kind, name):
    # None of these defines a working f; today's nonce protocol paid 1.0 for the first four.
    assert run_tests(FORGERIES[name], TESTS, confinement=kind).fraction == 0.0


# --- escapes: kernel confinement ---

ESCAPES = {
    "dir_fd write into /tmp": (
        "import os\nd = os.open('/tmp', os.O_RDONLY)\n"
        "fd = os.open('corp-escape-{token}-dirfd', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d)\n"
        "os.write(fd, b'pwned')\nsecret = open('/tmp/corp-marker-{token}').read()\n", True),
    "dir_fd write into /dev/shm": (
        "import os\nd = os.open('/dev/shm', os.O_RDONLY)\n"
        "fd = os.open('corp-escape-{token}-shm', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d)\n"
        "os.write(fd, b'pwned')\nsecret = open('/dev/shm/corp-marker-{token}').read()\n", True),
    "policy globals rebound, then ctypes": (
        "import __main__\n__main__._MODULES = set()\n__main__._ALWAYS = ('never',)\n"
        "__main__.root = ''\nimport ctypes\n"
        "open('/tmp/corp-escape-{token}-policy', 'w').write('pwned')\n"
        "secret = open('/tmp/corp-marker-{token}').read()\n", True),
    "hook code swapped through gc, then ctypes": (
        "import gc\nfor o in gc.get_objects():\n"
        "    if type(o).__name__ == 'function' and o.__name__ == '_hook':\n"
        "        o.__code__ = (lambda event, args, *rest, **kw: None).__code__\n"
        "import ctypes\nopen('/tmp/corp-escape-{token}-gc', 'w').write('pwned')\n"
        "secret = open('/tmp/corp-marker-{token}').read()\n", True),
    "hook defaults swapped through gc": (
        "import gc\nfor o in gc.get_objects():\n"
        "    if type(o).__name__ == 'function' and o.__name__ == '_inside':\n"
        "        o.__defaults__ = ('',) + o.__defaults__[1:]\n"
        "open('/tmp/corp-escape-{token}-defaults', 'w').write('pwned')\n"
        "secret = open('/tmp/corp-marker-{token}').read()\n", True),
    "hook off: plain write into /tmp": (
        "open('/tmp/corp-escape-{token}-nohook', 'w').write('pwned')\n"
        "secret = open('/tmp/corp-marker-{token}').read()\n", False),
    "hook off: 24 MiB into /tmp": (
        "try:\n    for i in range(24):\n"
        "        with open('/tmp/corp-escape-{token}-fill%d' % i, 'wb') as out:\n"
        "            out.write(b'x' * ((1 << 20) - 1))\nexcept OSError:\n    pass\n"
        "secret = open('/tmp/corp-marker-{token}').read()\n", False),
}


@pytest.mark.parametrize("name", ESCAPES)
def test_an_escape_scores_0_and_leaves_no_trace(namespaced, host, name):
    code, audit = ESCAPES[name]
    code = code.format(token=host.token) + "def f(x):\n    return secret"
    result = run_tests(code, host.tests, audit=audit, confinement=namespaced)
    assert result.fraction == 0.0, result
    assert host.traces() == []


def test_the_program_sees_neither_the_repository_nor_corp(namespaced):
    # The repository holds the reference solutions; /proc would show corp's command line.
    code = (f"import os\nsource = os.path.exists({REPO!r} + '/corp/tasks/coding.py')\n"
            f"proc = os.path.exists('/proc/{os.getpid()}/cmdline')\n"
            f"etc = os.path.exists('/etc/passwd')\ndef f(x):\n    return [source, proc, etc]")
    assert run_tests(code, ["assert f(1) == [False, False, False]"], audit=False,
                     confinement=namespaced).fraction == 1.0


def test_the_program_is_unprivileged(namespaced):
    uid = 65534 if os.geteuid() == 0 else os.getuid()
    code = ("import ctypes, os\nno_new_privs = ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)\n"
            "def f(x):\n    return [os.getuid(), no_new_privs]")
    result = run_tests(code, [f"assert f(1) == [{uid}, 1]"], audit=False, confinement=namespaced)
    assert (result.passed, result.status) == (1, "ok")


# --- resources ---

def test_infinite_loop_times_out():
    t = time.time()
    result = run_tests("def f(x):\n    while True:\n        pass", TESTS, timeout=1.0)
    assert (result.fraction, result.status) == (0.0, "timeout")
    assert time.time() - t < 5


def test_fork_bomb_is_stopped():
    bomb = "import os\ndef f(x):\n    while True:\n        os.fork()\n    return x + 1\nf(0)"
    result = run_tests(bomb, TESTS)
    assert (result.fraction, result.status) == (0.0, "blocked")
    spawn = "import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])"
    assert run_tests(spawn, TESTS).status == "blocked"


def test_huge_allocation_fails_inside_the_child():
    result = run_tests("def f(x):\n    block = bytearray(16 << 30)\n    return x + 1", TESTS,
                       memory_mb=256)
    assert result.fraction == 0.0 and result.status == "ok"  # MemoryError in every test


_FLOOD_CHILD = r"""
import importlib.util, json, resource, sys, time
spec = importlib.util.spec_from_file_location("corp_sandbox_under_test", sys.argv[1])
sandbox = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sandbox
spec.loader.exec_module(sandbox)
kind = {"confinement": sys.argv[3]} if sys.argv[3] != "default" else {}
sandbox.run_tests("def f(x):\n    return x + 1", ["assert f(1) == 2"], **kind)  # warm up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
flood = ("import os\nchunk = b'x' * 65536\nwhile True:\n    try:\n        os.write(2, chunk)\n"
         "    except OSError:\n        pass\n")
start = time.time()
result = sandbox.run_tests(flood, ["assert f(1) == 2"], timeout=float(sys.argv[2]), **kind)
print(json.dumps({"status": result.status, "wall": time.time() - start,
                  "grew_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


@pytest.mark.parametrize("confinement", ["default", *sandbox.KINDS])
def test_a_stderr_flood_keeps_corp_small_and_the_timeout_wall_clock(confinement):
    # Today's code buffered the whole stderr pipe: corp grew by 4.2 GiB and a 3 s timeout took 20 s.
    if confinement != "default":
        _usable(confinement)
    timeout = 3.0 if confinement == "default" else 1.0
    out = subprocess.run([sys.executable, "-c", _FLOOD_CHILD, sandbox.__file__, str(timeout),
                          confinement], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.splitlines()[-1])
    assert measured["status"] == "timeout"
    assert measured["grew_mib"] < CORP_PEAK_MIB, measured
    assert measured["wall"] < timeout + 1.5, measured


def test_nothing_outlives_a_timeout(kind):
    # The program swaps itself for a sleeping interpreter in a new session (hook off).
    token = secrets.token_hex(6)
    code = (f"import os\ntry:\n    os.setsid()\nexcept OSError:\n    pass\n"
            f"os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(60)', "
            f"'{token}'])")
    assert run_tests(code, TESTS, timeout=1.0, audit=False, confinement=kind).status == "timeout"
    left = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                if token.encode() in f.read():
                    left.append(cmdline)
        except OSError:
            pass
    assert left == []


# --- the audit hook (second layer) ---

def test_write_outside_the_sandbox_is_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    code = (f"def f(x):\n    open({str(target)!r}, 'w').write('pwned')\n    return x + 1\n"
            f"f(0)")
    result = run_tests(code, TESTS)
    assert (result.fraction, result.status) == (0.0, "blocked")
    assert not target.exists()
    inside = "open('scratch.txt', 'w').write('ok')\ndef f(x):\n    return x + 1"
    assert run_tests(inside, TESTS).fraction == 1.0  # its own folder is writable
    remove = f"import os\nos.remove({str(tmp_path)!r})"
    assert run_tests(remove, TESTS).status == "blocked" and tmp_path.exists()


def test_the_hook_reads_nothing_a_program_can_rebind():
    # No global, builtin or closure lookups at call time: all it uses is bound as defaults.
    scope = {"os": os, "ROOT": "/work"}
    exec(sandbox._HOOK, scope)
    for name in ("_hook", "_inside"):
        loads = {i.opname for i in dis.get_instructions(scope[name])}
        assert not loads & {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF"}, name


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


def _connect_code(port):
    return (f"import socket\ndef f(x):\n    socket.create_connection(('127.0.0.1', {port}), "
            f"timeout=1)\n    return x + 1\n")


def test_network_call_is_blocked(listener):
    result = run_tests(_connect_code(listener.getsockname()[1]), TESTS)
    assert (result.fraction, result.status) == (0.0, "blocked")
    with pytest.raises(socket.timeout):
        listener.accept()


# --- the kernel on its own (hook off) ---

def test_without_the_hook_fork_still_fails(kind):
    code = ("import os\ntry:\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n"
            "    forked = True\nexcept OSError:\n    forked = False\ndef f(x):\n    return forked")
    assert run_tests(code, ["assert f(1) == False"], audit=False,
                     confinement=kind).fraction == 1.0


def test_without_the_hook_the_network_is_unreachable(namespaced, listener):
    code = _connect_code(listener.getsockname()[1]) + "f(0)\n"
    result = run_tests(code, TESTS, audit=False, confinement=namespaced)
    assert result.fraction == 0.0
    with pytest.raises(socket.timeout):
        listener.accept()


# --- what corp says about it ---

def test_confinement_is_described_and_logged_once(caplog):
    description = sandbox.confinement()
    assert description.kind in sandbox.KINDS and str(description).startswith("code sandbox: ")
    assert "\n" not in str(description)
    if description.kind in NAMESPACED:
        assert any("network namespace" in layer for layer in description.layers)
        assert any("mount namespace" in layer for layer in description.layers)
    assert any("mount namespace" in lack for lack in sandbox.confinement("process").lacks)
    sandbox._announce.cache_clear()
    with caplog.at_level("INFO", logger="corp"):
        run_tests("def f(x):\n    return x + 1", TESTS)
        run_tests("def f(x):\n    return x + 1", TESTS)
    assert [r.getMessage() for r in caplog.records] == [str(description)]


# --- review findings (issue 13, part 2) ---

@pytest.fixture
def fresh_choice(monkeypatch):
    """`_chosen` recomputed under this test's patches, and forgotten afterwards."""
    monkeypatch.delenv("CORP_SANDBOX", raising=False)
    sandbox._chosen.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    sandbox._chosen.cache_clear()


def test_a_non_root_user_never_falls_back_to_process_mode_silently(fresh_choice):
    # As uid 1000 the program would share corp's uid: read its files and memory, signal it.
    fresh_choice.setattr(sandbox, "_works", lambda kind: "" if kind == "process" else "blocked")
    fresh_choice.setattr(sandbox.os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="CORP_SANDBOX=process"):
        sandbox._chosen(None)
    assert sandbox._chosen("process") == "process"  # asked for by name
    fresh_choice.setenv("CORP_SANDBOX", "process")
    sandbox._chosen.cache_clear()
    assert sandbox._chosen(None) == "process"
    assert any("same uid as corp" in lack for lack in sandbox.confinement("process").lacks)
    fresh_choice.delenv("CORP_SANDBOX")
    fresh_choice.setattr(sandbox.os, "geteuid", lambda: 0)  # as root it runs as nobody: allowed
    sandbox._chosen.cache_clear()
    assert sandbox._chosen(None) == "process"


# Reads corp's memory through /proc/<ppid>/mem and returns the expected value it finds there.
_MEMORY_READER = r"""
import os, re
found = None
try:
    with open('/proc/%d/maps' % os.getppid()) as maps, \
            open('/proc/%d/mem' % os.getppid(), 'rb', 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if 'rw' not in perms:
                continue
            lo, hi = (int(a, 16) for a in span.split('-'))
            try:
                mem.seek(lo)
                hit = re.search(rb"assert f\(1\) == '([0-9a-f]{16})'", mem.read(hi - lo))
            except OSError:
                continue
            if hit:
                found = hit.group(1).decode()
                break
except OSError:
    pass
def f(x):
    return found
"""

_MEMORY_CHILD = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("corp_sandbox_under_test", sys.argv[1])
sandbox = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sandbox
spec.loader.exec_module(sandbox)
secret = sys.stdin.read().strip()  # not in argv: /proc/<pid>/cmdline is readable by anyone
result = sandbox.run_tests(sys.argv[2], ["assert f(1) == %r" % secret], confinement="process")
print(json.dumps([result.passed, result.status]))
"""


def test_process_mode_as_an_ordinary_user_cannot_read_corps_memory():
    # Before: the program found the expected value in corp's memory and scored 1.
    if os.geteuid() == 0:  # play the ordinary user as nobody
        python, as_user = sandbox._system_python(), {"user": 65534, "group": 65534,
                                                      "extra_groups": []}
        if python is None or not os.stat(sandbox.__file__).st_mode & 0o004:
            pytest.skip("nobody cannot run a system python on the sandbox module here")
    else:
        python, as_user = sys.executable, {}
    out = subprocess.run([python, "-I", "-c", _MEMORY_CHILD, sandbox.__file__, _MEMORY_READER],
                         input=secrets.token_hex(8), capture_output=True, text=True,
                         timeout=120, cwd="/", **as_user)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [0, "ok"]


def test_dev_is_read_only_and_dev_shm_small(namespaced):
    # bwrap's /dev was a writable tmpfs of half the RAM: GiBs through dir_fd (hook off).
    code = ("import errno, os\nd = os.open('/dev', os.O_RDONLY)\ntry:\n"
            "    os.close(os.open('zz', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d))\n"
            "    dev = 'created'\nexcept OSError as e:\n    dev = errno.errorcode[e.errno]\n"
            "with open('/dev/shm/x', 'w') as out:\n    out.write('ok')\n"
            "with open('/dev/null', 'w') as out:\n    out.write('gone')\n"
            "s = os.statvfs('/dev/shm')\n"
            "def f(x):\n    return [dev, open('/dev/shm/x').read(), s.f_blocks * s.f_frsize]")
    result = run_tests(code, [f"assert f(1) == ['EROFS', 'ok', {sandbox._TMPFS_BYTES}]"],
                       audit=False, confinement=namespaced)
    assert (result.passed, result.status) == (1, "ok"), result


def test_no_nested_user_namespace(namespaced):
    # A nested user namespace would let the program mount another tmpfs as big as it likes.
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "nested = libc.unshare(0x10000000 | 0x20000)\n"  # CLONE_NEWUSER | CLONE_NEWNS
            "mounted = libc.mount(b'none', b'/work', b'tmpfs', 0, None)\n"
            "def f(x):\n    return [nested, mounted]")
    result = run_tests(code, ["assert f(1) == [-1, -1]"], audit=False, confinement=namespaced)
    assert (result.passed, result.status) == (1, "ok"), result


_MERSENNE = (1 << 61) - 1  # ints k * (2**61 - 1) all hash to 0
_COLLIDING = [_MERSENNE * k for k in range(1, 38000)]


@pytest.mark.parametrize("tag, expected", [
    ("set", 0), ("set", {1, 2}), ("set", set(range(len(_COLLIDING)))),
    ("dict", {1: 0}), ("dict", dict.fromkeys(range(len(_COLLIDING)), 0))],
    ids=["set-vs-int", "set-vs-short-set", "set-vs-set", "dict-vs-short-dict", "dict-vs-dict"])
def test_a_report_of_colliding_hashes_costs_corp_little(tag, expected):
    # 950 KB of such a set took 13-20 s of corp's CPU to decode, outside the program's timeout.
    body = _COLLIDING if tag == "set" else [[k, 0] for k in _COLLIDING]
    report = json.dumps([{"value": {tag: body}}]).encode()
    start = time.process_time()
    assert sandbox._score(report, [expected]) == 0
    assert time.process_time() - start < 2.0


@pytest.mark.parametrize("value, expected, equal", [
    ({"set": [1, {"float": "2.0"}, "a"]}, {True, 2, "a"}, True),  # equality as in Python
    ({"set": [1, 1.0]}, {1, 2}, False),  # a duplicate is not the missing element
    ({"set": [[1], 2]}, {1, 2}, False),  # unhashable
    ({"set": [{"set": [1]}]}, {1}, False),  # a frozenset never equals a literal
    ({"dict": [[{"tuple": [1, "a"]}, [1]]]}, {(1, "a"): [1]}, True),
    ({"dict": [[1, 2], [1.0, 2]]}, {1: 2, 2: 2}, False),
    ({"dict": [[1, 2]]}, {1: 3}, False),
    ({"tuple": [1, [2]]}, (1, [2]), True), ([1, [2]], (1, [2]), False),
    ({"int": format(-(1 << 5000) + 7, "x")}, -(1 << 5000) + 7, True),
    ({"float": "inf"}, float("inf"), True), ({"what": 1}, 1, False), (None, None, True)],
    ids=["numeric-equality", "duplicate", "unhashable", "frozenset", "tuple-key", "duplicate-key",
         "dict-value", "tuple", "list-is-not-tuple", "big-int", "inf", "unknown-tag", "none"])
def test_the_parent_compares_reports_as_python_would(value, expected, equal):
    assert sandbox._score(json.dumps([{"value": value}]).encode(), [expected]) == equal


def test_a_sandbox_that_fails_to_start_raises(kind, monkeypatch):
    # Before: 'crashed' or 'setup-failed' with reward 0, which the code task cached.
    monkeypatch.setattr(sandbox, "_OPEN_FILES", 1 << 40)  # the harness's setrlimit fails
    with pytest.raises(sandbox.SandboxError, match=f"(?s)'{kind}' failed before.*limit"):
        run_tests("def f(x):\n    return x + 1", TESTS, confinement=kind)


def test_a_sandbox_that_cannot_be_built_raises(namespaced, monkeypatch):
    if namespaced == "bwrap":
        binds = sandbox._top_level_binds
        monkeypatch.setattr(sandbox, "_top_level_binds",
                            lambda ro: binds(ro) + [ro, "/nonexistent-corp-test", "/x"])
    else:
        monkeypatch.setattr(sandbox, "_TMPFS_BYTES", -5)  # the launcher's mount fails
    with pytest.raises(sandbox.SandboxError, match=namespaced):
        run_tests("def f(x):\n    return x + 1", TESTS, confinement=namespaced)


def test_a_program_cannot_pose_as_a_sandbox_failure(kind):
    # Exit 98 was 'setup-failed'; the program also tries to unwrite the harness's marker.
    code = ("import os\nfor fd in range(3, 64):\n    try:\n        os.ftruncate(fd, 0)\n"
            "    except OSError:\n        pass\n"
            "os.write(2, b'corp-sandbox: setup failed: mount /tmp: Permission denied\\n')\n"
            "os._exit(98)")
    result = run_tests(code, TESTS, audit=False, confinement=kind)
    assert (result.passed, result.status) == (0, "crashed")


@pytest.mark.skipif(os.geteuid() != 0, reason="process mode runs the program as nobody as root")
def test_process_mode_working_folder_cannot_be_moved_away():
    token = secrets.token_hex(6)
    code = (f"import os\ntry:\n    os.rename(os.getcwd(), '/tmp/corp-escape-{token}')\n"
            f"    moved = True\nexcept OSError:\n    moved = False\n"
            f"def f(x):\n    return moved")
    try:
        result = run_tests(code, ["assert f(1) == False"], audit=False, confinement="process")
        assert (result.passed, glob.glob(f"/tmp/corp-escape-{token}*")) == (1, [])
    finally:
        for path in glob.glob(f"/tmp/corp-escape-{token}*"):
            shutil.rmtree(path)


def test_an_int_of_more_than_4300_digits_is_reported(kind):
    # json.dumps refuses such an int; corp's own parser would too (it keeps Python's limit).
    big = (1 << 16000) - 1  # 4817 digits, written in hex (a decimal literal would not parse)
    tests = [f"assert f(1) == {big:#x}", f"assert f(-1) == -{big:#x}",
             f"assert g() == {{{big:#x}: [{big:#x}]}}"]
    code = "def f(x):\n    return x * ((1 << 16000) - 1)\ndef g():\n    return {f(1): [f(1)]}"
    result = run_tests(code, tests, confinement=kind)
    assert (result.passed, result.status) == (3, "ok"), result


class _Blocked(Exception):
    pass


def _hook_here(cwd="/work"):
    """The audit hook exec'd in this process, with an `os` whose _exit raises instead of exiting,
    so that every write path can be asked about directly (the OS layer is tested above)."""
    def _exit(code):
        raise _Blocked(code)
    fake_os = types.SimpleNamespace(
        fspath=os.fspath, getcwd=lambda: cwd, write=lambda fd, data: None, _exit=_exit,
        **{flag: getattr(os, flag) for flag in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND",
                                                 "O_TRUNC")})
    scope = {"os": fake_os, "ROOT": "/work"}
    exec(sandbox._HOOK, scope)

    def blocked(event, *args):
        try:
            scope["_hook"](event, args)
        except _Blocked:
            return True
        return False
    return blocked


@pytest.mark.parametrize("mode", ["w", "wb", "a", "ab", "x", "r+", "rb+", "w+"])
def test_the_hook_blocks_every_writing_open_mode_outside(mode):
    blocked = _hook_here()
    assert blocked("open", "/etc/passwd", mode, 0)
    assert not blocked("open", "/work/out.txt", mode, 0)


@pytest.mark.parametrize("flag", ["O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"])
def test_the_hook_blocks_every_writing_os_open_flag_outside(flag):
    blocked = _hook_here()
    assert blocked("open", "/etc/passwd", None, getattr(os, flag))
    assert not blocked("open", "/work/out.txt", None, getattr(os, flag))
    assert not blocked("open", "/etc/passwd", None, os.O_RDONLY)  # reading is the OS's business
    assert not blocked("open", "/etc/passwd", "r", 0)


@pytest.mark.parametrize("path", ["/workshop/x", "/work2", "/work/../etc/x", "../etc/x",
                                  "/work/./../work2/x", b"/tmp/x", "/"])
def test_the_hook_judges_the_path_not_its_spelling(path):
    blocked = _hook_here()
    assert blocked("open", path, "w", 0)  # a sibling with the same prefix, or `..`, is outside
    assert blocked("os.remove", path)


@pytest.mark.parametrize("path", ["/work", "/work/a/b", "a/b", "./a", "a/../b", b"/work/x"])
def test_the_hook_allows_the_working_folder(path):
    blocked = _hook_here()
    assert not blocked("open", path, "w", 0) and not blocked("os.remove", path)


def test_the_hook_blocks_links_and_renames_that_reach_outside():
    blocked = _hook_here()
    assert blocked("os.symlink", "/etc/passwd", "/work/link", None, None)  # a link to outside
    assert blocked("os.link", "/etc/passwd", "/work/hard", None, None, True)
    assert blocked("os.rename", "/work/a", "/tmp/a", None, None)
    assert blocked("os.replace", "/work/a", "/tmp/a", None, None)
    assert not blocked("os.rename", "/work/a", "/work/b", None, None)
    assert blocked("shutil.rmtree", "/home", None)


def test_the_hook_resolves_relative_paths_from_the_current_folder():
    assert _hook_here(cwd="/tmp")("open", "notes.txt", "w", 0)  # after os.chdir('/tmp')
    assert not _hook_here(cwd="/work/sub")("open", "../notes.txt", "w", 0)
    assert _hook_here(cwd="/work/sub")("open", "../../notes.txt", "w", 0)
