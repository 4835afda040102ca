"""The search loop: optimizer.ask -> recipe -> Ray worker -> trial persisted -> optimizer.tell.

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
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from evomerge.errors import ConfigError, StorageError, WorkerStartError
from evomerge.experiment import Experiment
from evomerge.optimizers import (
    OPTIMIZERS,
    Optimizer,
    checkpoint_bytes,
    load_checkpoint,
    make_optimizer,
    optimizer_from_bytes,
    save_checkpoint,
)
from evomerge.runtime.lease import DriverLease
from evomerge.runtime.preflight import check_worker_memory, local_worker_device
from evomerge.runtime.work import Job, TrialKind, WorkerResult
from evomerge.space import SearchSpace
from evomerge.store import RUN_FILE, RunStore, adopt_run, create_run, open_run

INTERRUPTED = "interrupted"
FAILURE_LOG = "failures.log"  # in the run directory: each failed trial's full reason and traceback
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


def _recipe_yaml(recipe: dict[str, Any]) -> str:
    from evomerge.recipe import MergeRecipe

    return MergeRecipe.from_dict(recipe).to_yaml()  # validated before a worker ever sees it


def _init_ray(experiment: Experiment, address: str | None) -> bool:
    """Join `address` / RAY_ADDRESS, or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        num_cpus = experiment.spec.ray.num_cpus or os.cpu_count() or 1
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def actor_factory(experiment: Experiment, space: SearchSpace) -> Callable[[int], Any]:
    import ray

    from evomerge.runtime.worker import Worker

    workers = experiment.spec.workers
    gpus = workers.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    threads = str(max(1, int(workers.cpus_per_worker)))
    remote = ray.remote(Worker).options(
        num_cpus=workers.cpus_per_worker,
        num_gpus=gpus,
        resources=dict(workers.resources),  # workers.resources: only nodes that carry them
        max_restarts=0,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}},
    )

    def make(index: int) -> Any:
        return remote.remote(
            f"worker-{index}",
            space.base,
            space.parents,
            str(experiment.suite_path),
            str(experiment.calibration_path) if experiment.calibration_path else None,
            "cuda" if gpus > 0 else "cpu",
            workers.batch_size,
            experiment.spec.seed,
            workers.dtype,
            workers.placement,
            workers.token_budget,
        )

    return make


