"""Run untrusted Python (a model's completion plus an item's tests) in a contained process.

One run = one fresh `python -I -S` process (isolated mode: no user site, no PYTHON* variables,
no site-packages) with a scrubbed environment, inside Linux namespaces made by util-linux's
`unshare` and `setpriv`:

- a **mount namespace**: a fresh temporary directory is the sandbox's `/tmp`, its working
  directory and its `HOME`; the user's home directories are covered by an empty tmpfs (only the
  interpreter's own prefix is bound back, read-only, when it lives there); every other mount is
  remounted read-only, so nothing outside the temporary directory can be written;
- a **network namespace**: only a loopback device that is down, so no socket reaches anything;
- a **PID namespace**: when the run ends or is killed, every process it started dies with it;
- an **unprivileged uid**: root drops to `nobody` (65534) first, so RLIMIT_NPROC binds (the
  kernel exempts uid 0 from it) and root's files are out of reach; the process that runs the code
  keeps no capabilities (`setpriv --bounding-set=-all --no-new-privs`);
- **resource limits** (setrlimit, inherited): CPU seconds, address space, processes, file size,
  open files, no core dumps; plus a wall-clock limit after which the whole group is SIGKILLed.

Whether the namespaces can be made is probed once per process. Where they cannot, running is
refused unless the caller opts out (`allow_network=True`: suite `sandbox: {network: allow}`,
CLI `--allow-network`); the code then runs with the limits, the fresh directory and the scrubbed
environment only, under the caller's own uid: no network, home or process-count isolation.

RLIMIT_NPROC counts every process of the sandbox's uid (`nobody` for root) on the machine, so
sandboxes running at the same time share that budget.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import ConfigError

NOBODY = 65534
_TAIL_BYTES = 4096
# Mount points left writable: kernel pseudo-filesystems the sandbox cannot write as nobody anyway.
_KEEP_MOUNTS = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class Limits:
    """Per run: wall clock (s), CPU (s), address space (MiB), processes, file size (MiB), open files."""

    timeout_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 1024
    nproc: int = 32
    fsize_mb: int = 16
    nofile: int = 64


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str
    seconds: float
    output: str  # the last few KiB of stdout and stderr together


def _signatures(limits: Limits, hidden: list[Path]) -> list[tuple[re.Pattern[str], str]]:
    """Error text -> the limit it means, so a reason names what stopped the code."""
    # An OSError names its path in single quotes (tracebacks quote theirs with double ones).
    homes = [(re.compile("|".join(re.escape(f"'{h}") for h in hidden)), "home: hidden from the sandbox")]
    return [
        *(homes if hidden else []),
        (re.compile(r"MemoryError"), f"memory limit (RLIMIT_AS {limits.memory_mb} MiB)"),
        (
            re.compile(r"BlockingIOError|Resource temporarily unavailable"),
            f"process limit (RLIMIT_NPROC {limits.nproc})",
        ),
        (re.compile(r"File too large|Errno 27\b"), f"file size limit (RLIMIT_FSIZE {limits.fsize_mb} MiB)"),
        (re.compile(r"Too many open files"), f"open-file limit (RLIMIT_NOFILE {limits.nofile})"),
        (re.compile(r"Network is unreachable|Errno 101\b|Errno -3\b"), "network: the sandbox has none"),
        (
            re.compile(r"Read-only file system|Permission denied|Errno 13\b|Errno 30\b"),
            "filesystem: only the sandbox's temporary directory is writable, the rest is out of reach",
        ),
    ]


def _homes() -> list[Path]:
    """Home directories to hide: $HOME and the uid's passwd entry (never "/")."""
    candidates = {os.environ.get("HOME", ""), pwd.getpwuid(os.getuid()).pw_dir}
    homes = {Path(os.path.realpath(c)) for c in candidates if c and os.path.isdir(c)}
    return sorted(home for home in homes if home != Path("/"))


def _mount_points(homes: list[Path]) -> list[str]:
    """This namespace's mount points to remount read-only in the sandbox's copy: all but the kernel
    pseudo-filesystems (/dev/shm is world-writable, so it is included), /tmp (the sandbox's own
    directory is bound there) and the hidden homes (already covered)."""
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        points = [line.split()[1] for line in handle if len(line.split()) > 2]

    def under(point: str, top: str) -> bool:
        return point == top or point.startswith(top.rstrip("/") + "/")

    skip = [*_KEEP_MOUNTS, "/tmp", *map(str, homes)]
    keep = [p for p in points if p == "/dev/shm" or not any(under(p, top) for top in skip)]
    return list(dict.fromkeys(keep))


