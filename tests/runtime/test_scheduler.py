"""Steady-state scheduler on a local Ray (one session for the module): every job ends once, a
worker killed mid-evaluation is replaced and its job retried once elsewhere, then FAIL; a replacement
the cluster cannot place holds no job."""

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


def drain(scheduler: Scheduler, within: float = 60.0) -> dict:
    results = {}
    deadline = time.perf_counter() + within
    while scheduler.outstanding:
        assert time.perf_counter() < deadline, f"jobs still outstanding after {within:g} s"
        results.update(scheduler.wait(timeout=1.0))
    return results


def run_until_running(scheduler: Scheduler, key: str) -> tuple[dict, int]:
    """Drive the scheduler until job `key` runs (workers take jobs once started); the results that
    ended meanwhile and the slot running it."""
    results: dict = {}
    deadline = time.perf_counter() + 60
    while not any(job.key == key for job in scheduler._running.values()):
        assert time.perf_counter() < deadline, f"{key} never started"
        results.update(scheduler.wait(timeout=0.1))
    return results, next(job.slot for job in scheduler._running.values() if job.key == key)


def test_every_job_ends_once_without_a_barrier() -> None:
    scheduler = Scheduler(lambda i: FakeWorker.remote(), 3)
    assert scheduler.idle_workers == 3
    ray.get([actor.ping.remote() for actor in scheduler.actors.values()])  # all up: all take jobs
    for k in range(9):
        scheduler.submit(k, {"value": k, "sleep": 0.05 * (k % 3)})
    assert scheduler.idle_workers == 0
    results = drain(scheduler)
    assert sorted(results) == list(range(9)) and all(r.estimates["value"] == k for k, r in results.items())
    assert len({r.worker for r in results.values()}) == 3  # all three workers took jobs
    scheduler.shutdown()


def test_killed_worker_is_replaced_and_its_job_retried_elsewhere(tmp_path) -> None:
    lost = []
    scheduler = Scheduler(lambda i: FakeWorker.remote(), 2, on_lost=lambda *event: lost.append(event))
    scheduler.submit("slow", {"value": 1, "sleep": 3.0})
    scheduler.submit("other", {"value": 2, "sleep": 0.1})
    results, victim = run_until_running(scheduler, "slow")
    time.sleep(0.5)
    ray.kill(scheduler.actors[victim])  # the worker dies mid-evaluation
    results.update(drain(scheduler))
    assert results["slow"].ok is True and results["slow"].estimates["value"] == 1
    assert results["other"].estimates["value"] == 2
    assert scheduler.retries == 1 and scheduler.replaced == 1 and scheduler.n_workers == 2
    assert [(key, worker) for key, worker, _ in lost] == [("slow", "ready")]  # its ping's answer
    assert "ActorDiedError" in lost[0][2]
    scheduler.shutdown()


def test_a_replacement_the_cluster_cannot_place_holds_no_job() -> None:
    """As after a node's loss with no room elsewhere: the retry and every later job run on the
    worker that is left, none waits on the replacement that never starts."""
    nowhere = FakeWorker.options(resources={"a-lost-node": 1})  # no node has this resource
    lost = []
    scheduler = Scheduler(
        lambda i: FakeWorker.remote() if i < 2 else nowhere.remote(),
        2,
        on_lost=lambda *event: lost.append(event),
    )
    scheduler.submit("slow", {"value": 1, "sleep": 3.0})
    scheduler.submit("other", {"value": 2, "sleep": 0.1})
    results, victim = run_until_running(scheduler, "slow")
    time.sleep(0.5)
    ray.kill(scheduler.actors[victim])
    for k in range(3):
        scheduler.submit(k, {"value": k})
    results.update(drain(scheduler))
    assert sorted(results, key=str) == [0, 1, 2, "other", "slow"] and all(r.ok for r in results.values())
    assert len({results[k].worker for k in ("slow", 0, 1, 2)}) == 1  # all on the survivor
    assert len(lost) == 1 and scheduler.retries == 1 and scheduler.n_workers == 2
    assert scheduler.idle_workers == 2  # the survivor and the replacement still waiting for room
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


@ray.remote(num_cpus=0)
class DyingStartWorker(FakeWorker.__ray_actor_class__):  # type: ignore[name-defined]
    """Dies while loading (as a worker killed for memory does): no error raised, just gone."""

    def __init__(self) -> None:
        os._exit(1)


def test_workers_that_keep_dying_while_starting_stop_the_search() -> None:
    from evomerge.errors import WorkerStartError
    from evomerge.runtime.scheduler import START_DEATHS

    scheduler = Scheduler(lambda i: DyingStartWorker.remote(), 1)
    scheduler.submit("a", {"value": 1})
    with pytest.raises(WorkerStartError, match=f"died {START_DEATHS} times in a row while starting"):
        drain(scheduler)
    assert scheduler.replaced == START_DEATHS - 1 and scheduler.retries == 0
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


def test_death_cause_names_a_lost_node() -> None:
    from evomerge.runtime.scheduler import death_cause

    text = (  # Ray 2.60's words for an actor on a node that stopped answering its health checks
        "The actor died unexpectedly before finishing this task.\n\tclass_name: Worker\n"
        "\tactor_id: 4f01254e48c06172f8f38efe01000000\n\tpid: 6601\n\tip: 192.0.2.2\n"
        "The actor died because its node has died. Node Id: 9237c7e7761a4f84ae38c49d847b90b03f711\n"
        "\tthe actor's node was terminated unexpectedly: health check failed due to missing too many "
        "heartbeats"
    )
    assert death_cause(RuntimeError(text)) == (
        "its node was lost (node-9237c7e7; the actor's node was terminated unexpectedly: health check "
        "failed due to missing too many heartbeats)"
    )
    assert death_cause(RuntimeError("plain words")) == "RuntimeError: plain words"


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
