"""One search driver per study at a time: a lease kept in the study itself.

A driver takes the lease before it touches the run (a second driver resuming a live study would
mark its running trials interrupted and tell its optimizer twice), renews it while it runs, and
releases it when it stops. A driver killed with `kill -9` cannot release it: its lease expires
`LEASE_SECONDS` after the last renewal, and the next driver takes it over. The lease names its
host (hostname and kernel boot id), PID and the process's start time, so a driver on the same host
takes over at once the lease of a process that is provably dead (its PID gone, or reused by a
process started at another time); a lease from another host still waits for its expiry. A driver that finds
its lease taken over (it was paused past the expiry) stops instead of writing beside the new one.
The lease lives in the study's attributes, so it holds across machines sharing a PostgreSQL study.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evomerge.errors import StorageError

LEASE_ATTR = "driver_lease"
LEASE_SECONDS = 60.0
RENEW_EVERY_S = 10.0
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _host() -> str:
    """This host: its name and, where Linux tells it, the kernel's boot id (a reboot reuses PIDs)."""
    boot = _BOOT_ID.read_text().strip() if _BOOT_ID.is_file() else ""
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def _process(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process from Linux's /proc; None where
    /proc does not tell (no such process, or not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[19])  # fields 3 and 22; the command name before ")" may hold spaces


def _started(pid: int) -> int | None:
    process = _process(pid)
    return process[1] if process else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    process = _process(pid)
    return process is None or process[0] != "Z"  # a zombie is a killed process not yet reaped


def _dead_holder(lease: dict[str, Any]) -> str | None:
    """Why the lease's driver is provably dead (same host, PID gone or reused), None otherwise."""
    pid, started = lease.get("pid"), lease.get("started")
    if lease.get("host") != _host() or not isinstance(pid, int):
        return None
    if not _alive(pid):
        return f"its process {pid} on this host is gone"
    now_started = _started(pid)
    if started is not None and now_started is not None and now_started != started:
        return f"PID {pid} now belongs to a process started at another time"
    return None


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class DriverLease:
    def __init__(self, store: Any, seconds: float = LEASE_SECONDS) -> None:
        self.store = store
        self.seconds = seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renewed = 0.0

    def _current(self) -> dict[str, Any] | None:
        lease = self.store.read_study_attr(LEASE_ATTR)
        return lease if isinstance(lease, dict) and lease.get("holder") else None

    def take(self) -> str | None:
        """Take the lease; a message when a stale one (a killed driver's) was taken over. Raises
        StorageError, in one line, while another driver holds a live lease."""
        now = time.time()
        current = self._current()
        stale = None
        if current is not None and current["holder"] != self.holder:
            other, expires = current["holder"], float(current.get("expires", 0))
            dead = _dead_holder(current)
            if dead:
                stale = f"took over the lease of a killed driver ({other}: {dead})"
            elif expires > now:
                raise StorageError(
                    f"another search driver ({other}) is running this study (its lease holds until "
                    f"{_when(expires)}); stop it first (one that died on another host: wait "
                    f"{self.seconds:.0f} s)"
                )
            else:
                stale = f"took over the lease of a stopped driver ({other}, expired {_when(expires)})"
        self._write(now)
        time.sleep(0.05)  # two drivers starting together: the later write wins, the other sees it
        if (self._current() or {}).get("holder") != self.holder:
            raise StorageError("another search driver took this study at the same moment; run only one")
        return stale

    def renew(self) -> None:
        """Extend the lease (at most every RENEW_EVERY_S); StorageError when another driver has it."""
        now = time.time()
        if now - self._renewed < RENEW_EVERY_S:
            return
        current = self._current()
        if current is None or current["holder"] != self.holder:
            who = current["holder"] if current else "nobody"
            raise StorageError(
                f"this driver's lease on the study was taken over by {who} (this driver was paused past "
                "its expiry); stopping so that two drivers never write one study"
            )
        self._write(now)

    def release(self) -> None:
        current = self._current()
        if current is not None and current["holder"] == self.holder:
            self.store.write_study_attr(LEASE_ATTR, {"holder": None, "expires": 0})

    def _write(self, now: float) -> None:
        pid = os.getpid()
        self.store.write_study_attr(
            LEASE_ATTR,
            {
                "holder": self.holder,
                "expires": now + self.seconds,
                "host": _host(),
                "pid": pid,
                "started": _started(pid),
            },
        )
        self._renewed = now
