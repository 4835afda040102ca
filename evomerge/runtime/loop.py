"""The search loop: ask the optimizer, submit to the scheduler, collect results, record and tell,
until the trial budget, the time budget, the failure limit, a stop request, or a fault.

Work is handed out before results are recorded, so a freed worker starts its next job at once. Jobs
are trials of any kind (`TrialKind`); only search trials count against the budget and come from the
optimizer. (Promotion rungs would be one more source of jobs in `_hand_out`.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evomerge.errors import StorageError, WorkerStartError
from evomerge.runtime.interrupt import StopRequest
from evomerge.runtime.lease import DriverLease
from evomerge.runtime.recorder import FAILURE_LOG, INTERRUPTED, Recorder
from evomerge.runtime.work import Job, TrialKind, WorkerResult
from evomerge.store import RunStore

DEADLINE_GRACE_S = 30.0  # evaluations still running this long after the time budget are stopped


@dataclass
class SearchProgress:
    done: int  # finished search trials (complete + failed), this run in total
    failed: int
    budget: int | None
    best: dict[str, float]
    running: int
    elapsed: float
    phase: str = "search"


@dataclass
class LoopOutcome:
    done: int  # finished search trials of the whole run
    failed: int
    stopped: str  # "budget", "time", "interrupted", "failures"
    utilization: float
    retries: int
    search_seconds: float  # the run's search time over all its sessions


class SearchClock:
    """The run's search time over all sessions, written to the study about once a second."""

    def __init__(self, store: RunStore, spent: float, start: float) -> None:
        self.store, self.spent, self.start = store, spent, start
        self._saved = start
        self._end: float | None = None

    def stop(self) -> None:
        """The session's time ends here (what is saved next and reported is the same)."""
        self._end = time.perf_counter()

    def total(self) -> float:
        return self.spent + (self._end or time.perf_counter()) - self.start

    def save(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._saved >= 1.0:
            self.store.set_search_seconds(self.total())
            self._saved = now


class SearchLoop:
    def __init__(
        self,
        recorder: Recorder,
        scheduler: Any,
        budget: Any,
        lease: DriverLease,
        stop: StopRequest,
        on_progress: Callable[[SearchProgress], None] | None = None,
    ) -> None:
        self.recorder, self.scheduler, self.budget = recorder, scheduler, budget
        self.lease, self.stop, self.on_progress = lease, stop, on_progress
        self.stopped = "budget"
        self.done = self.failed = self.in_flight_search = self.failures_in_a_row = 0
        self.finished: list[tuple[int, WorkerResult]] = []  # ended jobs not yet recorded

    def run(self, first_jobs: list[Job], done: int, failed: int) -> LoopOutcome:
        """Run `first_jobs`, then the optimizer's candidates; `done`/`failed`: earlier sessions'."""
        recorder, scheduler = self.recorder, self.scheduler
        self.done, self.failed = done, failed
        self.in_flight_search = sum(job.kind == TrialKind.SEARCH for job in first_jobs)
        self.start = time.perf_counter()
        spent = recorder.store.search_seconds()  # by the run's earlier sessions
        self.deadline = self.start + 60 * self.budget.minutes - spent if self.budget.minutes else None
        clock = SearchClock(recorder.store, spent, self.start)
        try:
            for job in first_jobs:
                scheduler.submit(job.trial, job.recipe_yaml)
            while True:
                self.stop.check()
                self._past_deadline()
                self._hand_out()
                self._collect()
                recorder.checkpoint()
                clock.save()
                self.lease.renew()
                self._report()
                if scheduler.outstanding == 0:
                    break
                self.finished = scheduler.wait(timeout=1.0)
        except KeyboardInterrupt:
            self.stopped = INTERRUPTED
            for number, result in self.finished:  # evaluations that did finish are kept
                self._count(*recorder.record(number, result))
            self._cancel_all("the search was stopped (Ctrl-C)")
        except StorageError:
            self.stopped = "storage"
            scheduler.cancel_all()
            raise
        except WorkerStartError:
            self.stopped = "workers"
            self._cancel_all("the workers could not start")  # not evaluated: a resume runs them again
            raise
        finally:
            clock.stop()
            if self.stopped != "storage":  # (during an outage the error is already on its way)
                clock.save(force=True)
        utilization = scheduler.busy_seconds / max(
            1e-9, scheduler.n_workers * (time.perf_counter() - self.start)
        )
        return LoopOutcome(
            self.done, self.failed, self.stopped, utilization, scheduler.retries, clock.total()
        )

    def _past_deadline(self) -> None:
        """Past the time budget: ask nothing new; past its grace, stop the stuck evaluations too
        (as after Ctrl-C: a resume runs them again)."""
        if self.deadline is None or time.perf_counter() <= self.deadline:
            return
        self.stopped = "time" if self.stopped == "budget" else self.stopped
        if time.perf_counter() > self.deadline + DEADLINE_GRACE_S:
            for number in self.scheduler.cancel_running():
                job = self.recorder.interrupt(number, "the time budget ran out during it")
                self.in_flight_search -= job is not None and job.kind == TrialKind.SEARCH

    def _hand_out(self) -> None:
        room = self.scheduler.idle_workers if self.stopped == "budget" else 0
        if self.budget.trials is not None:
            room = min(room, self.budget.trials - self.done - self.in_flight_search)
        new = [self.recorder.optimizer.ask() for _ in range(max(0, room))]
        if new:
            self.recorder.checkpoint()  # before their trials exist: see the resume contract
        for candidate in new:
            job = self.recorder.start_candidate(candidate)
            self.in_flight_search += 1
            self.scheduler.submit(job.trial, job.recipe_yaml)

    def _collect(self) -> None:
        """Record the ended jobs; stop on `budget.max_consecutive_failures` failed trials in a row."""
        limit = self.budget.max_consecutive_failures
        while self.finished:
            number, result = self.finished.pop(0)
            job, ok = self.recorder.record(number, result)
            self.in_flight_search -= job.kind == TrialKind.SEARCH
            self._count(job, ok)
            if limit is not None and self.failures_in_a_row >= limit and self.stopped == "budget":
                self.stopped = "failures"
                self.recorder.messages.append(
                    f"stopped after {self.failures_in_a_row} failed trials in a row; the last: "
                    f"{result.reason} (full reasons: {self.recorder.run_dir / FAILURE_LOG}; "
                    "budget.max_consecutive_failures sets the limit)"
                )
        if self.stopped == "failures":
            for number in self.scheduler.cancel_all():
                self.recorder.interrupt(number, "the search stopped on repeated failures")

    def _count(self, job: Job, ok: bool) -> None:
        if job.kind == TrialKind.SEARCH:
            self.done, self.failed = self.done + 1, self.failed + (not ok)
            self.failures_in_a_row = 0 if ok else self.failures_in_a_row + 1

    def _cancel_all(self, why: str) -> None:
        for number in self.scheduler.cancel_all():
            self.recorder.interrupt(number, why)
        self.recorder.checkpoint()

    def _report(self) -> None:
        if self.on_progress is not None:
            elapsed = time.perf_counter() - self.start
            self.on_progress(
                SearchProgress(
                    self.done,
                    self.failed,
                    self.budget.trials,
                    dict(self.recorder.best),
                    self.scheduler.outstanding,
                    elapsed,
                )
            )
