"""Faults end fast and clearly: repeated candidate failures stop the search with the reason and
exit 1; every failure's full text lands in the run's failure log; a worker count the cluster
cannot hold is shrunk with a message instead of hanging. Ray is replaced by an in-process
scheduler whose evaluations fail (no model is loaded)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from searchfixture import write_experiment
from typer.testing import CliRunner

import evomerge.errors
import evomerge.runtime.driver
import evomerge.runtime.scheduler
from evomerge.cli import app
from evomerge.experiment import Experiment
from evomerge.runtime.driver import FAILURE_LOG, SearchDriver
from evomerge.runtime.work import WorkerResult


class FailingScheduler:
    """The Scheduler's interface: every evaluation fails the way a NaN-producing merge does."""

    def __init__(
        self, make_actor: Any, n_workers: int, evaluation_timeout: float | None = None, on_lost: Any = None
    ) -> None:
        self.n_workers = n_workers
        self._running: list[Any] = []
        self.busy_seconds = 0.0
        self.retries = 0
        self.evaluated = 0

    @property
    def idle_workers(self) -> int:
        return max(0, self.n_workers - len(self._running))

    @property
    def outstanding(self) -> int:
        return len(self._running)

    def submit(self, key: Any, payload: str) -> None:
        self._running.append(key)

    def wait(self, timeout: float | None = None) -> list[tuple[Any, WorkerResult]]:
        key = self._running.pop(0)
        self.evaluated += 1
        reason = "CandidateError: non-finite log-likelihood on item 'arith-3' (NaN/inf in the model)"
        trace = f'{reason}\nTraceback (most recent call last):\n  File "worker.py", line 1\n'
        return [(key, WorkerResult.failure(reason, "w0", trace))]

    def cancel_all(self) -> list[Any]:
        keys, self._running = self._running, []
        return keys

    def cancel_running(self) -> list[Any]:
        return self.cancel_all()

    def shutdown(self) -> None:
        pass


@pytest.fixture(autouse=True)
def failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evomerge.runtime.scheduler, "Scheduler", FailingScheduler)
    monkeypatch.setattr(evomerge.runtime.driver, "_init_ray", lambda experiment, address: False)
    monkeypatch.setattr(
        evomerge.runtime.driver, "actor_factory", lambda experiment, space, plan: lambda i: None
    )


def with_limit(path, limit: int):
    import yaml

    data = yaml.safe_load(path.read_text())
    data["budget"]["max_consecutive_failures"] = limit
    path.write_text(yaml.safe_dump(data))
    return path


def test_repeated_failures_stop_the_search_with_the_reason(tmp_path, tiny_family) -> None:
    path = with_limit(write_experiment(tmp_path / "exp", tiny_family, trials=40), 4)
    summary = SearchDriver(Experiment.load(path), tmp_path / "run", make_actor=lambda i: None).run()
    assert summary.stopped == "failures" and summary.complete == 0
    assert summary.failed < 40  # stopped long before the budget
    assert any("4 failed trials in a row" in m and "non-finite log-likelihood" in m for m in summary.messages)
    log = (tmp_path / "run" / FAILURE_LOG).read_text()
    assert log.count("reason: CandidateError: non-finite") >= 4 and "Traceback (most recent call last)" in log


def test_the_cli_exits_1_when_the_search_measured_nothing(tmp_path, tiny_family) -> None:
    path = with_limit(write_experiment(tmp_path / "exp", tiny_family, trials=3), 50)
    args = ["search", str(path), "--run-dir", str(tmp_path / "run"), "--quiet", "--format", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["complete"] == 0 and summary["failed"] == 3 and summary["stopped"] == "budget"
    table = CliRunner().invoke(app, ["search", str(path), "--run-dir", str(tmp_path / "run2"), "--quiet"])
    assert table.exit_code == 1 and "no search trial completed" in table.output


def test_a_worker_count_the_cluster_cannot_hold_is_shrunk(tmp_path, tiny_family, monkeypatch) -> None:
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    path = write_experiment(tmp_path / "exp", tiny_family, trials=2, workers=4)
    driver = SearchDriver(Experiment.load(path), tmp_path / "run", make_actor=lambda i: None)
    assert driver._fit_workers(4) == 2
    assert driver.messages == ["workers.count 4 does not fit the cluster (2 CPUs, 0 GPUs); running 2"]
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.5})
    with pytest.raises(evomerge.errors.ConfigError, match=r"cannot hold one worker .* raise ray.num_cpus"):
        driver._fit_workers(4)


def test_workers_resources_are_fitted_to_the_nodes_that_carry_them(
    tmp_path, tiny_family, monkeypatch
) -> None:
    import ray
    import yaml

    path = write_experiment(tmp_path / "exp", tiny_family, trials=2, workers=3)
    data = yaml.safe_load(path.read_text())
    data["workers"]["resources"] = {"evomerge_worker": 1}
    path.write_text(yaml.safe_dump(data))
    driver = SearchDriver(Experiment.load(path), tmp_path / "run", make_actor=lambda i: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "evomerge_worker": 2.0})
    assert driver._fit_workers(3) == 2
    assert driver.messages == [
        "workers.count 3 does not fit the cluster (8 CPUs, 0 GPUs, 2 evomerge_worker); running 2"
    ]
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})  # no node carries it
    with pytest.raises(
        evomerge.errors.ConfigError, match=r"workers.resources: \{'evomerge_worker': 1.0\}\); .*--resources"
    ):
        driver._fit_workers(3)
    data["workers"]["resources"] = {"evomerge_worker": 0}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        evomerge.errors.ConfigError,
        match=r"workers.resources.evomerge_worker: Input should be greater than 0",
    ):
        Experiment.load(path)
