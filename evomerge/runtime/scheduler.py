"""Steady-state scheduling over a pool of Ray actors: every free worker gets the next job at once.

There is no generation barrier: a job is submitted as soon as a worker frees up, so evaluation
times may vary without idling the pool. A worker takes jobs once it has started (its `ping`
answered), so a replacement the cluster cannot place (its node was lost and no other node has
room) never holds a job: the pool carries on with the workers it has.

A worker that dies mid-evaluation (its process, or its whole node) is replaced and its job retried
once on another worker at once; `on_lost` hears of it (a lost worker is no failed trial) when Ray
has a verdict on the worker's node: dead (the node was lost), or still alive after `NODE_VERDICT_S`
(the worker alone died). A job whose second worker dies too is reported as a failure with the
cause. A worker that cannot start (its constructor raised) stops everything with
`WorkerStartError`: every later worker would fail the same way; so does a slot whose workers die
while starting `START_DEATHS` times in a row. A job running past `evaluation_timeout` seconds has
its worker killed and replaced, and fails with the reason.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError

from evomerge.errors import WorkerStartError
from evomerge.runtime.work import WorkerResult

ActorFactory = Callable[[int], Any]  # worker index -> actor; .evaluate.remote(payload) -> WorkerResult
LostWorker = Callable[[Hashable, str, str], None]  # (job key, the dead worker's id, why it died)
START_DEATHS = 3  # a slot whose workers die this many times in a row while starting stops the search
NODE_VERDICT_S = 60.0  # how long a lost worker's node is watched for Ray to mark it dead
# A worker names its node in its id (worker.py): "worker-3@host:pid/node-<node id's first 8 hex>".
_NODE_IN_ID = re.compile(r"/node-([0-9a-f]{8})$")


@dataclass
class _Running:
    key: Hashable
    payload: Any
    slot: int
    attempt: int
    started: float


@dataclass
class _Lost:
    key: Hashable
    worker: str
    cause: str
    node: str | None  # the worker's node (first 8 hex digits) while its verdict is awaited
    since: float


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


def death_cause(error: BaseException) -> str:
    """Why an actor died, as one line: the loss of its node as Ray words it, else its root cause."""
    text = str(error)
    node = re.search(r"its node has died\. Node Id: ([0-9a-f]+)", text)
    if node is None:
        return root_cause(error)
    detail = [line.strip() for line in text.splitlines() if line.strip()][-1]
    return f"its node was lost (node-{node.group(1)[:8]}; {detail})"[:500]


def is_start_failure(error: BaseException) -> bool:
    """Ray's words for an actor whose constructor raised."""
    return "creation task" in str(error)