def _isolated_command(work: Path, program: str) -> list[str]:
    """unshare(mount) -> sh: mounts -> [setpriv: nobody] -> unshare(user, net, pid) -> setpriv: no
    capabilities -> python. The mounts are made with privilege, then privilege is dropped."""
    root = os.geteuid() == 0
    python = os.path.realpath(sys.executable)
    prefix = Path(os.path.realpath(sys.base_prefix))
    q = shlex.quote
    script = ["set -e", f"mount --bind {q(str(work))} /tmp"]
    homes = _homes()
    for index, home in enumerate(homes):
        # Staged inside the new /tmp (the work directory, still reachable wherever it lies), then
        # moved over the home, so the interpreter can be bound in before the home disappears.
        stage = f"/tmp/.home{index}"
        script += [f"mkdir {stage}", f"mount -t tmpfs -o size=64k,mode=755 evomerge-home {stage}"]
        if prefix.is_relative_to(home):  # the interpreter lives in the home: bind it back, read-only
            inside = q(f"{stage}/{prefix.relative_to(home)}")
            script += [f"mkdir -p {inside}", f"mount --bind -o ro {q(str(prefix))} {inside}"]
        script += [f"mount --move {stage} {q(str(home))}", f"rmdir {stage}"]
        script.append(f"mount -o remount,bind,ro {q(str(home))}")
    # remount,bind changes this namespace's mount only (MS_REMOUNT|MS_BIND), never the filesystem.
    script += [f"mount -o remount,bind,ro {q(point)}" for point in _mount_points(homes)]
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if root else []
    inner = [
        *drop,
        "unshare", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--",
        "setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--",
        # sh is the PID namespace's init (signals to an init are ignored): python runs as an
        # ordinary process and its fatal signal comes back as 128 + N.
        "/bin/sh", "-c", f'"$0" -I -S {program}; exit $?', python,
    ]  # fmt: skip
    script += ["cd /tmp", "unset OLDPWD", "exec " + " ".join(q(part) for part in inner)]
    stage1 = ["unshare", "--mount", "--propagation", "private"] + ([] if root else ["--map-root-user"])
    return [*stage1, "--", "/bin/sh", "-c", "\n".join(script)]


def _plain_command(work: Path, program: str) -> list[str]:
    return [os.path.realpath(sys.executable), "-I", "-S", str(work / program)]


def _limit(limits: Limits) -> None:
    """preexec_fn: the resource limits, inherited by everything the run starts."""
    mib = 1024 * 1024
    for kind, value in (
        (resource.RLIMIT_CPU, limits.cpu_s),
        (resource.RLIMIT_AS, limits.memory_mb * mib),
        (resource.RLIMIT_NPROC, limits.nproc),
        (resource.RLIMIT_FSIZE, limits.fsize_mb * mib),
        (resource.RLIMIT_NOFILE, limits.nofile),
        (resource.RLIMIT_CORE, 0),
    ):
        # The hard CPU limit one second above the soft one: SIGXCPU first (a reason), SIGKILL after.
        resource.setrlimit(kind, (value, value + 1 if kind == resource.RLIMIT_CPU else value))


@functools.cache
def isolation_problem() -> str | None:
    """None when the namespaces can be made here; else why not (probed once, with a trivial run)."""
    try:
        outcome = _run("pass\n", Limits(), isolated=True)
    except OSError as error:  # unshare/setpriv missing
        return str(error)
    if outcome.passed:
        return None
    lines = outcome.output.strip().splitlines()
    return lines[-1] if lines else outcome.reason


def _run(source: str, limits: Limits, *, isolated: bool) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="evomerge-sandbox-") as run_dir_name:
        run_dir = Path(run_dir_name)
        work = run_dir / "work"
        work.mkdir()
        (work / "program.py").write_text(source, encoding="utf-8")
        if isolated and os.geteuid() == 0:
            os.chown(work, NOBODY, NOBODY)
            os.chmod(run_dir, 0o755)  # nobody reaches work/ through it
        command = _isolated_command(work, "program.py") if isolated else _plain_command(work, "program.py")
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp" if isolated else str(work), "LANG": "C.UTF-8"}
        env["TMPDIR"] = env["HOME"]
        with (run_dir / "output").open("w+b") as output:
            start = time.monotonic()
            process = subprocess.Popen(
                command,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group to kill
                preexec_fn=functools.partial(_limit, limits),  # noqa: PLW1509 (no threads start it)
            )
            try:
                code = process.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the PID namespace dies with its first process
                code = process.wait()
                timed_out = True
            seconds = time.monotonic() - start
            output.seek(max(0, output.seek(0, os.SEEK_END) - _TAIL_BYTES))
            text = output.read().decode("utf-8", errors="replace")
    reason = _reason(code, timed_out, text, limits, _homes() if isolated else [])
    return Outcome(code == 0 and not timed_out, reason, seconds, text)


def _reason(code: int, timed_out: bool, text: str, limits: Limits, hidden: list[Path]) -> str:
    if timed_out:
        return f"wall-clock limit: still running after {limits.timeout_s:g} s"
    if code == 0:
        return "passed"
    # A fatal signal shows as 128 + N (the sandbox's init shell) or -N (the plain command).
    signal_number = -code if code < 0 else code - 128 if code > 128 else 0
    if signal_number == signal.SIGXCPU:
        return f"cpu limit: {limits.cpu_s} s of CPU time used (RLIMIT_CPU)"
    if signal_number == signal.SIGXFSZ:
        return f"file size limit: a write past {limits.fsize_mb} MiB (RLIMIT_FSIZE)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1][:200] if lines else f"exit status {code}"
    for pattern, limit in _signatures(limits, hidden):
        if pattern.search(text):
            return f"{limit}: {last}"
    if signal_number:
        return f"killed by {signal.Signals(signal_number).name}: {last}"
    return f"failed: {last}"


class Sandbox:
    """Runs programs under `limits`; refuses at construction if it cannot isolate and may not skip it."""

    def __init__(self, limits: Limits | None = None, *, allow_network: bool = False) -> None:
        self.limits = limits or Limits()
        problem = isolation_problem()
        self.isolated = problem is None
        if problem is not None and not allow_network:
            raise ConfigError(
                f"cannot isolate code execution here (no network/mount/user namespace: {problem}); "
                "set `sandbox: {network: allow}` in the suite or pass --allow-network to run without it"
            )

    def run(self, source: str) -> Outcome:
        return _run(source, self.limits, isolated=self.isolated)
