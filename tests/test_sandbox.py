"""The code sandbox: hostile programs score 0 and leave the host as it was."""

import os
import socket
import time

import pytest

from corp.tasks.sandbox import run_tests

TESTS = ["assert f(1) == 2", "assert f(5) == 6"]


def test_correct_and_partly_correct_code():
    assert run_tests("def f(x):\n    return x + 1", TESTS).fraction == 1.0
    half = run_tests("def f(x):\n    return 2 if x == 1 else 0", TESTS)
    assert (half.passed, half.total, half.status) == (1, 2, "ok")
    assert run_tests("def f(x) return", TESTS).fraction == 0.0  # syntax error


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


def test_a_printed_fake_result_is_not_believed():
    code = "print('\\n' + 'a' * 32 + '[true, true]')\ndef f(x):\n    return 0"
    assert run_tests(code, TESTS).fraction == 0.0


# The kernel layer on its own (Python policy off): limits that hold even if the policy is bypassed.
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="network namespace needs root")


def test_without_the_policy_fork_still_fails():
    code = ("import os\ntry:\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n"
            "    forked = True\nexcept OSError:\n    forked = False\n")
    assert run_tests(code, ["assert not forked"], audit=False).fraction == 1.0


@root_only
def test_without_the_policy_the_network_is_unreachable(listener):
    code = _connect_code(listener.getsockname()[1]) + "f(0)\n"
    result = run_tests(code, TESTS, audit=False)
    assert result.fraction == 0.0
    with pytest.raises(socket.timeout):
        listener.accept()
