"""`kill -9` of the driver mid-search, then `--resume`: no completed evaluation lost or repeated."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from optuna.trial import TrialState
from searchfixture import write_experiment

from evomerge.store import open_run

EVOMERGE = [sys.executable, "-m", "evomerge.cli"]
TRIALS = 60


def completed_search_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            rows = conn.execute(
                "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'COMPLETE' AND a.key = 'kind' AND a.value_json = '\"search\"'"
            ).fetchone()
        return int(rows[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path, tiny_family) -> None:
    # Tiny-model trials take tens of milliseconds: a budget long enough that the kill lands mid-search.
    path = write_experiment(tmp_path / "exp", tiny_family, trials=TRIALS)
    run_dir = tmp_path / "run"
    driver = subprocess.Popen(
        [*EVOMERGE, "search", str(path), "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while completed_search_trials(run_dir / "study.db") < 3:
            assert driver.poll() is None, "the search ended before it could be killed"
            assert time.time() < deadline, "no search trial completed in 300 s"
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        # the local Ray the killed driver had started (same session): ended by its group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    store = open_run(run_dir)
    before = store.trials()
    assert any(t.state == TrialState.RUNNING for t in before), "nothing was in flight when killed"
    done_before = {
        t.user_attrs["candidate"]
        for t in before
        if t.state == TrialState.COMPLETE and "candidate" in t.user_attrs
    }

    resumed = subprocess.run(
        [*EVOMERGE, "search", str(path), "--run-dir", str(run_dir), "--resume"],
        capture_output=True, text=True, timeout=500, start_new_session=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # at once: the killed driver's lease is still live, but its process is provably gone
    assert "took over the lease of a killed driver" in " ".join((resumed.stdout + resumed.stderr).split())
    trials = open_run(run_dir).trials()
    search = [t for t in trials if t.user_attrs["kind"] == "search"]
    complete = [t.user_attrs["candidate"] for t in search if t.state == TrialState.COMPLETE]
    assert sorted(complete) == list(range(TRIALS))  # each candidate evaluated to completion exactly once
    assert done_before <= set(complete)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs["fail_reason"].startswith("interrupted") for t in failed)
    kinds = [t.user_attrs["kind"] for t in trials if t.state == TrialState.COMPLETE]
    assert kinds.count("parent") == 2 and kinds.count("baseline") == 1


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, tiny_family) -> None:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=30)
    run_dir = tmp_path / "run"
    driver = subprocess.Popen(
        [*EVOMERGE, "search", str(path), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while completed_search_trials(run_dir / "study.db") < 1:
        assert driver.poll() is None and time.time() < deadline
        time.sleep(0.5)
    os.kill(driver.pid, signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-2000:]
    assert f"resume with: evomerge search {path} --run-dir {run_dir} --resume" in " ".join(err.split())
    trials = open_run(run_dir).trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # nothing left dangling
    assert all(
        t.user_attrs["fail_reason"].startswith("interrupted") for t in trials if t.state == TrialState.FAIL
    )


def ctrl_c_group(driver: subprocess.Popen) -> float:
    """Ctrl-C as a terminal sends it (the whole process group); seconds until the driver exited."""
    started = time.time()
    os.killpg(driver.pid, signal.SIGINT)
    driver.wait(timeout=120)
    return time.time() - started


@pytest.mark.slow
def test_ctrl_c_at_start_up_and_mid_run_then_resume_exactly(tmp_path, tiny_family) -> None:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=12)
    run_dir = tmp_path / "run"
    resume = f"resume with: evomerge search {path} --run-dir {run_dir} --resume"

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*EVOMERGE, "search", str(path), "--run-dir", str(run_dir), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip

    def interrupt_when(driver: subprocess.Popen, ready: Callable[[], bool], wait: float, phase: str) -> None:
        """Ctrl-C once `ready()` holds: exit 130 within 15 s, saying how to resume."""
        deadline = time.time() + wait
        while not ready():
            assert driver.poll() is None and time.time() < deadline
            time.sleep(0.05)
        took = ctrl_c_group(driver)
        err = driver.stderr.read()
        assert driver.returncode == 130 and resume in " ".join(err.split()), err[-2000:]
        assert took < 15, f"{phase} Ctrl-C took {took:.1f} s"

    # start-up: the run exists, Ray and the workers are still starting
    interrupt_when(start(), (run_dir / "run.json").exists, 120, "start-up")
    assert completed_search_trials(run_dir / "study.db") == 0

    study = run_dir / "study.db"
    interrupt_when(start("--resume"), lambda: completed_search_trials(study) >= 2, 300, "mid-run")
    assert not [t for t in open_run(run_dir).trials() if t.state == TrialState.RUNNING]

    last = subprocess.run(
        [*EVOMERGE, "search", str(path), "--run-dir", str(run_dir), "--resume"],
        capture_output=True, text=True, timeout=500, start_new_session=True,
    )  # fmt: skip
    assert last.returncode == 0, last.stderr[-3000:]
    trials = open_run(run_dir).trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    search = sorted(t.user_attrs["candidate"] for t in complete if t.user_attrs["kind"] == "search")
    assert search == list(range(12))  # nothing lost, nothing evaluated twice
    kinds = [t.user_attrs["kind"] for t in complete]
    assert kinds.count("parent") == 2 and kinds.count("baseline") == 1
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"].startswith("interrupted") for t in failed)