class _StopOnSigint:
    """Ctrl-C sets a flag that the loop checks between steps (a KeyboardInterrupt raised at an
    arbitrary point can be swallowed by library finalizers); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _SearchClock:
    """The run's search time over all sessions, written to the study about once a second."""

    def __init__(self, store: RunStore, spent: float, start: float) -> None:
        self.store, self.spent, self.start = store, spent, start
        self._saved = start

    def total(self) -> float:
        return self.spent + time.perf_counter() - self.start

    def save(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._saved >= 1.0:
            self.store.set_search_seconds(self.total())
            self._saved = now


class SearchDriver:
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
    ) -> None:
        from evomerge.fitness.suite import FitnessSuite

        self.experiment = experiment.with_overrides(seed=seed, storage=storage, trials=max_trials)
        self._seed_override = seed
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.ray_address = ray_address
        self.on_progress = on_progress
        self.space = SearchSpace.load(self.experiment.space_path)
        self.tasks = FitnessSuite.load(self.experiment.suite_path).tasks
        self.memory = None  # a local run's worker memory plan, checked before anything starts
        if make_actor is None and not (ray_address or os.environ.get("RAY_ADDRESS")):
            workers = self.experiment.spec.workers
            device = local_worker_device(workers.gpus_per_worker)
            self.memory = check_worker_memory(self.experiment, self.space, device)
        self.budget = self.experiment.spec.budget
        self._make_actor = make_actor
        self.study_name = study  # with --storage and --resume: the server's study to continue
        self.messages: list[str] = []  # said to the user with the summary
        self._stored_checkpoint: bytes | None = None
        self.optimizer, self.store = self._open()
        self.jobs: dict[int, Job] = {}
        self.best: dict[str, float] = {}

    # ----- opening a run ---------------------------------------------------------------------
    def _new_optimizer(self) -> Optimizer:
        spec = self.experiment.spec
        settings = dict(spec.optimizer.settings)
        if spec.optimizer.name == "nevergrad":
            settings.setdefault("budget", self.budget.trials)
            settings.setdefault("num_workers", spec.workers.count)
        return make_optimizer(spec.optimizer.name, self.space.dim, len(self.tasks), spec.seed, settings)

    def _open(self) -> tuple[Optimizer, RunStore]:
        exists = (self.run_dir / RUN_FILE).is_file()
        if self.resume:
            storage = self.experiment.spec.storage
            if not exists and self.study_name and storage:  # a server's study, resumed from this machine
                adopt_run(self.run_dir, storage, self.study_name)
            elif not exists:
                raise ConfigError(
                    f"--resume: {self.run_dir} holds no run ({RUN_FILE} missing); drop --resume, or give "
                    "--storage URL --study NAME to resume a study kept in a database server"
                )
            probe = open_run(self.run_dir)
            optimizer = self._resumed_optimizer(probe)
            store = open_run(self.run_dir, sampler=optimizer.sampler())
            if store.objectives != self.tasks:
                raise ConfigError(
                    f"--resume: the run's objectives {store.objectives} differ from "
                    f"the suite's tasks {self.tasks}"
                )
            self._check_same_run(store)
        else:
            fresh = self._new_optimizer()
            starts = self._start_points()  # checked before anything is written
            if exists:
                raise ConfigError(
                    f"--run-dir {self.run_dir}: a run already exists there; add --resume to continue it, "
                    "or choose another directory"
                )
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            store = create_run(
                self.run_dir,
                f"{self.experiment.name}-{stamp}",
                self.tasks,
                {
                    "experiment": self.experiment.text,
                    "suite_path": str(self.experiment.suite_path),  # audit/export find it from anywhere
                    "space": self.space.to_yaml(),
                    "seed": self.experiment.spec.seed,  # the effective one (--seed included)
                    "optimizer": self.experiment.spec.optimizer.model_dump(mode="json"),
                },
                storage=self.experiment.spec.storage,
                sampler=fresh.sampler(),
            )
            (self.run_dir / "experiment.yaml").write_text(self.experiment.text)
            optimizer = fresh
            for genome in starts:
                optimizer.suggest(genome)
            self._checkpoint(optimizer, store)
        optimizer.bind(store.study)
        return optimizer, store

    def _resumed_optimizer(self, store: RunStore) -> Optimizer:
        if store.checkpoint_path is None:  # a database server's run: the checkpoint is in the study
            data = store.read_checkpoint()
            if data is None:
                raise StorageError(
                    f"study {store.study.study_name!r} holds no optimizer checkpoint; it cannot resume"
                )
            return optimizer_from_bytes(data, f"in study {store.study.study_name!r}")
        path = store.checkpoint_path
        if not path.exists() and OPTIMIZERS.get(self.experiment.spec.optimizer.name).owns_trials:
            # Runs made before 2026-11-24 kept no checkpoint for optuna, and their NSGA-II had an
            # empty search space (see optimizers/nsga2.py): the sampler starts again.
            self.messages.append(
                f"{path} is missing (a run from before optuna checkpoints): the sampler starts again "
                "(new random state; NSGA-II's generations start from the trials of this session)"
            )
            return self._new_optimizer()
        return load_checkpoint(path)

    def _check_same_run(self, store: RunStore) -> None:
        """A resumed run keeps the space, optimizer and seed it was started with (its workers score
        with the run's seed; a changed space would decode the checkpoint's genomes differently).
        The budget, workers and Ray settings may change between sessions."""
        stored = store.study.user_attrs
        copy = self.run_dir / "experiment.yaml"
        if "space" in stored and stored["space"] != self.space.to_yaml():
            raise ConfigError(
                f"--resume: the search space {self.experiment.space_path} differs from the one the run "
                f"was started with; resume with that space (the run's experiment is copied in {copy})"
            )
        if "optimizer" in stored and stored["optimizer"] != self.experiment.spec.optimizer.model_dump(
            mode="json"
        ):
            raise ConfigError(
                f"--resume: optimizer {self.experiment.spec.optimizer.model_dump(mode='json')} differs from "
                f"the run's {stored['optimizer']}; its state is in the checkpoint: resume with the run's "
                f"optimizer settings ({copy}), or start a new run"
            )
        if "seed" in stored:
            if self._seed_override is not None and self._seed_override != stored["seed"]:
                raise ConfigError(
                    f"--seed {self._seed_override}: the run was started with seed {stored['seed']}; "
                    "drop --seed to resume it"
                )
            self.experiment = self.experiment.with_overrides(seed=int(stored["seed"]))

    def _start_points(self) -> list[list[float]]:
        """The genomes of `optimizer.start` (checked before the run is created)."""
        from evomerge.recipe import MergeRecipe

        points = []
        for entry in self.experiment.spec.optimizer.start:
            if entry == "uniform":
                points.append(self.space.uniform_genome())
                continue
            if entry == "baseline":
                recipe = self.space.decode_recipe(self.space.baseline_recipe()[1])
            else:
                path = (self.experiment.root / entry).resolve()
                if not path.is_file():
                    raise ConfigError(
                        f"optimizer.start: {entry!r} does not exist (resolved to {path}); "
                        "give 'uniform', 'baseline' or a recipe YAML path relative to the experiment"
                    )
                recipe = MergeRecipe.from_yaml(path.read_text())
            genome = self.space.try_encode(recipe)
            if genome is None:
                raise ConfigError(
                    f"optimizer.start: {entry!r} ({recipe.merge_method}) is no point of the search space "
                    f"({self.space.method.name}): it needs the space's method, its fixed parameters and "
                    "values within the searched bounds; drop it or widen the space"
                )
            points.append(genome)
        return points

    def _checkpoint(self, optimizer: Optimizer | None = None, store: RunStore | None = None) -> None:
        """The optimizer's state: a file beside the run's own SQLite study, or in a server's study
        (written only when it changed: it can be a few hundred KB)."""
        optimizer, store = optimizer or self.optimizer, store or self.store
        if store.checkpoint_path is not None:
            save_checkpoint(optimizer, store.checkpoint_path)
            return
        data = checkpoint_bytes(optimizer)
        if data != self._stored_checkpoint:
            store.write_checkpoint(data)
            self._stored_checkpoint = data

    # ----- what is left to do ----------------------------------------------------------------
    def _reconcile(self) -> tuple[list[Job], int, int]:
        """After a restart: FAIL the interrupted trials, re-tell or re-issue pending candidates.

        Returns the jobs to run first (parents/baseline not yet done, re-issued candidates), and the
        counts of finished search trials (done, failed)."""
        self.store.mark_interrupted()
        finished = self.store.trials([TrialState.COMPLETE, TrialState.FAIL])
        real = [t for t in finished if not str(t.user_attrs.get("fail_reason", "")).startswith(INTERRUPTED)]
        for t in real:
            if t.state == TrialState.COMPLETE:
                self._update_best(t.values)
        search = [t for t in real if t.user_attrs.get("kind", TrialKind.SEARCH) == TrialKind.SEARCH]
        by_candidate = {t.user_attrs["candidate"]: t for t in search if "candidate" in t.user_attrs}
        jobs: list[Job] = []
        labels = {(t.user_attrs.get("kind"), t.user_attrs.get("label")) for t in real}
        for label, recipe in self.space.parent_recipes():
            if (TrialKind.PARENT, label) not in labels:
                jobs.append(self._start(TrialKind.PARENT, label, None, _recipe_yaml(recipe)))
        label, recipe = self.space.baseline_recipe()
        if (TrialKind.BASELINE, label) not in labels:
            genome = self.space.try_encode(self.space.decode_recipe(recipe))  # None: not in the space
            jobs.append(self._start(TrialKind.BASELINE, label, genome, _recipe_yaml(recipe)))
        reissue = []
        for candidate in self.optimizer.pending():
            trial = by_candidate.get(candidate.id)
            if trial is None:
                reissue.append(candidate)
            else:
                values = trial.values if trial.state == TrialState.COMPLETE else None
                self.optimizer.tell(candidate.id, values)
        for candidate in reissue:
            jobs.append(self._start_candidate(self.optimizer.renew(candidate)))
        self._checkpoint()
        failed = sum(t.state == TrialState.FAIL for t in search)
        return jobs, len(search), failed

    def _start(
        self,
        kind: TrialKind,
        label: str,
        genome: Any,
        recipe_yaml: str,
        candidate: int | None = None,
        trial_number: int | None = None,
    ) -> Job:
        number = self.store.start_trial(genome, recipe_yaml, kind, label, candidate, trial_number)
        job = Job(number, kind, label, recipe_yaml, candidate)
        self.jobs[number] = job
        return job

    def _start_candidate(self, candidate: Any) -> Job:
        recipe = _recipe_yaml(self.space.decode_dict(candidate.genome))
        own_trial = candidate.id if self.optimizer.owns_trials else None
        return self._start(TrialKind.SEARCH, "", list(candidate.genome), recipe, candidate.id, own_trial)

    def _update_best(self, values: Any) -> None:
        for task, value in zip(self.tasks, values or [], strict=False):
            self.best[task] = max(self.best.get(task, float("-inf")), float(value))

    # ----- the loop --------------------------------------------------------------------------
    def run(self) -> SearchSummary:
        """Search until the budget, a stop or a fault, holding the study's driver lease."""
        lease = DriverLease(self.store)
        taken_over = lease.take()  # before anything is read or written for this session
        if taken_over:
            self.messages.append(taken_over)
        try:
            return self._run(lease)
        finally:
            lease.release()

    def _run(self, lease: DriverLease) -> SearchSummary:
        import ray

        from evomerge.runtime.scheduler import Scheduler

        started_ray = _init_ray(self.experiment, self.ray_address) if self._make_actor is None else False
        make_actor = self._make_actor or actor_factory(self.experiment, self.space)
        n_workers = self.experiment.spec.workers.count
        if self._make_actor is None and ray.is_initialized():
            n_workers = self._fit_workers(n_workers)
        first_jobs, done, failed = self._reconcile()
        scheduler = Scheduler(
            make_actor, n_workers, self.experiment.spec.workers.evaluation_timeout_s, self._log_lost_worker
        )
        failures_in_a_row = 0
        limit = self.budget.max_consecutive_failures
        start = time.perf_counter()
        spent = self.store.search_seconds()  # by the run's earlier sessions
        deadline = start + 60 * self.budget.minutes - spent if self.budget.minutes else None
        clock = _SearchClock(self.store, spent, start)
        stopped = "budget"
        messages = self.messages
        in_flight_search = sum(job.kind == TrialKind.SEARCH for job in first_jobs)
        finished: list[tuple[int, WorkerResult]] = []  # ended jobs not yet written and told
        stop = _StopOnSigint()
        try:
            for job in first_jobs:
                scheduler.submit(job.trial, job.recipe_yaml)
            while True:
                stop.check()
                # Hand out work first, so a freed worker starts its next candidate at once; the
                # results that freed it are written and told right after.
                if deadline is not None and time.perf_counter() > deadline:
                    stopped = "time" if stopped == "budget" else stopped
                    if time.perf_counter() > deadline + DEADLINE_GRACE_S:  # stuck evaluations end too
                        for number in scheduler.cancel_running():  # as after Ctrl-C: a resume reruns them
                            self.store.fail_trial(number, f"{INTERRUPTED}: the time budget ran out during it")
                            in_flight_search -= self.jobs.pop(number).kind == TrialKind.SEARCH
                room = scheduler.idle_workers if stopped == "budget" else 0
                if self.budget.trials is not None:
                    room = min(room, self.budget.trials - done - in_flight_search)
                new = [self.optimizer.ask() for _ in range(max(0, room))]
                if new:
                    self._checkpoint()  # before their trials exist: see the module docstring
                for candidate in new:
                    job = self._start_candidate(candidate)
                    in_flight_search += 1
                    scheduler.submit(job.trial, job.recipe_yaml)
                while finished:
                    number, result = finished.pop(0)
                    job = self.jobs.pop(number)
                    ok = self._record(job, result)
                    if job.kind == TrialKind.SEARCH:
                        in_flight_search -= 1
                        done += 1
                        failed += not ok
                        failures_in_a_row = 0 if ok else failures_in_a_row + 1
                    if limit is not None and failures_in_a_row >= limit and stopped == "budget":
                        stopped = "failures"
                        messages.append(
                            f"stopped after {failures_in_a_row} failed trials in a row; the last: "
                            f"{result.reason} (full reasons: {self.run_dir / FAILURE_LOG}; "
                            "budget.max_consecutive_failures sets the limit)"
                        )
                if stopped == "failures":
                    for number in scheduler.cancel_all():
                        self.store.fail_trial(
                            number, f"{INTERRUPTED}: the search stopped on repeated failures"
                        )
                        self.jobs.pop(number, None)
                self._checkpoint()
                clock.save()
                lease.renew()
                self._report(done, failed, scheduler.outstanding, start)
                if scheduler.outstanding == 0:
                    break
                finished = scheduler.wait(timeout=1.0)
        except KeyboardInterrupt:
            stopped = INTERRUPTED
            for number, result in finished:  # evaluations that did finish are kept
                job = self.jobs.pop(number)
                ok = self._record(job, result)
                if job.kind == TrialKind.SEARCH:
                    done, failed = done + 1, failed + (not ok)
            for number in scheduler.cancel_all():
                self.store.fail_trial(number, f"{INTERRUPTED}: the search was stopped (Ctrl-C)")
            self._checkpoint()
        except StorageError as error:
            stopped = "storage"
            scheduler.cancel_all()
            raise error
        except WorkerStartError:
            stopped = "workers"
            for number in scheduler.cancel_all():  # not evaluated: a resume runs them again
                self.store.fail_trial(number, f"{INTERRUPTED}: the workers could not start")
            self._checkpoint()
            raise
        finally:
            stop.restore()
            if stopped != "storage":  # (during an outage the error is already on its way)
                clock.save(force=True)
            utilization = scheduler.busy_seconds / max(
                1e-9, scheduler.n_workers * (time.perf_counter() - start)
            )
            retries = scheduler.retries
            scheduler.shutdown()
            if started_ray:
                ray.shutdown()
        if stopped == "time":
            messages.append(
                f"the time budget of {self.budget.minutes:g} min (over all sessions of this run) is spent; "
                "raise budget.minutes in the experiment to continue with --resume"
            )
        return SearchSummary(
            self.run_dir,
            self.store.study.study_name,
            self.store.storage,
            done - failed,
            failed,
            dict(self.best),
            stopped,
            utilization,
            retries,
            messages,
            clock.total(),
        )

    def _fit_workers(self, requested: int) -> int:
        """The worker count the cluster can place at once: never more actors than its CPUs (and GPUs)
        hold, which would leave trials waiting forever; shrunk with a message, or refused."""
        import ray

        workers = self.experiment.spec.workers
        resources = ray.cluster_resources()
        fits = int(resources.get("CPU", 0) // workers.cpus_per_worker)
        gpus = workers.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        if gpus > 0:
            fits = min(fits, int(resources.get("GPU", 0) // gpus))
        has = f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
        for name, amount in workers.resources.items():
            fits = min(fits, int(resources.get(name, 0) // amount))
            has += f", {resources.get(name, 0):g} {name}"
        if fits < 1:
            needs = f"workers.cpus_per_worker: {workers.cpus_per_worker:g}, GPUs per worker: {gpus:g}"
            needs += f", workers.resources: {dict(workers.resources)}" if workers.resources else ""
            raise ConfigError(
                f"the Ray cluster ({has}) cannot hold one worker ({needs}); lower them or raise "
                "ray.num_cpus (a cluster: ray start --num-cpus/--resources on its nodes)"
            )
        if fits < requested:
            self.messages.append(
                f"workers.count {requested} does not fit the cluster ({has}); running {fits}"
            )
            return fits
        return requested

    def _record(self, job: Job, result: WorkerResult) -> bool:
        """Commit the result to the study, then tell the optimizer; True when COMPLETE."""
        if result.ok:
            self.store.complete_trial(job.trial, result)
            values = [float(result.estimates[t]) for t in self.tasks]
            self._update_best(values)
        else:
            self.store.fail_trial(job.trial, result.reason, {"worker": result.worker})
            self._log_failure(job, result)
            values = None
        if job.candidate is not None:
            self.optimizer.tell(job.candidate, values)
        return values is not None

    def _log_failure(self, job: Job, result: WorkerResult, event: str = "") -> None:
        """The full reason and traceback of a failed trial (or of an `event` that is none),
        appended to the run's failure log."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        lines = [f"--- {stamp} trial {job.trial} ({job.kind}{' ' + job.label if job.label else ''}){event}"]
        lines += [f"worker: {result.worker or '?'}", f"reason: {result.reason}"]
        if result.traceback:
            lines.append(result.traceback.rstrip())
        with open(self.run_dir / FAILURE_LOG, "a", encoding="utf-8") as log:
            log.write("\n".join(lines) + "\n")

    def _log_lost_worker(self, trial: Hashable, worker: str, cause: str) -> None:
        """A worker died mid-evaluation (its process or its node) and its trial runs again on
        another worker: no failed trial, but the log and the summary say so."""
        event = ": worker lost, retried on another worker (not a failed trial)"
        self._log_failure(self.jobs[int(trial)], WorkerResult.failure(cause, worker), event)
        self.messages.append(f"trial {trial}: its worker {worker} was lost ({cause}); retried on another")

    def _report(self, done: int, failed: int, running: int, start: float) -> None:
        if self.on_progress is not None:
            self.on_progress(
                SearchProgress(
                    done, failed, self.budget.trials, dict(self.best), running, time.perf_counter() - start
                )
            )
