"""A throwaway PostgreSQL server for tests: initdb + pg_ctl as a non-root user on a loopback port.

Where it cannot start (not installed, no non-root user to run it as), the caller skips with the
reason, loudly: the storage tests never pass silently without a server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Unavailable(RuntimeError):
    pass


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise Unavailable("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server(root: Path) -> Iterator[str]:
    """Start a server under `root`; yield its URL; stop it (immediately) afterwards."""
    bindir = _bin_dir()
    runas: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable(
                "running as root and there is no 'postgres' user to run the server as"
            ) from None
        runas = ["runuser", "-u", "postgres", "--"]
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o700)
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*runas, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise Unavailable(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "evomerge", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql://evomerge@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*runas, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
