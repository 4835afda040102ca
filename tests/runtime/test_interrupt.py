"""Ctrl-C at any moment of `evomerge search` (start-up, mid-run, shutdown) stops within seconds,
says how to resume in one line, exits 130, and leaves a run that resumes to the exact trial count.
In process: the real CLI, driver and store; Ray replaced by the in-process scheduler of
test_resume_exact; Ctrl-C is a real SIGINT sent to this process."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from searchfixture import write_experiment
from test_resume_exact import InlineScheduler
from typer.testing import CliRunner

import evomerge.runtime.driver
import evomerge.runtime.scheduler
from evomerge.cli import app
from evomerge.runtime.interrupt import StopRequest
from evomerge.store import TrialState, open_run

TRIALS = 6


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evomerge.runtime.scheduler, "Scheduler", InlineScheduler)
    monkeypatch.setattr(evomerge.runtime.driver, "_init_ray", lambda experiment, address: False)
    monkeypatch.setattr(
        evomerge.runtime.driver, "actor_factory", lambda experiment, space, plan: lambda i: None
    )


def search(path, run_dir, *extra: str) -> Any:
    return CliRunner().invoke(app, ["search", str(path), "--run-dir", str(run_dir), "--quiet", *extra])


def resume_line(output: str, path, run_dir) -> bool:
    return f"resume with: evomerge search {path} --run-dir {run_dir} --resume" in " ".join(output.split())


def assert_resumes_exactly(path, run_dir) -> None:
    result = search(path, run_dir, "--resume")
    assert result.exit_code == 0, result.output
    trials = open_run(run_dir).trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    search_done = sorted(t.user_attrs["candidate"] for t in complete if t.user_attrs["kind"] == "search")
    assert search_done == list(range(TRIALS))  # each candidate evaluated to completion exactly once
    kinds = [t.user_attrs["kind"] for t in complete]
    assert kinds.count("parent") == 2 and kinds.count("baseline") == 1
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"].startswith("interrupted") for t in failed)


def test_the_first_ctrl_c_waits_for_a_safe_step_and_the_second_interrupts() -> None:
    stop = StopRequest().install()
    try:
        ctrl_c()
        assert stop.requested  # recorded, nothing raised
        with pytest.raises(KeyboardInterrupt):
            stop.check()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()  # a second one: at once
        fresh = StopRequest().install()
        with pytest.raises(KeyboardInterrupt), fresh.interruptible():
            ctrl_c()  # a slow start-up step is cut short at once
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_ctrl_c_while_ray_starts(tmp_path, tiny_family, monkeypatch) -> None:
    def slow_ray_start(experiment: Any, address: Any) -> bool:
        ctrl_c()
        time.sleep(60)  # a Ray start-up on a busy machine; the Ctrl-C must not wait for it
        return False

    monkeypatch.setattr(evomerge.runtime.driver, "_init_ray", slow_ray_start)
    monkeypatch.setattr(evomerge.runtime.driver.SearchDriver, "_fit_workers", lambda self, n: n)
    path, run_dir = write_experiment(tmp_path / "exp", tiny_family, trials=TRIALS), tmp_path / "run"
    started = time.perf_counter()
    result = search(path, run_dir)
    assert result.exit_code == 130, result.output
    assert time.perf_counter() - started < 30 and resume_line(result.output, path, run_dir)
    assert open_run(run_dir).trials() == []  # nothing was started
    monkeypatch.setattr(evomerge.runtime.driver, "_init_ray", lambda experiment, address: False)
    assert_resumes_exactly(path, run_dir)


def test_ctrl_c_before_the_run_exists_writes_nothing(tmp_path, tiny_family, monkeypatch) -> None:
    import evomerge.runtime.opening

    def interrupted(*args: Any, **kwargs: Any) -> None:
        ctrl_c()  # inside the opening, which a Ctrl-C interrupts at once
        raise AssertionError("not interrupted")

    monkeypatch.setattr(evomerge.runtime.opening, "create_run", interrupted)
    path, run_dir = write_experiment(tmp_path / "exp", tiny_family, trials=TRIALS), tmp_path / "run"
    result = search(path, run_dir)
    assert result.exit_code == 130, result.output
    assert "interrupted before the run was created; start it with: evomerge search" in result.output


class CtrlCMidRun(InlineScheduler):
    """Ctrl-C once five evaluations have ended."""

    ended = 0

    def wait(self, timeout: float | None = None) -> list[tuple[Any, Any]]:
        done = super().wait(timeout)
        CtrlCMidRun.ended += len(done)
        if CtrlCMidRun.ended == 5:  # the two parents, the baseline, two search trials
            ctrl_c()
        return done


def test_ctrl_c_mid_run(tmp_path, tiny_family, monkeypatch) -> None:
    monkeypatch.setattr(evomerge.runtime.scheduler, "Scheduler", CtrlCMidRun)
    path, run_dir = write_experiment(tmp_path / "exp", tiny_family, trials=TRIALS), tmp_path / "run"
    result = search(path, run_dir)
    assert result.exit_code == 130, result.output
    assert "stopped: interrupted" in result.output and resume_line(result.output, path, run_dir)
    trials = open_run(run_dir).trials()
    assert any(t.state == TrialState.FAIL for t in trials)  # a candidate in flight was cut short
    monkeypatch.setattr(evomerge.runtime.scheduler, "Scheduler", InlineScheduler)
    assert_resumes_exactly(path, run_dir)


class CtrlCAtShutdown(InlineScheduler):
    def shutdown(self) -> None:
        ctrl_c()  # the search is over; the stop must neither hang nor be lost
        super().shutdown()


def test_ctrl_c_during_shutdown(tmp_path, tiny_family, monkeypatch) -> None:
    monkeypatch.setattr(evomerge.runtime.scheduler, "Scheduler", CtrlCAtShutdown)
    path, run_dir = write_experiment(tmp_path / "exp", tiny_family, trials=TRIALS), tmp_path / "run"
    result = search(path, run_dir)
    assert result.exit_code == 130, result.output
    assert resume_line(result.output, path, run_dir)
    monkeypatch.setattr(evomerge.runtime.scheduler, "Scheduler", InlineScheduler)
    assert_resumes_exactly(path, run_dir)
