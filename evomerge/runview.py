"""A read-only view of a run: its trials, front, knee, history and estimator audit.

Built from the Optuna study of a run (see `evomerge.store`), it is what `status`, `front`,
`plot` and `export` read. Nothing here writes to the storage, so a view can be taken while a
search is still running.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from evomerge import pareto
from evomerge.errors import ConfigError

# Optuna refuses to change a finished trial's attributes, so the measured accuracies of an audit
# (written after the trial completed) live in the study's user attributes, one key per trial.
AUDIT_KEY_PREFIX = "audit."
# Promotion (evomerge/runtime/promotion.py) writes there too, for the same reason: its plan, each
# promoted trial's rungs, and the incumbent.
RUNGS_KEY_PREFIX = "rungs."
PROMOTION_ATTR = "promotion"
INCUMBENT_ATTR = "incumbent"


def audit_key(number: int) -> str:
    """Study user attribute that holds trial `number`'s audit {task: measured accuracy}."""
    return f"{AUDIT_KEY_PREFIX}{number}"


def rung_key(number: int) -> str:
    """Study user attribute that holds trial `number`'s promotion rungs {"1": {estimates, ...}}."""
    return f"{RUNGS_KEY_PREFIX}{number}"


@dataclass(frozen=True)
class TrialRecord:
    """One trial, as the inspect commands need it (a plain copy of the stored attributes)."""

    number: int
    state: str
    kind: str
    label: str
    values: tuple[float, ...] | None
    estimates: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    audit: dict[str, float] | None
    recipe: str | None
    fail_reason: str | None
    completed: datetime | None
    started: datetime | None
    timings: dict[str, float] = field(default_factory=dict)
    estimator: str | None = None
    n_items: int | None = None
    # the point of the search space, or None for a recipe that is none (the parents; a baseline
    # of another method than the space's; runs before 2026-11-24 stored [] for those)
    genome: tuple[float, ...] | None = None
    # the highest promotion rung the trial reached (0: the search anchors only); `values`,
    # `estimates` and `intervals` are that rung's, `search_estimates` the anchors'
    rung: int = 0
    search_estimates: dict[str, float] = field(default_factory=dict)

    def to_dict(self, objectives: Sequence[str]) -> dict[str, Any]:
        """JSON-ready form; tasks in objective order."""
        return {
            "number": self.number,
            "state": self.state,
            "kind": self.kind,
            "label": self.label,
            "estimates": {t: self.estimates.get(t) for t in objectives},
            "intervals": {t: list(self.intervals[t]) if t in self.intervals else None for t in objectives},
            "audit": {t: self.audit.get(t) for t in objectives} if self.audit else None,
            "estimator": self.estimator,
            "n_items": self.n_items,
            "rung": self.rung,
            "search_estimates": {t: self.search_estimates.get(t) for t in objectives},
            "timings": self.timings,
            "fail_reason": self.fail_reason,
            "completed": self.completed.isoformat() if self.completed else None,
            "genome": list(self.genome) if self.genome is not None else None,
        }


