"""A search session, the public facade over its parts: `opening` (a new run, or a resumed one, and
what a session starts with), `cluster` (Ray and the worker actors), `loop` (ask, submit, collect,
tell), `recorder` (the study and the optimizer's checkpoint), `interrupt` (Ctrl-C).

Resume contract (what makes `--resume` continue exactly):
- New candidates are asked, the optimizer is checkpointed, and only then are their trials created,
  so every trial's candidate id is known to the checkpoint. (An optimizer that owns the study's
  trials creates them when it asks; one the checkpoint does not know is FAIL "interrupted" on
  resume, and the restored optimizer asks its point again.)
- A result is committed to the study before it is told to the optimizer; on resume, a candidate
  still pending in the checkpoint whose trial is finished is re-told from the study (not
  re-evaluated), and one whose trial was cut short (RUNNING when the driver died, now FAIL
  "interrupted") is evaluated again (`Optimizer.renew`: under the same id, or, for an optimizer
  that owns the study's trials, as a new trial with the same genes).
- Every optimizer is checkpointed (random state included; optuna's sampler too), so a resumed
  run asks the candidates an uninterrupted run would have asked.
- Parents and the baseline are evaluated first (trials of kind parent / baseline), once per run.
- `budget.minutes` is the search time of the whole run, over all its sessions: each session adds
  its time to the study's `search_seconds` attribute (written about once a second and when it
  stops), and a resumed run gets what is left. Time between sessions does not count.
- Ctrl-C stops at the next step of the loop: finished evaluations are recorded, running ones are
  FAIL "interrupted" (evaluated again on resume, as after `kill -9`), the checkpoint is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.experiment import Experiment
from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.runtime.cluster import actor_factory, fit_workers
from evomerge.runtime.cluster import init_ray as _init_ray
from evomerge.runtime.interrupt import StopRequest
from evomerge.runtime.lease import DriverLease
from evomerge.runtime.loop import SearchLoop, SearchProgress
from evomerge.runtime.opening import open_search, reconcile, run_plan
from evomerge.runtime.preflight import (
    check_fitness,
    check_worker_memory,
    dtype_warning,
    local_worker_device,
    search_plan,
)
from evomerge.runtime.promotion import open_promotion
from evomerge.runtime.recorder import FAILURE_LOG, INTERRUPTED, Recorder
from evomerge.space import SearchSpace

__all__ = ["FAILURE_LOG", "INTERRUPTED", "SearchDriver", "SearchProgress", "SearchSummary", "actor_factory"]


@dataclass
class SearchSummary:
    run_dir: Path
    study: str
    storage: str
    complete: int
    failed: int
    best: dict[str, float]
    stopped: str  # "budget", "time", "interrupted", "storage", "failures"
    utilization: float
    retries: int = 0
    messages: list[str] = field(default_factory=list)
    search_seconds: float = 0.0  # the run's search time over all its sessions
    items: int = 0  # items scored by the whole run


class SearchDriver:
    """One search session: opened (or resumed) on construction, run by `run`.

    `stop`: the caller's Ctrl-C handler (see interrupt.py), installed before this driver is built so
    that a Ctrl-C at start-up is honoured too; without one, `run` installs its own for its duration."""

    def __init__(
        self,
        experiment: Experiment,
        run_dir: Path,
        *,
        resume: bool = False,
        storage: str | None = None,
        ray_address: str | None = None,
        max_trials: int | None = None,
        seed: int | None = None,
        on_progress: Callable[[SearchProgress], None] | None = None,
        make_actor: Callable[[int], Any] | None = None,
        study: str | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        experiment = experiment.with_overrides(seed=seed, storage=storage, trials=max_trials)
        self.run_dir = Path(run_dir)
        self.ray_address = ray_address
        self.on_progress = on_progress
        self.stop = stop
        self.space = SearchSpace.load(experiment.space_path)
        self.memory = None  # a local run's worker memory plan, checked before anything starts
        if make_actor is None and not (ray_address or os.environ.get("RAY_ADDRESS")):
            device = local_worker_device(experiment.spec.workers.gpus_per_worker)
            self.memory = check_worker_memory(experiment, self.space, device)
        self.suite = FitnessSuite.load(experiment.suite_path)
        self.tasks = self.suite.tasks
        # The evaluation plan, decided once here for a new run (a resumed run's is in its study),
        # and the evaluator every worker builds on it: what every worker would fail on.
        made = None if resume else search_plan(experiment, self.suite)
        if made is not None:
            check_fitness(experiment, self.space, self.suite, made)
        self._make_actor = make_actor
        # Cut short, the opening leaves no run, or one that resumes (see opening.py).
        with stop.interruptible() if stop else contextlib.nullcontext():
            opened = open_search(
                experiment,
                self.space,
                self.tasks,
                self.run_dir,
                resume=resume,
                study=study,
                seed_override=seed,
            )
        self.experiment, self.optimizer, self.store = opened.experiment, opened.optimizer, opened.store
        self.plan = run_plan(self.store, self.experiment, self.suite, made)
        if made is None:
            check_fitness(self.experiment, self.space, self.suite, self.plan)
        self.budget = self.experiment.spec.budget
        self.messages = opened.messages  # said to the user with the summary
        slow = dtype_warning(self.experiment.spec.workers.dtype, self.memory.device if self.memory else "")
        if slow:
            self.messages.append(slow)
        self.recorder = Recorder(
            self.store, self.optimizer, opened.checkpoint, self.space, self.tasks, self.run_dir, self.messages
        )

    def run(self) -> SearchSummary:
        """Search until the budget, a stop or a fault, holding the study's driver lease."""
        stop = self.stop or StopRequest().install()
        lease = DriverLease(self.store)
        try:
            taken_over = lease.take()  # before anything is read or written for this session
            if taken_over:
                self.messages.append(taken_over)
            try:
                return self._run(lease, stop)
            finally:
                lease.release()
        finally:
            if stop is not self.stop:
                stop.restore()

    def _run(self, lease: DriverLease, stop: StopRequest) -> SearchSummary:
        import ray

        from evomerge.runtime.scheduler import Scheduler

        started_ray = False
        if self._make_actor is None:
            with stop.interruptible():  # half a minute on a busy machine; safe to cut short
                started_ray = _init_ray(self.experiment, self.ray_address)
        try:
            make_actor = self._make_actor or actor_factory(self.experiment, self.space, self.plan)
            n_workers = self.experiment.spec.workers.count
            if self._make_actor is None and ray.is_initialized():
                n_workers = self._fit_workers(n_workers)
            first_jobs, done, failed = reconcile(self.recorder, self.space)
            promoter, items_per_trial, items_done = open_promotion(
                self.experiment, self.plan, self.tasks, self.store
            )
            timeout = self.experiment.spec.workers.evaluation_timeout_s
            scheduler = Scheduler(make_actor, n_workers, timeout, self.recorder.lost_worker)
            try:
                loop = SearchLoop(
                    self.recorder,
                    scheduler,
                    self.budget,
                    lease,
                    stop,
                    self.on_progress,
                    promoter,
                    items_per_trial,
                    items_done,
                )
                outcome = loop.run(first_jobs, done, failed)
            finally:
                scheduler.shutdown()
        finally:
            if started_ray:
                ray.shutdown()
        if promoter is not None:
            self.messages.append(promoter.summary())
        if outcome.stopped == "time":
            self.messages.append(
                f"the time budget of {self.budget.minutes:g} min (over all sessions of this run) is spent; "
                "raise budget.minutes in the experiment to continue with --resume"
            )
        return SearchSummary(
            self.run_dir,
            self.store.study_name,
            self.store.storage,
            outcome.done - outcome.failed,
            outcome.failed,
            dict(self.recorder.best),
            outcome.stopped,
            outcome.utilization,
            outcome.retries,
            self.messages,
            outcome.search_seconds,
            outcome.items,
        )

    def _fit_workers(self, requested: int) -> int:
        return fit_workers(self.experiment, requested, self.messages)
