"""Promotion (multi-fidelity racing) inside the search: promising trials re-scored on more items.

A completed trial has rung 0: its estimates from the search anchors. The experiment's `promotion`
block adds rungs of the selection pool (`evomerge/fitness/selection/rungs.py`: eval items that are no
anchors, nested, the same for every trial: a paired design). A trial at rung k goes up to k+1 when

- it is among the best 1/eta of the trials that reached rung k (asynchronous successive halving,
  ASHA: Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning", MLSys), ranked by
  the weighted mean of their rung-k estimates: the incumbent's objective. (Ranking by
  non-dominated front first would promote every parent: an expert is on the front by its own task
  alone, and three experts took half the promotion budget); and
- its interval is not clearly ruled out of the front: no trial's lower bounds (at that trial's
  highest rung) reach its upper bounds on every task.

Promotions are jobs like any other, handed out by the search loop when a worker frees up (no
barrier) while they hold under `share` of the items scored; the highest rung goes first. A rung's
estimate is the mean accuracy on its items, which no selection had read before (the anchors chose
the trial; rung k+1 adds items rung k did not have). The optimizer is not told the refined values:
CMA-ES has updated its generation by the time a promotion ends, and an Optuna trial's values are
final once it completes; the rungs change what is picked, not how the search moves.

The final race (`race`, a fraction of the budget): once what is left of the budget falls to it, the
search loop starts no new trial while a challenger is left and hands out challengers' promotions
instead, past `share` and eta: a challenger is a trial below the top rung, not ruled out, whose
estimate at its rung beats the incumbent's at that rung (every trial until one is crowned), the
highest rung first and the largest lead first within it. The end of a budget then goes to the
paired tests that decide the pick, not to trials that could never reach them.

At the top rung, a trial replaces the incumbent (the run's pick) only if a paired test on their
per-item answers says it is better: the weighted mean of the per-task paired differences over its
standard error (each task's from Agresti's dependent-proportions variance, `fitness/selection/paired.py`;
with one task that is McNemar's test in its normal form) must pass the one-sided level `alpha`.

Everything lives in the study's attributes (Optuna forbids changing a finished trial): the plan
(`promotion`), each promoted trial's rungs (`rungs.N`: estimates, intervals, answers) and the
incumbent with its history (`incumbent`). A resumed run reads them back; a promotion cut short is
simply handed out again (its items and model are the same).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from evomerge.errors import ConfigError
from evomerge.fitness.irt.estimators import interval
from evomerge.fitness.selection.paired import compare_answers
from evomerge.fitness.selection.rungs import RungPlan, rung_accuracy
from evomerge.runtime.work import Rescore, RungKey, WorkerResult
from evomerge.runview import INCUMBENT_ATTR, PROMOTION_ATTR, rung_key

Estimates = dict[str, float]
Intervals = dict[str, tuple[float, float]]


@dataclass
class Standing:
    """A completed trial as the promoter sees it: its estimates at every rung it reached."""

    trial: int
    recipe_yaml: str
    levels: dict[int, Estimates]  # rung -> estimates
    intervals: dict[int, Intervals]  # rung -> intervals
    answers: dict[str, int] = field(default_factory=dict)  # selection-pool item -> 0/1

    @property
    def rung(self) -> int:
        return max(self.levels)


class AttrsInMemory:
    """A study's attributes in a dict: the promoter's whole view of a store, for a promoter that
    runs without a study (benchmarks/bench_promotion.py's simulated searches, tests)."""

    def __init__(self) -> None:
        self.attrs: dict[str, Any] = {}

    def read_study_attr(self, key: str) -> Any:
        return self.attrs.get(key)

    def write_study_attr(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def study_attrs(self) -> dict[str, Any]:
        return dict(self.attrs)


class Promoter:
    def __init__(
        self,
        store: Any,
        tasks: list[str],
        plan: RungPlan,
        eta: float,
        share: float,
        alpha: float,
        weights: Mapping[str, float] | None = None,
        settings: Mapping[str, Any] | None = None,
        race: float = 0.0,
    ) -> None:
        self.store, self.tasks, self.plan = store, tasks, plan
        self.eta, self.share, self.alpha, self.race = eta, share, alpha, race
        self.weights = np.array([float((weights or {}).get(t, 1.0)) for t in tasks])
        self.top = len(plan.rungs)
        self.standings: dict[int, Standing] = {}
        self.running: dict[RungKey, int] = {}  # promotions in flight -> their items
        self.items_promoted = 0  # items scored by finished promotions, this run in total
        self.incumbent: int | None = None
        self.history: list[dict[str, Any]] = []
        self._check_plan(dict(settings or {}))

    # ----- the run's record ----------------------------------------------------------------
    def _check_plan(self, settings: dict[str, Any]) -> None:
        """The plan is written once; a resumed run must promote on the same items."""
        stored = self.store.read_study_attr(PROMOTION_ATTR)
        mine = {**settings, "rungs": self.plan.to_json()}
        if stored is None:
            self.store.write_study_attr(PROMOTION_ATTR, mine)
        elif stored.get("rungs") != mine["rungs"]:
            raise ConfigError(
                "--resume: the promotion rungs (items, anchors or seed) differ from the ones the run "
                "was started with; resume with the run's experiment (experiment.yaml in its directory)"
            )

    def load(self, trials: list[Any]) -> None:
        """Every COMPLETE trial, with the rungs and incumbent the study holds (a resumed run)."""
        attrs = self.store.study_attrs()
        for trial in trials:
            self.add(trial.number, str(trial.user_attrs.get("recipe", "")), trial.user_attrs)
            stored = attrs.get(rung_key(trial.number)) or {}
            standing = self.standings[trial.number]
            for rung_text, data in sorted(stored.items(), key=lambda kv: int(kv[0])):
                rung = int(rung_text)
                standing.levels[rung] = {t: float(v) for t, v in data["estimates"].items()}
                standing.intervals[rung] = {
                    t: (float(a), float(b)) for t, (a, b) in data["intervals"].items()
                }
                ids = self.plan.rungs[rung - 1]
                for task, bits in data["answers"].items():
                    standing.answers.update({i: int(b) for i, b in zip(ids[task], bits, strict=True)})
            self.items_promoted += len(self.plan.ids(standing.rung)) if standing.rung else 0
        record = attrs.get(INCUMBENT_ATTR) or {}
        self.incumbent = record.get("trial")
        self.history = list(record.get("history", []))

    def add(self, trial: int, recipe_yaml: str, attrs: Mapping[str, Any]) -> None:
        """A completed trial at rung 0 (its search estimates and intervals)."""
        estimates = {t: float(v) for t, v in (attrs.get("estimates") or {}).items()}
        if not all(t in estimates for t in self.tasks):
            return
        intervals = {t: (float(a), float(b)) for t, (a, b) in (attrs.get("intervals") or {}).items()}
        self.standings[trial] = Standing(trial, recipe_yaml, {0: estimates}, {0: intervals})

    def completed(self, trial: int, recipe_yaml: str, result: WorkerResult) -> None:
        self.add(trial, recipe_yaml, result.trial_attrs())

    # ----- what to promote ----------------------------------------------------------------
    def _mean(self, estimates: Estimates) -> float:
        return float(np.array([estimates[t] for t in self.tasks]) @ self.weights / self.weights.sum())

    def _ranked(self, rung: int) -> list[Standing]:
        """The trials that reached `rung`, best first by the weighted mean of their rung estimates
        (ties by trial number)."""
        reached = [s for s in self.standings.values() if s.rung >= rung]
        return sorted(reached, key=lambda s: (-self._mean(s.levels[rung]), s.trial))

    def _ruled_out(self, standing: Standing) -> bool:
        """Some other trial's lower bounds reach this one's upper bounds on every task (and pass
        one): its interval clearly puts it behind the front."""
        high = standing.intervals[standing.rung]
        for other in self.standings.values():
            if other.trial == standing.trial:
                continue
            low = other.intervals[other.rung]
            if all(low[t][0] >= high[t][1] for t in self.tasks) and any(
                low[t][0] > high[t][1] for t in self.tasks
            ):
                return True
        return False

    def candidates(self) -> list[Standing]:
        """Trials to promote now, in order: the highest rung first, best first within a rung."""
        busy = {key.trial for key in self.running}
        chosen: list[Standing] = []
        for rung in range(self.top - 1, -1, -1):
            ranked = self._ranked(rung)
            keep = math.floor(len(ranked) / self.eta)
            for standing in ranked[:keep]:
                if standing.rung == rung and standing.trial not in busy and not self._ruled_out(standing):
                    chosen.append(standing)
        return chosen

    def challengers(self, limit: int | None = None) -> list[Standing]:
        """The final race's trials to promote now, in order (see the module docstring); with
        `limit`, only those whose next rung fits in that many items."""
        busy = {key.trial for key in self.running}
        incumbent = self.standings.get(self.incumbent) if self.incumbent is not None else None
        chosen = []
        for standing in self.standings.values():
            rung = standing.rung
            if rung == self.top or standing.trial in busy or self._ruled_out(standing):
                continue
            if limit is not None and len(self.plan.new_ids(rung + 1)) > limit:
                continue
            lead = self._mean(standing.levels[rung]) - (
                self._mean(incumbent.levels[rung]) if incumbent else 0.0
            )
            if incumbent is None or lead > 0:
                chosen.append((-rung, -lead, standing.trial, standing))
        return [entry[-1] for entry in sorted(chosen, key=lambda entry: entry[:3])]

    def under_share(self, items_total: int) -> bool:
        """Promotions (finished and running) hold under `share` of the items scored so far."""
        return self.items_promoted + self.items_running < self.share * max(items_total, 1)

    def next_job(self, racing: bool = False, limit: int | None = None) -> tuple[RungKey, Rescore] | None:
        """The first candidate's promotion (the first challenger's in the final race, one that fits
        in `limit` items), counted as running until `record` or `cancel`."""
        candidates = self.challengers(limit) if racing else self.candidates()
        if not candidates:
            return None
        key = RungKey(candidates[0].trial, candidates[0].rung + 1)
        items = tuple(self.plan.new_ids(key.rung))
        self.running[key] = len(items)
        return key, Rescore(candidates[0].recipe_yaml, items)

    def cancel(self, key: RungKey) -> None:
        """A promotion not run, or cut short: handed out again when its trial is next in line."""
        self.running.pop(key, None)

    @property
    def items_running(self) -> int:
        return sum(self.running.values())

    # ----- a promotion's result ------------------------------------------------------------
    def record(self, key: RungKey, result: WorkerResult) -> str | None:
        """Write the trial's new rung (or drop a failed promotion: its trial keeps its rung); a
        line for the user when the incumbent changed."""
        self.running.pop(key, None)
        if not result.ok:
            return f"promotion of trial {key.trial} to rung {key.rung} failed: {result.reason}"
        standing = self.standings[key.trial]
        standing.answers.update(result.answers)
        self.items_promoted += len(self.plan.new_ids(key.rung))
        rung = self.plan.rungs[key.rung - 1]
        estimates = rung_accuracy(rung, standing.answers)
        intervals = {t: interval(estimates[t], len(rung[t])) for t in self.tasks}
        standing.levels[key.rung], standing.intervals[key.rung] = estimates, intervals
        self.store.write_study_attr(rung_key(key.trial), self._stored_rungs(standing))
        return self._challenge(standing) if key.rung == self.top else None

    def _stored_rungs(self, standing: Standing) -> dict[str, Any]:
        """The study attribute `rungs.N` of a trial: every rung it reached, from what it holds."""
        return {
            str(k): {
                "estimates": standing.levels[k],
                "intervals": {t: list(v) for t, v in standing.intervals[k].items()},
                "answers": {t: self._bits(standing, ids) for t, ids in self.plan.rungs[k - 1].items()},
            }
            for k in sorted(standing.levels)
            if k > 0
        }

    @staticmethod
    def _bits(standing: Standing, ids: list[str]) -> str:
        return "".join(str(standing.answers[i]) for i in ids)

    def _challenge(self, challenger: Standing) -> str | None:
        """The paired test at the top rung: the challenger replaces the incumbent only if better."""
        if self.incumbent is None or self.incumbent not in self.standings:
            return self._crown(challenger.trial, None, "first trial at the top rung")
        test = self.paired_test(challenger, self.standings[self.incumbent])
        if self.replaces(test):
            return self._crown(challenger.trial, test, f"better than trial {self.incumbent}")
        self.history.append({"trial": challenger.trial, "kept": self.incumbent, **test})
        self._save_incumbent()
        return None

    def paired_test(self, first: Standing, second: Standing) -> dict[str, float]:
        """First minus second on the top rung's items: the weighted mean of the per-task paired
        differences, its standard error and the one-sided p-value of "first is no better"."""
        rung = self.plan.rungs[self.top - 1]
        diffs, ses = [], []
        for task in self.tasks:
            paired = compare_answers(first.answers, second.answers, rung[task])
            diffs.append(paired.diff)
            ses.append(paired.se)
        w = self.weights / self.weights.sum()
        diff = float(np.array(diffs) @ w)
        se = float(np.sqrt(np.array(ses) ** 2 @ w**2))
        p_value = float(norm.sf(diff / se)) if se > 0 else (0.0 if diff > 0 else 1.0)
        return {"diff": diff, "se": se, "p_value": p_value}

    def replaces(self, test: Mapping[str, float]) -> bool:
        """Whether a `paired_test` of a challenger against the incumbent crowns the challenger."""
        return test["diff"] > 0 and test["p_value"] < self.alpha

    def _crown(self, trial: int, test: dict[str, float] | None, why: str) -> str:
        previous, self.incumbent = self.incumbent, trial
        self.history.append({"trial": trial, "replaced": previous, **(test or {})})
        self._save_incumbent()
        detail = (
            f" (+{100 * test['diff']:.1f} +/- {100 * test['se']:.1f} points, p={test['p_value']:.3f})"
            if test
            else ""
        )
        return f"incumbent: trial {trial}, {why}{detail}"

    def _save_incumbent(self) -> None:
        self.store.write_study_attr(INCUMBENT_ATTR, {"trial": self.incumbent, "history": self.history})

    def summary(self) -> str:
        """One line for the search's summary: how many trials reached each rung, the incumbent."""
        counts = [sum(s.rung >= k for s in self.standings.values()) for k in range(1, self.top + 1)]
        rungs = ", ".join(
            f"{n} at rung {k} ({size} items)"
            for k, (n, size) in enumerate(zip(counts, self.plan.sizes(), strict=True), 1)
        )
        who = f"trial {self.incumbent}" if self.incumbent is not None else "none yet"
        return f"promotion: {rungs}; {self.items_promoted} items scored by promotions; incumbent: {who}"


def open_promotion(
    experiment: Any, evaluation: Any, tasks: list[str], store: Any
) -> tuple[Promoter | None, int, int]:
    """The run's promoter on the rungs of its evaluation plan `evaluation` (None without a
    `promotion` block), the items a search trial scores (its anchors) and the items the run's
    finished jobs scored so far (a resumed run's earlier sessions)."""
    from evomerge.store import TrialState

    items_per_trial, plan = evaluation.items_per_trial, evaluation.rung_plan()
    complete = store.trials([TrialState.COMPLETE])
    items_done = sum(int(t.user_attrs.get("n_items") or 0) for t in complete)
    spec = experiment.spec.promotion
    if spec is None or plan is None:
        return None, items_per_trial, items_done
    promoter = Promoter(
        store,
        tasks,
        plan,
        spec.eta,
        spec.share,
        spec.alpha,
        spec.weights,
        settings=spec.model_dump(mode="json"),
        race=spec.race,
    )
    promoter.load(complete)
    return promoter, items_per_trial, items_done + promoter.items_promoted
