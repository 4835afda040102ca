"""The evaluation plan: what every candidate is scored on and how, decided once.

`make_plan` is the one place where the estimator is chosen (`auto`: by leave-subjects-out error on
the calibration, `fidelity.choose_estimator`; without a calibration, the subsample mean), the
anchors are drawn (k-means on the calibration's IRT parameters, else a seeded stratified sample)
and the promotion rungs are laid out. A search's driver makes the plan before its run exists,
stores it in the study, and hands it to every worker as a value: a worker on another node (its own
`~/.cache`, its own copy of the banks) scores what the driver decided, or refuses in one line when
its suite differs from the plan's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from evomerge.errors import ConfigError
from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.fitness.irt.anchors import AnchorSet, select_for_suite
from evomerge.fitness.irt.calibration import Calibration
from evomerge.fitness.irt.estimators import ESTIMATORS, NEEDS_IRT
from evomerge.fitness.irt.fidelity import choose_estimator
from evomerge.fitness.selection.rungs import RungPlan, plan_rungs

AUTO = "auto"


class EstimatorCheck(BaseModel):
    """One candidate's leave-subjects-out error in `auto`'s cross-validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    estimator: str
    mae: float
    tau: float
    n: int


class EvaluationPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str  # the suite's name
    suite_digest: str  # sha256 of the suite's spec and its banks' eval items (`suite_digest`)
    calibration_sha256: str | None
    seed: int  # the anchors' and rungs' seed
    requested: str  # the estimator asked for (the suite's, or the caller's)
    estimator: str  # the one used: `requested`, or what `auto` chose
    checks: tuple[EstimatorCheck, ...] = ()  # auto's cross-validation (empty otherwise)
    heldout: int = 0  # subjects held out over auto's folds
    anchors: dict[str, Any]  # the AnchorSet (`AnchorSet.to_dict`)
    rung_spec: tuple[int | str, ...] | None = None  # the promotion block's `rungs` they were laid from
    rungs: tuple[dict[str, tuple[str, ...]], ...] | None = None  # promotion rungs 1, 2, ...

    def anchor_set(self, calibration: Calibration | None = None) -> AnchorSet:
        return AnchorSet.from_dict(self.anchors, calibration)

    def anchor_ids(self) -> dict[str, list[str]]:
        return {task: list(data["ids"]) for task, data in self.anchors["tasks"].items()}

    @property
    def items_per_trial(self) -> int:
        """The items a search trial scores: its anchors."""
        return sum(len(ids) for ids in self.anchor_ids().values())

    def rung_plan(self) -> RungPlan | None:
        if self.rungs is None:
            return None
        return RungPlan([{task: list(ids) for task, ids in rung.items()} for rung in self.rungs])

    def check_inputs(self, suite: FitnessSuite, calibration: Calibration | None, where: str) -> None:
        """Refuse a suite or calibration other than the ones the plan was made on (`where`: who
        holds them, for the message)."""
        if suite_digest(suite) != self.suite_digest:
            raise ConfigError(
                f"{where}: suite {suite.name!r} ({suite.source}) differs from the one the evaluation plan "
                f"was made on (its spec or its banks' eval items changed); give it the run's suite and "
                "banks (the same files on every node)"
            )
        sha = calibration.sha256() if calibration is not None else None
        if sha != self.calibration_sha256:
            raise ConfigError(
                f"{where}: the calibration differs from the one the evaluation plan was made on "
                f"({(sha or 'none')[:12]} != {(self.calibration_sha256 or 'none')[:12]}); give it the "
                "run's calibration file"
            )

    def describe(self) -> str:
        """One line: the estimator (and why), the anchors, the rungs."""
        chosen = self.estimator
        if self.checks:
            errors = ", ".join(f"{c.estimator} {100 * c.mae:.2f}" for c in self.checks)
            chosen += f" (auto: leave-subjects-out MAE, points: {errors}; {self.heldout} held out)"
        per_task = {task: len(ids) for task, ids in self.anchor_ids().items()}
        line = f"estimator {chosen}; anchors {self.anchors['method']} {per_task}"
        if self.rungs is not None:
            sizes = [sum(len(ids) for ids in rung.values()) for rung in self.rungs]
            line += f"; rungs {sizes} items"
        return line


