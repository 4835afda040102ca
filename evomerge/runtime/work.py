"""What flows between the search loop, the scheduler and the workers: trial kinds, jobs, results.

A job is one evaluation of one recipe, for one study trial. Its kind says what the trial is for and
what happens to its result: a search trial's result is told to the optimizer; a parent's or the
baseline's is only recorded. A promotion (`RungJob`) re-scores a completed trial on more items of
the selection pool: it is scheduled like any other job, keyed by its `RungKey`, and its answers are
recorded with the trial's rungs (never told to the optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class TrialKind(str, Enum):
    """A trial's `kind` attribute in the study (its string value is what is stored)."""

    SEARCH = "search"  # a candidate the optimizer asked for
    PARENT = "parent"  # one parent model as it is, once per run
    BASELINE = "baseline"  # the space's uniform baseline recipe, once per run

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Job:
    trial: int  # the study's trial number
    kind: TrialKind
    label: str
    recipe_yaml: str
    candidate: int | None = None  # the optimizer's id of the genome (search trials)


@dataclass(frozen=True)
class RungKey:
    """The scheduler's key of a promotion: trial `trial` to rung `rung`."""

    trial: int
    rung: int


@dataclass(frozen=True)
class Rescore:
    """What a worker is sent for a promotion: the trial's recipe and the items to score."""

    recipe_yaml: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class WorkerResult:
    """One evaluation's outcome, as a worker (or the scheduler, for a worker that died or timed
    out) returns it: the per-task estimates when `ok`, the reason when not."""

    ok: bool
    worker: str = ""
    estimates: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)  # anchor (or rescored) item id -> 0/1
    timings: dict[str, float] = field(default_factory=dict)  # merge, score, total (seconds)
    n_items: int = 0  # items scored
    estimator: str = ""
    reason: str = ""  # one line, for the user (failures only)
    traceback: str = ""  # the full text, for the run's failure log

    @classmethod
    def failure(cls, reason: str, worker: str = "", traceback: str = "") -> WorkerResult:
        return cls(ok=False, worker=worker, reason=reason, traceback=traceback)

    def trial_attrs(self) -> dict[str, object]:
        """The user attributes a COMPLETE trial stores (JSON types: intervals as lists)."""
        attrs: dict[str, object] = {
            "estimates": {t: float(v) for t, v in self.estimates.items()},
            "intervals": {t: [float(lo), float(hi)] for t, (lo, hi) in self.intervals.items()},
            "timings": dict(self.timings),
            "worker": self.worker,
            "n_items": int(self.n_items),
            "estimator": self.estimator,
        }
        if self.answers:  # the anchors used, each with the candidate's 0/1 answer
            attrs["answers"] = {str(item): int(v) for item, v in self.answers.items()}
        return attrs
