"""One driver per study: a live lease refuses a second driver in one line; a killed driver's
expired lease is taken over with a message; a driver whose lease was taken over stops."""

from __future__ import annotations

import time

import pytest

from evomerge.errors import StorageError
from evomerge.runtime.lease import LEASE_ATTR, DriverLease
from evomerge.store import create_run, open_run


@pytest.fixture
def store(tmp_path):
    return create_run(tmp_path / "run", "s", ["t"], {})


def test_a_second_driver_on_a_live_study_is_refused(store, tmp_path) -> None:
    first = DriverLease(store)
    assert first.take() is None
    second = DriverLease(open_run(tmp_path / "run"))  # another process, same study
    with pytest.raises(StorageError, match=r"another search driver \(.*\) is running this study") as raised:
        second.take()
    assert "\n" not in str(raised.value)
    first.release()
    assert second.take() is None  # a released lease is free at once


def test_a_killed_drivers_stale_lease_is_taken_over(store, tmp_path) -> None:
    killed = DriverLease(store, seconds=0.2)
    killed.take()  # ... and never released (kill -9)
    time.sleep(0.3)
    successor = DriverLease(open_run(tmp_path / "run"))
    message = successor.take()
    assert message is not None and killed.holder in message and "took over" in message
    assert store.read_study_attr(LEASE_ATTR)["holder"] == successor.holder
    killed._renewed = 0.0  # the paused driver wakes up and tries to go on
    with pytest.raises(StorageError, match="was taken over by"):
        killed.renew()


def test_the_search_refuses_to_run_beside_a_live_driver(tmp_path, tiny_family) -> None:
    from searchfixture import write_experiment

    from evomerge.experiment import Experiment
    from evomerge.runtime.driver import SearchDriver

    path = write_experiment(tmp_path / "exp", tiny_family, trials=2)
    driver = SearchDriver(Experiment.load(path), tmp_path / "run", make_actor=lambda i: None)
    DriverLease(open_run(tmp_path / "run")).take()  # a driver elsewhere holds the study
    with pytest.raises(StorageError, match="is running this study"):
        driver.run()
    assert all(t.state.name != "FAIL" for t in open_run(tmp_path / "run").trials())  # nothing touched


TAKE_AND_DIE = """
import os, sys, time
from evomerge.runtime.lease import DriverLease
from evomerge.store import open_run
DriverLease(open_run(sys.argv[1])).take()
print("taken", flush=True)
time.sleep(600)
"""


def test_a_lease_of_a_driver_killed_on_this_host_is_taken_over_at_once(store, tmp_path) -> None:
    """kill -9 leaves a lease that holds for a minute; its process is provably gone, so no wait."""
    import signal
    import subprocess
    import sys

    driver = subprocess.Popen(
        [sys.executable, "-c", TAKE_AND_DIE, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    assert driver.stdout.readline().strip() == "taken"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert store.read_study_attr(LEASE_ATTR)["expires"] > time.time() + 30  # not expired
    successor = DriverLease(open_run(tmp_path / "run"))
    message = successor.take()
    assert message is not None and "took over" in message and f":{driver.pid}:" in message
    assert "is gone" in message


def test_a_lease_whose_pid_was_reused_by_another_process_is_taken_over(store, tmp_path) -> None:
    held = DriverLease(store)
    held.take()
    lease = store.read_study_attr(LEASE_ATTR)
    store.write_study_attr(LEASE_ATTR, lease | {"started": lease["started"] - 1})  # same PID, another start
    message = DriverLease(open_run(tmp_path / "run")).take()
    assert message is not None and "started" in message


def test_a_lease_from_another_host_waits_for_its_expiry(store, tmp_path) -> None:
    held = DriverLease(store)
    held.take()
    lease = store.read_study_attr(LEASE_ATTR)
    dead_pid = 2**22 + 7  # above any pid_max: no such process here, but the host is not this one
    store.write_study_attr(LEASE_ATTR, lease | {"host": "elsewhere", "pid": dead_pid})
    with pytest.raises(StorageError, match="is running this study"):
        DriverLease(open_run(tmp_path / "run")).take()
