"""Writing a search into its store: trials started, results committed, the optimizer told, the
optimizer checkpointed, failures logged.

Order matters for resuming (see `driver.py`): a result is committed to the study before it is told
to the optimizer, and new candidates are checkpointed before their trials exist.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evomerge.optimizers import Optimizer, checkpoint_bytes, save_checkpoint
from evomerge.runtime.work import Job, TrialKind, WorkerResult
from evomerge.space import SearchSpace
from evomerge.store import RunStore

INTERRUPTED = "interrupted"  # the fail reason's start for a trial cut short: a resume runs it again
FAILURE_LOG = "failures.log"  # in the run directory: each failed trial's full reason and traceback


def recipe_yaml(recipe: dict[str, Any]) -> str:
    from evomerge.recipe import MergeRecipe

    return MergeRecipe.from_dict(recipe).to_yaml()  # validated before a worker ever sees it


class Checkpointer:
    """The optimizer's state: a file beside the run's own SQLite study, or in a server's study
    (written only when it changed: it can be a few hundred KB)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._stored: bytes | None = None

    def save(self, optimizer: Optimizer) -> None:
        if self.store.checkpoint_path is not None:
            save_checkpoint(optimizer, self.store.checkpoint_path)
            return
        data = checkpoint_bytes(optimizer)
        if data != self._stored:
            self.store.write_checkpoint(data)
            self._stored = data


class Recorder:
    def __init__(
        self,
        store: RunStore,
        optimizer: Optimizer,
        checkpointer: Checkpointer,
        space: SearchSpace,
        tasks: list[str],
        run_dir: Path,
        messages: list[str],
    ) -> None:
        self.store, self.optimizer, self.space, self.tasks = store, optimizer, space, tasks
        self.run_dir = run_dir
        self.messages = messages  # said to the user with the summary
        self._checkpointer = checkpointer
        self.jobs: dict[int, Job] = {}  # started trials not yet finished, by trial number
        self.best: dict[str, float] = {}

    def checkpoint(self) -> None:
        self._checkpointer.save(self.optimizer)

    def start(
        self,
        kind: TrialKind,
        label: str,
        genome: Sequence[float] | None,
        recipe: str,
        candidate: int | None = None,
        trial_number: int | None = None,
    ) -> Job:
        """A RUNNING trial for `recipe` (created, or adopted when the optimizer made it)."""
        number = self.store.start_trial(genome, recipe, kind, label, candidate, trial_number)
        job = Job(number, kind, label, recipe, candidate)
        self.jobs[number] = job
        return job

    def start_candidate(self, candidate: Any) -> Job:
        recipe = recipe_yaml(self.space.decode_dict(candidate.genome))
        own_trial = candidate.id if self.optimizer.owns_trials else None
        return self.start(TrialKind.SEARCH, "", list(candidate.genome), recipe, candidate.id, own_trial)

    def record(self, number: int, result: WorkerResult) -> tuple[Job, bool]:
        """Commit the result to the study, then tell the optimizer; the job, and True when COMPLETE."""
        job = self.jobs.pop(number)
        if result.ok:
            self.store.complete_trial(job.trial, result)
            values = [float(result.estimates[t]) for t in self.tasks]
            self.update_best(values)
        else:
            self.store.fail_trial(job.trial, result.reason, {"worker": result.worker})
            self._log(f"trial {job.trial} ({job.kind}{' ' + job.label if job.label else ''})", result)
            values = None
        if job.candidate is not None:
            self.optimizer.tell(job.candidate, values)
        return job, values is not None

    def interrupt(self, number: int, why: str) -> Job | None:
        """FAIL a trial cut short ("interrupted: why"): a resume evaluates it again."""
        self.store.fail_trial(number, f"{INTERRUPTED}: {why}")
        return self.jobs.pop(number, None)

    def update_best(self, values: Sequence[float] | None) -> None:
        for task, value in zip(self.tasks, values or [], strict=False):
            self.best[task] = max(self.best.get(task, float("-inf")), float(value))

    def lost_worker(self, trial: Hashable, worker: str, cause: str) -> None:
        """A worker died mid-evaluation (its process or its node) and its trial ran again on
        another worker: no failed trial, but the log and the summary say so. (Told once Ray has a
        verdict on the worker's node: the trial may be recorded by then.)"""
        event = f"trial {trial}: worker lost, retried on another worker (not a failed trial)"
        self._log(event, WorkerResult.failure(cause, worker))
        self.messages.append(f"trial {trial}: its worker {worker} was lost ({cause}); retried on another")

    def _log(self, heading: str, result: WorkerResult) -> None:
        """The full reason and traceback of a failed trial (or of an event that is none),
        appended to the run's failure log."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        lines = [f"--- {stamp} {heading}"]
        lines += [f"worker: {result.worker or '?'}", f"reason: {result.reason}"]
        if result.traceback:
            lines.append(result.traceback.rstrip())
        with open(self.run_dir / FAILURE_LOG, "a", encoding="utf-8") as log:
            log.write("\n".join(lines) + "\n")