def suite_digest(suite: FitnessSuite) -> str:
    payload = {"spec": suite.spec.model_dump(mode="json"), "banks": suite.bank_hashes()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def anchor_counts(suite: FitnessSuite) -> dict[str, int]:
    return {task: suite.n_anchors(task) for task in suite.tasks}


def default_anchors(suite: FitnessSuite, calibration: Calibration | None, seed: int) -> AnchorSet:
    """k-means anchors on the calibration's IRT parameters when there is one, else a seeded
    stratified sample of the eval items."""
    groups = {i.id: i.group or "" for i in suite.items.values()}
    return select_for_suite(suite.eval_ids, anchor_counts(suite), groups, calibration, seed)


def make_plan(
    suite: FitnessSuite,
    calibration: Calibration | None = None,
    seed: int | None = None,
    *,
    estimator: str | None = None,
    anchors: AnchorSet | None = None,
    rungs: Sequence[int | str] | None = None,
) -> EvaluationPlan:
    """The plan for `suite` (estimator: the suite's unless given; seed: the suite's unless given;
    anchors: drawn unless given; rungs: a promotion block's `rungs`, laid out on the selection pool)."""
    requested = estimator or suite.estimator
    if requested != AUTO and requested not in ESTIMATORS.names():
        raise ConfigError(
            f"unknown estimator {requested!r}; available: {AUTO}, {', '.join(ESTIMATORS.names())}"
        )
    if calibration is not None:
        calibration.check_suite(suite)
    elif requested in NEEDS_IRT:
        raise ConfigError(
            f"estimator {requested!r} of suite {suite.name!r} needs a calibration: run "
            f"`evomerge calibrate {suite.source} --subjects BASE PARENTS... --out CALIB` and "
            "pass it, or choose estimator 'auto' or 'mean'"
        )
    seed = suite.seed if seed is None else seed
    checks: tuple[EstimatorCheck, ...] = ()
    heldout = 0
    chosen = requested
    if requested == AUTO and calibration is None:
        chosen = "mean"  # nothing to check an IRT estimator on: the subsample mean
    elif requested == AUTO:
        choice = choose_estimator(calibration, anchor_counts(suite), seed)
        chosen, heldout = choice.estimator, choice.heldout
        checks = tuple(
            EstimatorCheck(estimator=row.estimator, mae=row.mae, tau=row.tau, n=row.n) for row in choice.rows
        )
    if anchors is None:
        # where auto chose the mean, the anchors are the random sample its check measured
        measured_on = None if requested == AUTO and chosen == "mean" else calibration
        anchors = default_anchors(suite, measured_on, seed)
    _check_anchors(suite, anchors)
    groups = {item.id: item.group or "" for item in suite.items.values()}
    laid = plan_rungs(suite.eval_ids, anchors.ids, list(rungs), seed, groups) if rungs is not None else None
    return EvaluationPlan(
        suite=suite.name,
        suite_digest=suite_digest(suite),
        calibration_sha256=calibration.sha256() if calibration is not None else None,
        seed=seed,
        requested=requested,
        estimator=chosen,
        checks=checks,
        heldout=heldout,
        anchors=anchors.to_dict(),
        rung_spec=tuple(rungs) if rungs is not None else None,
        rungs=_frozen_rungs(laid.to_json()) if laid is not None else None,
    )


def _frozen_rungs(rungs: Sequence[Mapping[str, Sequence[str]]]) -> tuple[dict[str, tuple[str, ...]], ...]:
    return tuple({task: tuple(ids) for task, ids in rung.items()} for rung in rungs)


def _check_anchors(suite: FitnessSuite, anchors: AnchorSet) -> None:
    for task in suite.tasks:
        unknown = [i for i in anchors.ids.get(task, []) if i not in suite.items]
        if task not in anchors.ids or unknown:
            raise ConfigError(
                f"anchors do not match suite {suite.name!r}: task {task!r} "
                + (f"has unknown items {unknown[:3]}" if unknown else "is missing")
            )