def record_from_trial(
    trial: Any,
    objectives: Sequence[str],
    audit: Mapping[str, float] | None = None,
    rungs: Mapping[str, Any] | None = None,
) -> TrialRecord:
    """Copy an `optuna.trial.FrozenTrial` into a TrialRecord; `audit` overrides the trial's own;
    `rungs` (the study's `rungs.N`): its promotions, whose highest rung gives the values."""
    attrs = trial.user_attrs
    values = tuple(float(v) for v in trial.values) if trial.values is not None else None
    estimates = {str(k): float(v) for k, v in (attrs.get("estimates") or {}).items()}
    if not estimates and values is not None:
        estimates = dict(zip(objectives, values, strict=True))
    intervals = {str(k): (float(v[0]), float(v[1])) for k, v in (attrs.get("intervals") or {}).items()}
    search_estimates, rung = dict(estimates), 0
    if rungs and values is not None:
        rung = max(int(k) for k in rungs)
        top = rungs[str(rung)]
        estimates = {str(k): float(v) for k, v in top["estimates"].items()}
        intervals = {str(k): (float(v[0]), float(v[1])) for k, v in top["intervals"].items()}
        values = tuple(estimates[t] for t in objectives)
    audit = audit or attrs.get("audit")
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        kind=str(attrs.get("kind", "search")),
        label=str(attrs.get("label", "")),
        values=values,
        estimates=estimates,
        intervals=intervals,
        audit={str(k): float(v) for k, v in audit.items()} if audit else None,
        recipe=attrs.get("recipe"),
        fail_reason=attrs.get("fail_reason"),
        completed=trial.datetime_complete,
        started=trial.datetime_start,
        timings={str(k): float(v) for k, v in (attrs.get("timings") or {}).items()},
        estimator=attrs.get("estimator"),
        n_items=attrs.get("n_items"),
        genome=tuple(float(g) for g in attrs["genome"]) if attrs.get("genome") else None,
        rung=rung,
        search_estimates=search_estimates,
    )


