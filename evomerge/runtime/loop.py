"""The search loop: ask the optimizer, submit to the scheduler, collect results, record and tell,
until the trial budget, the time budget, the failure limit, a stop request, or a fault.

Work is handed out before results are recorded, so a freed worker starts its next job at once. Jobs
are trials of any kind (`TrialKind`) and promotions (`RungKey`, from the `Promoter`: first in line
while they hold under their share of the items scored); only search trials count against
`budget.trials` and come from the optimizer; `budget.items` counts the items every job scores.
In the promoter's final race (the end of the budget) challengers' promotions go first, and no new
trial starts while one is left or running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evomerge.errors import StorageError, WorkerStartError
from evomerge.runtime.interrupt import StopRequest
from evomerge.runtime.lease import DriverLease
from evomerge.runtime.promotion import Promoter
from evomerge.runtime.recorder import FAILURE_LOG, INTERRUPTED, Recorder
from evomerge.runtime.work import Job, RungKey, TrialKind, WorkerResult
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
    items: int = 0  # items scored by the run so far (finished jobs)


@dataclass
class LoopOutcome:
    done: int  # finished search trials of the whole run
    failed: int
    stopped: str  # "budget", "time", "interrupted", "failures"
    utilization: float
    retries: int
    search_seconds: float  # the run's search time over all its sessions
    items: int = 0  # items scored by the whole run (search trials, parents, baseline, promotions)


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
        promoter: Promoter | None = None,
        items_per_trial: int = 0,
        items_done: int = 0,
    ) -> None:
        self.recorder, self.scheduler, self.budget = recorder, scheduler, budget
        self.lease, self.stop, self.on_progress = lease, stop, on_progress
        self.promoter, self.items_per_trial = promoter, items_per_trial
        self.items_done = items_done  # items scored by finished jobs, the whole run (earlier sessions too)
        self.stopped = "budget"
        self.done = self.failed = self.in_flight_search = self.failures_in_a_row = 0
        self.finished: list[tuple[int | RungKey, WorkerResult]] = []  # ended jobs not yet recorded

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
            for key, result in self.finished:  # evaluations that did finish are kept
                self._record(key, result)
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
            self.done,
            self.failed,
            self.stopped,
            utilization,
            scheduler.retries,
            clock.total(),
            self.items_done,
        )

    def _past_deadline(self) -> None:
        """Past the time budget: ask nothing new; past its grace, stop the stuck evaluations too
        (as after Ctrl-C: a resume runs them again)."""
        if self.deadline is None or time.perf_counter() <= self.deadline:
            return
        self.stopped = "time" if self.stopped == "budget" else self.stopped
        if time.perf_counter() > self.deadline + DEADLINE_GRACE_S:
            for key in self.scheduler.cancel_running():
                job = self._interrupt(key, "the time budget ran out during it")
                self.in_flight_search -= job is not None and job.kind == TrialKind.SEARCH

    def items_total(self) -> int:
        """Items scored by finished jobs plus those the running jobs will score."""
        running = self.in_flight_search * self.items_per_trial
        return self.items_done + running + (self.promoter.items_running if self.promoter else 0)

    def _items_left(self) -> int | None:
        return None if self.budget.items is None else self.budget.items - self.items_total()

    def racing(self) -> bool:
        """Within the promoter's final race: what is left of the item or time budget is at most its
        `race` fraction."""
        race = self.promoter.race if self.promoter is not None else 0.0
        if race <= 0:
            return False
        left = self._items_left()
        if left is not None and left <= race * self.budget.items:
            return True
        return (
            self.deadline is not None
            and self.deadline - time.perf_counter() <= race * 60 * self.budget.minutes
        )

    def _hand_out(self) -> None:
        room = self.scheduler.idle_workers if self.stopped == "budget" else 0
        racing = self.racing()
        room -= self._hand_out_promotions(room, racing)
        if racing and self._race_goes_on():
            return
        if self.budget.trials is not None:
            room = min(room, self.budget.trials - self.done - self.in_flight_search)
        left = self._items_left()
        if left is not None:
            room = min(room, left // max(self.items_per_trial, 1))
        new = [self.recorder.optimizer.ask() for _ in range(max(0, room))]
        if new:
            self.recorder.checkpoint()  # before their trials exist: see the resume contract
        for candidate in new:
            job = self.recorder.start_candidate(candidate)
            self.in_flight_search += 1
            self.scheduler.submit(job.trial, job.recipe_yaml)

    def _race_goes_on(self) -> bool:
        """A challenger is running (ended ones are recorded after the hand-out), or one that fits
        the items left is waiting for a worker."""
        assert self.promoter is not None
        running = set(self.promoter.running) - {key for key, _ in self.finished}
        return bool(running) or bool(self.promoter.challengers(self._items_left()))

    def _hand_out_promotions(self, room: int, racing: bool) -> int:
        """Promotions for up to `room` free workers, while under their share (in the final race:
        challengers, past the share) and the item budget; how many were handed out."""
        given = 0
        while (
            self.promoter is not None
            and given < room
            and (racing or self.promoter.under_share(self.items_total()))
        ):
            left = self._items_left()
            if left is not None and left <= 0:
                break
            job = self.promoter.next_job(racing, left)
            if job is None:
                break
            key, rescore = job
            if left is not None and len(rescore.items) > left:
                self.promoter.cancel(key)  # the rung would overrun the item budget
                break
            self.scheduler.submit(key, rescore)
            given += 1
        return given

    def _record(self, key: int | RungKey, result: WorkerResult) -> Job | None:
        """Record one ended job (a trial's evaluation, or a promotion); the trial's job."""
        if result.ok:
            self.items_done += result.n_items
        if isinstance(key, RungKey):
            assert self.promoter is not None
            note = self.promoter.record(key, result)
            if note is not None and not result.ok:
                self.recorder.messages.append(note)
            return None
        job, ok = self.recorder.record(key, result)
        self.in_flight_search -= job.kind == TrialKind.SEARCH
        if ok and self.promoter is not None:
            self.promoter.completed(job.trial, job.recipe_yaml, result)
        self._count(job, ok)
        return job

    def _interrupt(self, key: int | RungKey, why: str) -> Job | None:
        """A job cut short: a trial is FAIL "interrupted"; a promotion is simply handed out again."""
        if isinstance(key, RungKey):
            if self.promoter is not None:
                self.promoter.cancel(key)
            return None
        return self.recorder.interrupt(key, why)

    def _collect(self) -> None:
        """Record the ended jobs; stop on `budget.max_consecutive_failures` failed trials in a row."""
        limit = self.budget.max_consecutive_failures
        while self.finished:
            key, result = self.finished.pop(0)
            if self._record(key, result) is None:
                continue
            if limit is not None and self.failures_in_a_row >= limit and self.stopped == "budget":
                self.stopped = "failures"
                self.recorder.messages.append(
                    f"stopped after {self.failures_in_a_row} failed trials in a row; the last: "
                    f"{result.reason} (full reasons: {self.recorder.run_dir / FAILURE_LOG}; "
                    "budget.max_consecutive_failures sets the limit)"
                )
        if self.stopped == "failures":
            for key in self.scheduler.cancel_all():
                self._interrupt(key, "the search stopped on repeated failures")

    def _count(self, job: Job, ok: bool) -> None:
        if job.kind == TrialKind.SEARCH:
            self.done, self.failed = self.done + 1, self.failed + (not ok)
            self.failures_in_a_row = 0 if ok else self.failures_in_a_row + 1

    def _cancel_all(self, why: str) -> None:
        for key in self.scheduler.cancel_all():
            self._interrupt(key, why)
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
                    items=self.items_done,
                )
            )
