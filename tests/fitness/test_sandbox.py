"""The code-execution sandbox: ordinary code passes, hostile code fails safely within its limits."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from evomerge.errors import ConfigError
from evomerge.fitness.banks import sandbox
from evomerge.fitness.banks.sandbox import NOBODY, Limits, Sandbox

LIMITS = Limits(timeout_s=20, cpu_s=1, memory_mb=512, nproc=16, fsize_mb=1)
SLACK_S = 5.0  # process start-up on a loaded machine


@pytest.fixture(scope="module")
def box() -> Sandbox:
    return Sandbox(LIMITS)  # refuses (ConfigError) where no namespace can be made: the tests then fail


def _sandbox_processes(within_s: float = 5.0) -> list[psutil.Process]:
    """Processes of the sandbox's uid still there after `within_s` (a dead PID namespace and its
    zombies are reaped asynchronously)."""
    deadline = time.monotonic() + within_s
    while True:
        left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == NOBODY]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_ordinary_code_passes_and_sees_only_its_directory(box: Sandbox) -> None:
    outcome = box.run(
        "import os\n"
        "open('out.txt', 'w').write('ok')\n"
        "assert os.getcwd() == '/tmp' and os.environ['HOME'] == '/tmp', (os.getcwd(), dict(os.environ))\n"
        "assert set(os.environ) <= {'HOME', 'TMPDIR', 'PATH', 'LANG', 'PWD'}, dict(os.environ)\n"
        "assert os.getuid() == 0 and open('/proc/self/status').read().count('CapEff:\\t0000000000000000')\n"
    )
    assert outcome.passed, outcome.output
    assert outcome.reason == "passed"


def test_a_failing_assertion_fails_with_its_error(box: Sandbox) -> None:
    outcome = box.run("assert 1 == 2, 'wrong answer'\n")
    assert not outcome.passed
    assert outcome.reason == "failed: AssertionError: wrong answer"


def test_a_signal_death_is_a_failure(box: Sandbox) -> None:
    outcome = box.run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    assert not outcome.passed and outcome.reason.startswith("killed by SIGTERM")


def test_an_infinite_loop_stops_at_the_cpu_limit(box: Sandbox) -> None:
    outcome = box.run("while True:\n    pass\n")
    assert not outcome.passed
    assert outcome.reason.startswith("cpu limit: 1 s"), outcome.reason
    assert outcome.seconds < LIMITS.timeout_s  # CPU time, not the wall clock, stopped it


def test_a_sleeper_stops_at_the_wall_clock_limit() -> None:
    limits = Limits(timeout_s=2)
    start = time.monotonic()
    outcome = Sandbox(limits).run("import time\ntime.sleep(600)\n")
    assert not outcome.passed and outcome.reason.startswith("wall-clock limit: still running after 2 s")
    assert time.monotonic() - start < limits.timeout_s + SLACK_S


def test_a_fork_bomb_is_held_at_the_process_limit_and_leaves_nothing_behind(box: Sandbox) -> None:
    # Children sleep, so every process the bomb made is alive when the limit is hit: the count it
    # prints is the containment measured, and none may outlive the run.
    outcome = box.run(
        "import os, time\n"
        "made = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(120)\n"
        "            os._exit(0)\n"
        "        made += 1\n"
        "except BlockingIOError:\n"
        "    print('made', made, flush=True)\n"
        "    raise\n"
    )
    assert not outcome.passed
    assert outcome.reason.startswith(f"process limit (RLIMIT_NPROC {LIMITS.nproc})"), outcome.reason
    made = int(outcome.output.split("made ", 1)[1].split()[0])
    assert 0 < made < LIMITS.nproc  # the init shell and python count too
    assert outcome.seconds < SLACK_S
    assert _sandbox_processes() == []


def test_a_classic_fork_bomb_ends_within_the_limits(box: Sandbox) -> None:
    outcome = box.run("import os\nwhile True:\n    os.fork()\n")
    assert not outcome.passed and outcome.reason.startswith("process limit"), outcome.reason
    assert outcome.seconds < LIMITS.timeout_s + SLACK_S
    assert _sandbox_processes() == []


def test_a_huge_allocation_hits_the_memory_limit(box: Sandbox) -> None:
    outcome = box.run("blob = bytearray(8 * 1024**3)\n")
    assert not outcome.passed
    assert outcome.reason.startswith("memory limit (RLIMIT_AS 512 MiB): MemoryError"), outcome.reason
    assert outcome.seconds < SLACK_S


def test_a_big_file_hits_the_file_size_limit(box: Sandbox) -> None:
    outcome = box.run("open('big', 'wb').write(b'x' * (4 * 1024 * 1024))\n")
    assert not outcome.passed and outcome.reason.startswith("file size limit (RLIMIT_FSIZE 1 MiB)")


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside /tmp (which the sandbox replaces), so the checks below test the
    read-only mounts and the hidden home rather than a missing path."""
    path = Path(tempfile.mkdtemp(prefix="evomerge-sandbox-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_writing_outside_the_temporary_directory_is_refused(box: Sandbox, outside: Path) -> None:
    (outside / "open").mkdir(mode=0o777)
    (outside / "open").chmod(0o777)  # even a world-writable directory is read-only inside
    for target in (outside / "open" / "evil", Path("/var/tmp/evomerge-evil"), Path("/dev/shm/evomerge-evil")):
        outcome = box.run(f"open({str(target)!r}, 'w').write('x')\n")
        assert not outcome.passed
        assert outcome.reason.startswith("filesystem: only the sandbox's temporary directory is writable")
        assert not target.exists()


def test_no_socket_reaches_the_network(box: Sandbox) -> None:
    outcome = box.run("import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=5)\n")
    assert not outcome.passed and outcome.reason.startswith("network: the sandbox has none"), outcome.reason
    assert outcome.seconds < SLACK_S


def test_the_home_is_hidden_and_private_files_unreadable(
    box: Sandbox, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = outside / "home"
    (home / ".ssh").mkdir(parents=True)
    home.chmod(0o755)
    (home / ".ssh").chmod(0o755)
    key = home / ".ssh" / "id_rsa"
    key.write_text("FAKE-SECRET-KEY")
    key.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    outcome = box.run(f"print(open({str(key)!r}).read())\n")
    assert not outcome.passed and "FAKE-SECRET-KEY" not in outcome.output
    assert outcome.reason.startswith("home: hidden from the sandbox"), outcome.reason
    # Outside any home, a mode-600 file of the caller is still out of reach (another uid).
    other = outside / "secret"
    other.write_text("FAKE-SECRET-KEY")
    other.chmod(0o600)
    outcome = box.run(f"print(open({str(other)!r}).read())\n")
    assert not outcome.passed and "FAKE-SECRET-KEY" not in outcome.output
    assert outcome.reason.startswith("filesystem:"), outcome.reason


def test_without_namespaces_it_refuses_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "unshare: operation not permitted")
    with pytest.raises(ConfigError, match=r"cannot isolate.*sandbox: \{network: allow\}.*--allow-network"):
        Sandbox()
    allowed = Sandbox(LIMITS, allow_network=True)
    assert not allowed.isolated
    outcome = allowed.run("import os\nassert os.environ['HOME'] == os.getcwd()\nwhile True:\n    pass\n")
    assert outcome.reason.startswith("cpu limit"), outcome.reason


def test_isolation_is_available_here() -> None:
    # This machine can make the namespaces: the hostile tests above ran isolated, not in the fallback.
    assert sandbox.isolation_problem() is None, sandbox.isolation_problem()
    assert os.path.exists("/usr/bin/unshare")
