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