class Scheduler:
    def __init__(
        self,
        make_actor: ActorFactory,
        n_workers: int,
        evaluation_timeout: float | None = None,
        on_lost: LostWorker | None = None,
    ) -> None:
        self._make_actor = make_actor
        self.evaluation_timeout = evaluation_timeout
        self._on_lost = on_lost
        self._spawned = 0
        self.actors: dict[int, Any] = {}
        self._starting: dict[Any, int] = {}  # a starting worker's pending ping -> its slot
        self._names: dict[int, str] = {}  # slot -> its started worker's id (the ping's answer)
        self._start_deaths: dict[int, int] = {}  # slot -> its workers' deaths in a row while starting
        self._free: deque[int] = deque()  # started workers with no job
        self._queue: deque[tuple[Hashable, Any, int]] = deque()
        self._running: dict[Any, _Running] = {}
        self._lost: list[_Lost] = []  # lost workers whose node has no verdict yet
        self.busy_seconds = 0.0
        self.retries = 0
        self.replaced = 0
        for slot in range(n_workers):
            self._spawn_into(slot)

    def _spawn_into(self, slot: int) -> None:
        actor = self._make_actor(self._spawned)
        self._spawned += 1
        self.actors[slot] = actor
        self._names.pop(slot, None)
        self._starting[actor.ping.remote()] = slot

    @property
    def n_workers(self) -> int:
        return len(self.actors)

    @property
    def idle_workers(self) -> int:
        """Workers with nothing to do once the queue is drained (how many new jobs to ask for);
        a starting worker counts: its job waits in the queue until it is up."""
        return max(0, len(self._free) + len(self._starting) - len(self._queue))

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
        """Block until at least one job ends or a worker starts (or `timeout`); return every ended
        (key, result)."""
        pending = [*self._running, *self._starting]
        if not pending:
            return []
        ready, _ = ray.wait(pending, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
        done: list[tuple[Hashable, WorkerResult]] = []
        for ref in ready:
            if ref in self._starting:
                self._started(ref)
            else:
                done += self._ended(ref)
        done += self._expire()
        self._dispatch()
        self._report_lost()
        return done

    def _started(self, ping: Any) -> None:
        """A worker's ping answered: it takes jobs. A constructor that raised stops the search."""
        slot = self._starting.pop(ping)
        try:
            self._names[slot] = str(ray.get(ping))
        except RayActorError as error:
            if is_start_failure(error):
                raise WorkerStartError(f"a search worker could not start: {root_cause(error)}") from None
            deaths = self._start_deaths.get(slot, 0) + 1
            if deaths >= START_DEATHS:
                raise WorkerStartError(
                    f"search workers died {deaths} times in a row while starting (last: {death_cause(error)})"
                ) from None
            self._start_deaths[slot] = deaths
            self._replace(slot)
            return
        self._start_deaths.pop(slot, None)
        self._free.append(slot)

    def _ended(self, ref: Any) -> list[tuple[Hashable, WorkerResult]]:
        job = self._running.pop(ref)
        self.busy_seconds += time.perf_counter() - job.started
        try:
            result = ray.get(ref)
        except RayActorError as error:  # the worker died: its process, or its node
            worker, cause = self._names.get(job.slot, "?"), death_cause(error)
            self._replace(job.slot)
            if job.attempt > 0:
                return [(job.key, WorkerResult.failure(f"worker died twice (last: {cause})", worker))]
            self.retries += 1
            self._queue.appendleft((job.key, job.payload, 1))
            named = _NODE_IN_ID.search(worker)  # no verdict needed where Ray's words give it
            node = named.group(1) if named and not cause.startswith("its node was lost") else None
            self._lost.append(_Lost(job.key, worker, cause, node, time.perf_counter()))
            return []
        self._free.append(job.slot)
        return [(job.key, result)]

    def _report_lost(self, final: bool = False) -> None:
        """Tell `on_lost` of each lost worker whose node has a verdict (see the module docstring);
        `final`: of every one, with what is known now."""
        if not self._lost:
            return
        dead = (
            {n["NodeID"][:8] for n in ray.nodes() if not n["Alive"]}
            if any(x.node for x in self._lost)
            else set()
        )
        now = time.perf_counter()
        waiting = []
        for lost in self._lost:
            if lost.node in dead:
                cause = f"its node was lost (node-{lost.node} left the cluster; {lost.cause})"
            elif lost.node is not None and not final and now - lost.since <= NODE_VERDICT_S:
                waiting.append(lost)
                continue
            else:
                cause = lost.cause
            if self._on_lost is not None:
                self._on_lost(lost.key, lost.worker, cause)
        self._lost = waiting

    def _expire(self) -> list[tuple[Hashable, WorkerResult]]:
        """Jobs past the evaluation timeout: their workers killed and replaced, the jobs failed. (A
        job starts on a started worker, so its worker's start-up never counts.)"""
        if self.evaluation_timeout is None:
            return []
        now = time.perf_counter()
        expired = [ref for ref, job in self._running.items() if now - job.started > self.evaluation_timeout]
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
        """A dead worker's slot gets a fresh actor (the pool keeps its size), which takes jobs once
        it has started."""
        with contextlib.suppress(Exception):  # already gone
            ray.kill(self.actors[slot])
        self._spawn_into(slot)
        self.replaced += 1

    def cancel_all(self) -> list[Hashable]:
        """Stop: forget queued and running jobs (their actors are killed by `shutdown`); their keys."""
        keys = [k for k, _, _ in self._queue] + [job.key for job in self._running.values()]
        self._queue.clear()
        self._running.clear()
        return keys

    def shutdown(self) -> None:
        self._report_lost(final=True)
        for actor in self.actors.values():
            ray.kill(actor)
        self.actors.clear()
        self._starting.clear()
