"""Steady-state scheduler on a local Ray (one session for the module): every job ends once, a
worker killed mid-evaluation is replaced and its job retried once elsewhere, then FAIL."""

from __future__ import annotations

import os
import time

import pytest
import ray

from evomerge.runtime.scheduler import Scheduler


@ray.remote(num_cpus=0)
class FakeWorker:
    """Stands in for the model worker: sleeps, reports its pid, or dies when told to."""

    def evaluate(self, payload: dict) -> dict:
        if payload.get("die") == "always" or (
            payload.get("die") == "once" and not os.path.exists(payload["flag"])
        ):
            if payload.get("flag"):
                open(payload["flag"], "w").close()
            os._exit(1)
        time.sleep(payload.get("sleep", 0.0))
        return {"ok": True, "value": payload["value"], "pid": os.getpid()}


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
    assert sorted(results) == list(range(9)) and all(r["value"] == k for k, r in results.items())
    assert len({r["pid"] for r in results.values()}) == 3  # all three workers took jobs
    scheduler.shutdown()


def test_killed_worker_is_replaced_and_its_job_retried_elsewhere(tmp_path) -> None:
    scheduler = Scheduler(lambda i: FakeWorker.remote(), 2)
    scheduler.submit("slow", {"value": 1, "sleep": 3.0})
    scheduler.submit("other", {"value": 2, "sleep": 0.1})
    time.sleep(1.0)
    victim = next(job.slot for job in scheduler._running.values() if job.key == "slow")
    ray.kill(scheduler.actors[victim])  # the worker dies mid-evaluation
    results = drain(scheduler)
    assert results["slow"] == {**results["slow"], "ok": True, "value": 1}
    assert results["other"]["value"] == 2
    assert scheduler.retries == 1 and scheduler.replaced == 1 and scheduler.n_workers == 2
    scheduler.shutdown()


def test_a_job_that_kills_two_workers_fails_and_the_pool_survives(tmp_path) -> None:
    scheduler = Scheduler(lambda i: FakeWorker.remote(), 2)
    scheduler.submit("poison", {"value": 0, "die": "always", "flag": str(tmp_path / "f")})
    scheduler.submit("flaky", {"value": 3, "die": "once", "flag": str(tmp_path / "g")})
    results = drain(scheduler)
    assert results["poison"]["ok"] is False and "worker died twice" in results["poison"]["reason"]
    assert results["flaky"] == {**results["flaky"], "ok": True, "value": 3}  # retried once, then fine
    scheduler.submit("after", {"value": 4})
    assert drain(scheduler)["after"]["value"] == 4
    assert scheduler.n_workers == 2
    scheduler.shutdown()
