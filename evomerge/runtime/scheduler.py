"""Steady-state scheduling over a pool of Ray actors: every free worker gets the next job at once.

There is no generation barrier: a job is submitted as soon as a worker frees up, so evaluation
times may vary without idling the pool. A worker that dies mid-evaluation is replaced; its job is
retried once on another worker, then reported as a failure with the cause. A worker that cannot
start (its constructor raised) stops everything with `WorkerStartError`: every later worker would
fail the same way. A job running past `evaluation_timeout` seconds has its worker killed and
replaced, and fails with the reason.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from evomerge.errors import WorkerStartError
from evomerge.runtime.work import WorkerResult

ActorFactory = Callable[[int], Any]  # worker index -> actor; .evaluate.remote(payload) -> WorkerResult


@dataclass
class _Running:
    key: Hashable
    payload: Any
    slot: int
    attempt: int
    started: float


def root_cause(error: BaseException) -> str:
    """The original error of a Ray actor failure as one line ("ModelLoadError: ... does not exist"),
    read from the traceback text Ray carries, else the error's own first line."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):  # the raised exception is the traceback's last "Name: message" line
        head, _, message = line.partition(":")
        name = head.split(".")[-1]  # "evomerge.errors.ModelLoadError" -> "ModelLoadError"
        if message and name.isidentifier() and name.endswith(("Error", "Exception", "Interrupt")):
            return f"{name}:{message}"[:500]
    return f"{type(error).__name__}: {lines[0][:400] if lines else ''}".rstrip(": ")


def is_start_failure(error: BaseException) -> bool:
    """Ray's words for an actor whose constructor raised."""
    return "creation task" in str(error)


class Scheduler:
    def __init__(
        self, make_actor: ActorFactory, n_workers: int, evaluation_timeout: float | None = None
    ) -> None:
        self._make_actor = make_actor
        self.evaluation_timeout = evaluation_timeout
        self._spawned = 0
        self.actors: dict[int, Any] = {}
        # A worker's start-up (loading its models: minutes for a 7B) is not its evaluation's time:
        # the timeout counts from when its `ping` answers, i.e. once its constructor has finished.
        self._starting: dict[int, Any] = {}  # slot -> its actor's pending ping
        self._ready_at: dict[int, float] = {}
        for slot in range(n_workers):
            self._spawn_into(slot)
        self._free = deque(range(n_workers))
        self._queue: deque[tuple[Hashable, Any, int]] = deque()
        self._running: dict[Any, _Running] = {}
        self.busy_seconds = 0.0
        self.retries = 0
        self.replaced = 0

    def _spawn_into(self, slot: int) -> None:
        actor = self._make_actor(self._spawned)
        self._spawned += 1
        self.actors[slot] = actor
        self._ready_at.pop(slot, None)
        if self.evaluation_timeout is not None:
            self._starting[slot] = actor.ping.remote()

    @property
    def n_workers(self) -> int:
        return len(self.actors)

    @property
    def idle_workers(self) -> int:
        """Workers with nothing to do once the queue is drained (how many new jobs to ask for)."""
        return max(0, len(self._free) - len(self._queue))

    @property
    def outstanding(self) -> int:
        return len(self._running) + len(self._queue)

    def submit(self, key: Hashable, payload: Any, attempt: int = 0) -> None:
        self._queue.append((key, payload, attempt))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._free and self._queue:
            key, payload, attempt = self._queue.popleft()
            slot = self._free.popleft()
            ref = self.actors[slot].evaluate.remote(payload)
            self._running[ref] = _Running(key, payload, slot, attempt, time.perf_counter())

    def wait(self, timeout: float | None = None) -> list[tuple[Hashable, WorkerResult]]:
        """Block until at least one job ends (or `timeout`); return every ended (key, result)."""
        if not self._running:
            return []
        ready, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        done: list[tuple[Hashable, WorkerResult]] = []
        for ref in ready:
            job = self._running.pop(ref)
            self.busy_seconds += time.perf_counter() - job.started
            try:
                result = ray.get(ref)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
                if is_start_failure(error):
                    raise WorkerStartError(f"a search worker could not start: {root_cause(error)}") from None
                self._replace(job.slot)
                if job.attempt == 0:
                    self.retries += 1
                    self._queue.appendleft((job.key, job.payload, 1))
                else:
                    reason = f"worker died twice (last: {root_cause(error)})"
                    done.append((job.key, WorkerResult.failure(reason)))
                continue
            self._free.append(job.slot)
            done.append((job.key, result))
        done += self._expire()
        self._dispatch()
        return done

    def _expire(self) -> list[tuple[Hashable, WorkerResult]]:
        """Jobs past the evaluation timeout: their workers killed and replaced, the jobs failed."""
        if self.evaluation_timeout is None:
            return []
        now = time.perf_counter()
        if self._starting:
            answered, _ = ray.wait(list(self._starting.values()), num_returns=len(self._starting), timeout=0)
            for slot in [s for s, ref in self._starting.items() if ref in answered]:
                self._ready_at[slot] = now
                del self._starting[slot]

        def running_for(job: _Running) -> float:
            ready = self._ready_at.get(job.slot)
            return 0.0 if ready is None else now - max(job.started, ready)

        expired = [ref for ref, job in self._running.items() if running_for(job) > self.evaluation_timeout]
        done = []
        for ref in expired:
            job = self._running.pop(ref)
            self.busy_seconds += now - job.started
            self._replace(job.slot)
            reason = (
                f"TimeoutError: the evaluation ran past {self.evaluation_timeout:g} s; its worker was "
                "replaced (raise workers.evaluation_timeout_s if evaluations are this slow)"
            )
            done.append((job.key, WorkerResult.failure(reason)))
        return done

    def cancel_running(self) -> list[Hashable]:
        """Stop the running jobs now (their workers killed and replaced); their keys."""
        keys = []
        for job in list(self._running.values()):
            self._replace(job.slot)
            keys.append(job.key)
        self._running.clear()
        return keys

    def _replace(self, slot: int) -> None:
        """A dead worker's slot gets a fresh actor (the pool keeps its size)."""
        with contextlib.suppress(Exception):  # already gone
            ray.kill(self.actors[slot])
        self._spawn_into(slot)
        self.replaced += 1
        self._free.append(slot)

    def cancel_all(self) -> list[Hashable]:
        """Stop: forget queued and running jobs (their actors are killed by `shutdown`); their keys."""
        keys = [k for k, _, _ in self._queue] + [job.key for job in self._running.values()]
        self._queue.clear()
        self._running.clear()
        return keys

    def shutdown(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor)
        self.actors.clear()