class RunView:
    """Trials of one study, with the Pareto computations over its completed trials.

    Objectives are per-task accuracies in [0, 1], so the hypervolume is measured from the worst
    accuracy on every task: it is bounded by 1 and comparable between runs on the same suite.
    """

    def __init__(
        self,
        name: str,
        objectives: Sequence[str],
        directions: Sequence[str],
        trials: Sequence[TrialRecord],
        incumbent: int | None = None,
    ) -> None:
        self.name = name
        self.incumbent = incumbent  # promotion's pick at the top rung (None: no promotion)
        self.objectives = list(objectives)
        self.directions = list(directions)
        self.trials = list(trials)
        # Completion order is the order in which the search learned each result.
        self.completed = sorted(
            (t for t in self.trials if t.state == "COMPLETE" and t.values is not None),
            key=lambda t: (t.completed or datetime.min, t.number),
        )

    @classmethod
    def from_store(cls, store: Any) -> RunView:
        """The view of a `evomerge.store.RunStore` (its reads retry while the storage is busy)."""
        return cls._build(
            store.study_name, store.objectives, store.directions, store.trials(), store.study_attrs()
        )

    @classmethod
    def from_study(cls, study: Any, objectives: Sequence[str]) -> RunView:
        """The view of an Optuna study as it is (tests and notebooks; a run's is `from_store`)."""
        directions = [d.name.lower() for d in study.directions]
        trials = study.get_trials(deepcopy=False)
        return cls._build(study.study_name, objectives, directions, trials, study.user_attrs)

    @classmethod
    def _build(
        cls,
        name: str,
        objectives: Sequence[str],
        directions: Sequence[str],
        trials: Sequence[Any],
        study_attrs: Mapping[str, Any],
    ) -> RunView:
        records = [
            record_from_trial(
                t, objectives, study_attrs.get(audit_key(t.number)), study_attrs.get(rung_key(t.number))
            )
            for t in trials
        ]
        incumbent = (study_attrs.get(INCUMBENT_ATTR) or {}).get("trial")
        return cls(name, objectives, directions, records, incumbent)

    # ----- arrays and fronts ---------------------------------------------------------------
    def minimized(self, records: Sequence[TrialRecord] | None = None) -> np.ndarray:
        """Objective values of `records` (default: completed trials), normalized to minimize."""
        records = self.completed if records is None else records
        values = np.array([r.values for r in records], dtype=float).reshape(
            len(records), len(self.objectives)
        )
        return pareto.to_minimize(values, self.directions)

    def reference(self) -> np.ndarray:
        """Hypervolume reference in the minimized space: the worst accuracy on every task."""
        return np.array([0.0 if d == "maximize" else 1.0 for d in self.directions])

    def front(self) -> list[TrialRecord]:
        if not self.completed:
            return []
        mask = pareto.non_dominated_mask(self.minimized())
        return [r for r, keep in zip(self.completed, mask, strict=True) if keep]

    def hypervolume(self) -> float:
        return pareto.hypervolume(self.minimized(), self.reference()) if self.completed else 0.0

    def hypervolume_history(self) -> np.ndarray:
        return (
            pareto.hypervolume_history(self.minimized(), self.reference()) if self.completed else np.zeros(0)
        )

    def best_so_far(self) -> np.ndarray:
        """(n_completed, n_objectives) running best of each objective, in completion order."""
        if not self.completed:
            return np.zeros((0, len(self.objectives)))
        signs = np.array([-1.0 if d == "maximize" else 1.0 for d in self.directions])
        return np.minimum.accumulate(self.minimized(), axis=0) * signs

    # ----- choosing one trial ---------------------------------------------------------------
    def trial(self, number: int) -> TrialRecord:
        """A completed trial by number; a missing, failed or unfinished one is a clear error."""
        for record in self.trials:
            if record.number == number:
                break
        else:
            last = max((t.number for t in self.trials), default=None)
            span = f"trials are numbered 0..{last}" if last is not None else "the run has no trials yet"
            raise ConfigError(f"--trial {number}: no such trial in study {self.name!r} ({span})")
        if record.state != "COMPLETE" or record.values is None:
            reason = f" ({record.fail_reason})" if record.fail_reason else ""
            raise ConfigError(
                f"--trial {number}: the trial is {record.state}{reason}, not COMPLETE; "
                "pick a completed trial (see `evomerge front`)"
            )
        return record

    def pick_pool(self) -> list[TrialRecord]:
        """The trials a pick chooses among: those at the highest promotion rung any trial reached
        (their values come from items no selection had read), or every completed trial in a run
        without promotion."""
        top = max((r.rung for r in self.completed), default=0)
        return [r for r in self.completed if r.rung == top]

    def knee(self, weights: Mapping[str, float] | None = None) -> TrialRecord:
        """The knee, in accuracy units with optional task weights (see `pareto.knee_point`), of the
        front of the pick pool."""
        pool = self.pick_pool()
        if not pool:
            raise ConfigError(f"--knee: study {self.name!r} has no completed trial yet")
        return pool[pareto.knee_point(self.minimized(pool), self._weight_vector(weights))]

    def best_lower_bound(self, weights: Mapping[str, float] | None = None) -> TrialRecord:
        """The trial of the pick pool whose pessimistic end of each task's interval (the lower
        bound of an accuracy) has the best weighted sum (equal weights by default): a pick that a
        lucky estimate on few items does not win."""
        records = [r for r in self.pick_pool() if all(t in r.intervals for t in self.objectives)]
        if not records:
            raise ConfigError(
                f"--lcb: no completed trial of study {self.name!r} has an interval on every task; "
                "pick with --knee or --weights"
            )
        ends = [0 if d == "maximize" else 1 for d in self.directions]
        pessimistic = [
            [r.intervals[t][end] for t, end in zip(self.objectives, ends, strict=True)] for r in records
        ]
        score = pareto.to_minimize(np.array(pessimistic), self.directions) @ self._weight_vector(weights)
        return records[int(np.argmin(score))]

    def weighted(self, weights: Mapping[str, float]) -> TrialRecord:
        """The trial of the pick pool with the best weighted sum of its (direction-normalized)
        objectives."""
        pool = self.pick_pool()
        if not pool:
            raise ConfigError(f"--weights: study {self.name!r} has no completed trial yet")
        score = self.minimized(pool) @ self._weight_vector(weights)
        return pool[int(np.argmin(score))]

    def incumbent_record(self) -> TrialRecord:
        """Promotion's pick: the trial that won the paired tests at the top rung."""
        if self.incumbent is None:
            raise ConfigError(
                f"--incumbent: study {self.name!r} has no incumbent (its search ran without "
                "promotion, or no trial reached the top rung yet); pick with --knee or --lcb"
            )
        return self.trial(self.incumbent)

    def _weight_vector(self, weights: Mapping[str, float] | None) -> np.ndarray:
        """Task weights in objective order: all 1 when none are given, 0 for a task not named."""
        if weights is None:
            return np.ones(len(self.objectives))
        return np.array([weights.get(t, 0.0) for t in self.objectives])

    def parse_weights(self, text: str) -> dict[str, float]:
        """`task=w,task=w` -> {task: w}; unknown tasks, bad numbers or no positive weight are errors."""
        weights: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            task, sep, number = part.partition("=")
            task = task.strip()
            if not sep:
                raise ConfigError(
                    f"--weights {text!r}: {part!r} is not TASK=WEIGHT (e.g. {self.objectives[0]}=1)"
                )
            if task not in self.objectives:
                raise ConfigError(
                    f"--weights {text!r}: unknown task {task!r}; "
                    f"the run's tasks are {', '.join(self.objectives)}"
                )
            try:
                value = float(number)
            except ValueError:
                raise ConfigError(
                    f"--weights {text!r}: weight {number!r} of {task!r} is not a number"
                ) from None
            if value < 0 or not math.isfinite(value):
                raise ConfigError(f"--weights {text!r}: weight of {task!r} must be a finite number >= 0")
            weights[task] = value
        if not any(w > 0 for w in weights.values()):
            raise ConfigError(
                f"--weights {text!r}: give at least one positive weight, e.g. {self.objectives[0]}=1"
            )
        return weights

    # ----- summaries ---------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.trials:
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    def best(self) -> dict[str, dict[str, Any]]:
        """Best completed trial per objective: {task: {"value", "number", "label"}}."""
        if not self.completed:
            return {}
        matrix = self.minimized()
        best = {}
        for j, task in enumerate(self.objectives):
            record = self.completed[int(np.argmin(matrix[:, j]))]
            best[task] = {"value": record.values[j], "number": record.number, "label": record.label}
        return best

    def audit_summary(self) -> dict[str, Any]:
        """Estimated vs measured over the audited trials: MAE, mean signed error, interval coverage."""
        audited = [r for r in self.completed if r.audit]
        per_task: dict[str, dict[str, float | int | None]] = {}
        errors_all: list[float] = []
        for task in self.objectives:
            pairs = [
                (r.estimates[task], r.audit[task]) for r in audited if task in r.audit and task in r.estimates
            ]
            errors = [est - meas for est, meas in pairs]
            covered = [
                r.intervals[task][0] <= r.audit[task] <= r.intervals[task][1]
                for r in audited
                if task in r.audit and task in r.intervals
            ]
            errors_all += errors
            per_task[task] = {
                "n": len(errors),
                "mae": float(np.mean(np.abs(errors))) if errors else None,
                "bias": float(np.mean(errors)) if errors else None,
                "coverage": float(np.mean(covered)) if covered else None,
            }
        return {
            "n_trials": len(audited),
            "mae": float(np.mean(np.abs(errors_all))) if errors_all else None,
            "tasks": per_task,
        }

    def summary(self) -> dict[str, Any]:
        """Everything `evomerge status` prints, JSON-ready."""
        history = self.hypervolume_history()
        counts = self.counts()
        return {
            "study": self.name,
            "objectives": self.objectives,
            "trials": {
                "total": len(self.trials),
                "complete": counts.get("COMPLETE", 0),
                "failed": counts.get("FAIL", 0),
                "running": counts.get("RUNNING", 0),
                "other": sum(v for k, v in counts.items() if k not in ("COMPLETE", "FAIL", "RUNNING")),
            },
            "best": self.best(),
            "front_size": len(self.front()),
            "hypervolume": float(history[-1]) if len(history) else 0.0,
            "hypervolume_history": [
                {"completed": k + 1, "trial": r.number, "hypervolume": float(h)}
                for k, (r, h) in enumerate(zip(self.completed, history, strict=True))
            ],
            "audit": self.audit_summary(),
        }
