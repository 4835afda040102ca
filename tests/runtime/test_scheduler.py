"""Steady-state scheduler on a local Ray (one session for the module): every job ends once, a
worker killed mid-evaluation is replaced and its job retried once elsewhere, then FAIL."""

from __future__ import annotations

import os
import time

import pytest
import ray

from evomerge.runtime.scheduler import Scheduler
from evomerge.runtime.work import WorkerResult


@ray.remote(num_cpus=0)
class FakeWorker:
    """Stands in for the model worker: sleeps, reports its pid (as its worker id) and the payload's
    value (as an estimate), or dies when told to."""

    def ping(self) -> str:
        return "ready"

    def evaluate(self, payload: dict) -> WorkerResult:
        if payload.get("die") == "always" or (
            payload.get("die") == "once" and not os.path.exists(payload["flag"])
        ):
            if payload.get("flag"):
                open(payload["flag"], "w").close()
            os._exit(1)
        time.sleep(payload.get("sleep", 0.0))
        return WorkerResult(ok=True, worker=str(os.getpid()), estimates={"value": payload["value"]})


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def drain(scheduler: Scheduler) -> dict:
    results = {}
    while scheduler.outstanding:
        results.update(scheduler.wait(timeout=30))
    return results


def test_every_job_ends_once_without_a_barrier() -> None:
    scheduler = Scheduler(lambda i: FakeWorker.remote(), 3)
    assert scheduler.idle_workers == 3
    for k in range(9):
        scheduler.submit(k, {"value": k, "sleep": 0.05 * (k % 3)})
    assert scheduler.idle_workers == 0
    results = drain(scheduler)
    assert sorted(results) == list(range(9)) and all(r.estimates["value"] == k for k, r in results.items())
    assert len({r.worker for r in results.values()}) == 3  # all three workers took jobs
    scheduler.shutdown()


def test_killed_worker_is_replaced_and_its_job_retried_elsewhere(tmp_path) -> None:
    scheduler = Scheduler(lambda i: FakeWorker.remote(), 2)
    scheduler.submit("slow", {"value": 1, "sleep": 3.0})
    scheduler.submit("other", {"value": 2, "sleep": 0.1})
    time.sleep(1.0)
    victim = next(job.slot for job in scheduler._running.values() if job.key == "slow")
    ray.kill(scheduler.actors[victim])  # the worker dies mid-evaluation
    results = drain(scheduler)
    assert results["slow"].ok is True and results["slow"].estimates["value"] == 1
    assert results["other"].estimates["value"] == 2
    assert scheduler.retries == 1 and scheduler.replaced == 1 and scheduler.n_workers == 2
    scheduler.shutdown()


def test_a_job_that_kills_two_workers_fails_and_the_pool_survives(tmp_path) -> None:
    scheduler = Scheduler(lambda i: FakeWorker.remote(), 2)
    scheduler.submit("poison", {"value": 0, "die": "always", "flag": str(tmp_path / "f")})
    scheduler.submit("flaky", {"value": 3, "die": "once", "flag": str(tmp_path / "g")})
    results = drain(scheduler)
    poison = results["poison"]
    assert isinstance(poison, WorkerResult) and poison.ok is False and "worker died twice" in poison.reason
    assert results["flaky"].ok is True and results["flaky"].estimates["value"] == 3  # retried once
    scheduler.submit("after", {"value": 4})
    assert drain(scheduler)["after"].estimates["value"] == 4
    assert scheduler.n_workers == 2
    scheduler.shutdown()


@ray.remote(num_cpus=0)
class BrokenWorker:
    """A worker whose constructor fails the way a missing model does."""

    def __init__(self) -> None:
        from evomerge.errors import ModelLoadError

        raise ModelLoadError("model directory '/nowhere/parent' does not exist; check the path")

    def ping(self) -> str:
        return "ready"

    def evaluate(self, payload: dict) -> WorkerResult:
        return WorkerResult(ok=True)


def test_a_worker_that_cannot_start_stops_everything_with_its_cause() -> None:
    from evomerge.errors import WorkerStartError

    scheduler = Scheduler(lambda i: BrokenWorker.remote(), 2)
    scheduler.submit("a", {"value": 1})
    started = time.perf_counter()
    with pytest.raises(WorkerStartError) as raised:
        drain(scheduler)
    message = str(raised.value)
    assert "ModelLoadError: model directory '/nowhere/parent' does not exist; check the path" in message
    assert "\n" not in message and time.perf_counter() - started < 30
    assert scheduler.retries == 0  # not retried on a fresh worker: it would fail the same way
    scheduler.shutdown()


def test_an_evaluation_past_the_timeout_fails_and_its_worker_is_replaced() -> None:
    scheduler = Scheduler(lambda i: FakeWorker.remote(), 1, evaluation_timeout=1.0)
    scheduler.submit("stuck", {"value": 0, "sleep": 60})
    scheduler.submit("next", {"value": 5})
    started = time.perf_counter()
    results = {}
    while scheduler.outstanding:
        results.update(scheduler.wait(timeout=0.5))
    assert time.perf_counter() - started < 20
    stuck = results["stuck"]
    assert stuck.ok is False and "TimeoutError: the evaluation ran past 1 s" in stuck.reason
    assert results["next"].estimates["value"] == 5 and scheduler.replaced == 1
    scheduler.shutdown()


def test_root_cause_reads_the_raised_error_from_rays_text() -> None:
    from evomerge.runtime.scheduler import root_cause

    text = (
        "The actor died because of an error raised in its creation task, ray::Worker.__init__()\n"
        '  File "/x/worker.py", line 43, in __init__\n    self.merger = LiveMerger(...)\n'
        "evomerge.errors.ModelLoadError: vocabulary sizes differ: 'a' has 10, 'b' has 12; merge models"
    )
    assert (
        root_cause(RuntimeError(text))
        == "ModelLoadError: vocabulary sizes differ: 'a' has 10, 'b' has 12; merge models"
    )
    assert root_cause(RuntimeError("plain words")) == "RuntimeError: plain words"


@ray.remote(num_cpus=0)
class SlowStartWorker(FakeWorker.__ray_actor_class__):  # type: ignore[name-defined]
    """Loads its 'models' for 3 s, then evaluates quickly."""

    def __init__(self) -> None:
        time.sleep(3.0)


def test_a_slow_start_up_does_not_count_against_the_evaluation_timeout() -> None:
    scheduler = Scheduler(lambda i: SlowStartWorker.remote(), 1, evaluation_timeout=1.0)
    scheduler.submit("first", {"value": 7, "sleep": 0.2})
    result = drain(scheduler)["first"]
    assert result.ok is True and result.estimates["value"] == 7, result
    assert scheduler.replaced == 0
    scheduler.shutdown()
