"""FitnessEvaluator: what a search worker calls to turn a model into per-task estimates.

What it scores and how comes from an evaluation plan (`fitness/selection/plan.py`): a search's workers get
the driver's; made here otherwise, from the arguments. Every candidate is scored on the same
anchors (a paired design: comparisons between candidates are much less noisy than with independent
random subsets), and the plan's estimator turns the answers into estimates.

mp-IRT needs the parents' abilities: pass `parents`, the parents' names or model paths as
calibration subjects (`evomerge calibrate ... --subjects BASE PARENT_1 ...`), or their
abilities directly as `parent_thetas`. The anchor seed defaults to the suite's `seed`.
Models are scored where they are: pass them already on `device`. Code banks (`mode: code`) are
generated greedily and their completions run with the items' tests in the suite's sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evomerge.errors import ConfigError
from evomerge.fitness.banks.code import STOP_SEQUENCES, cut_at_stop, run_completions
from evomerge.fitness.banks.items import Item
from evomerge.fitness.banks.sandbox import Sandbox
from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.fitness.irt.anchors import AnchorSet
from evomerge.fitness.irt.calibration import Calibration
from evomerge.fitness.irt.estimators import ESTIMATORS, NEEDS_PARENTS, EstimationContext, interval
from evomerge.fitness.scoring.scoring import Scorer, ScoreResult
from evomerge.fitness.selection.plan import EvaluationPlan, make_plan


@dataclass
class FitnessResult:
    estimates: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    answers: dict[str, int]
    n_items: int
    estimator: str
    seconds: float


def load_tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, str | Path):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


class FitnessEvaluator:
    def __init__(
        self,
        suite: FitnessSuite | str | Path,
        tokenizer: Any,
        *,
        calibration: Calibration | str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        token_budget: int | None = None,
        seed: int | None = None,
        anchors: AnchorSet | str | Path | None = None,
        estimator: str | None = None,
        parents: Sequence[str | Path] | None = None,
        parent_thetas: np.ndarray | None = None,
        plan: EvaluationPlan | None = None,
    ) -> None:
        """`plan`: what to score and how, decided by a search's driver (seed, anchors and estimator
        then come from it); without one, `make_plan` decides from the arguments."""
        self.suite = suite if isinstance(suite, FitnessSuite) else FitnessSuite.load(suite)
        self.device = device
        if isinstance(calibration, str | Path):
            calibration = Calibration.load(calibration)
        self.calibration = calibration
        if plan is None:
            if isinstance(anchors, str | Path):
                anchors = AnchorSet.load(anchors, calibration)
            plan = make_plan(self.suite, calibration, seed, estimator=estimator, anchors=anchors)
        elif (seed, anchors, estimator) != (None, None, None):
            raise TypeError("give seed, anchors and estimator through the plan, not beside it")
        else:
            plan.check_inputs(self.suite, calibration, f"suite {self.suite.name!r}")
        self.plan = plan
        self.seed = plan.seed
        self.estimator = plan.estimator
        self._estimate = ESTIMATORS.get(self.estimator)
        self.anchors = plan.anchor_set(calibration)
        self.anchor_ids: dict[str, list[str]] = {
            task: list(self.anchors.ids[task]) for task in self.suite.tasks
        }
        self._anchor_items = [self.suite.items[i] for task in self.suite.tasks for i in self.anchor_ids[task]]
        thetas = self._parent_thetas(parents, parent_thetas)
        self.context = EstimationContext(
            task_items=self.suite.eval_ids,
            anchors=self.anchors,
            irt=calibration.irt if calibration else None,
            item_index=calibration.item_index if calibration else None,
            parent_thetas=thetas,
        )
        self.sandbox = self._sandbox()
        max_new = max(spec.max_new_tokens for spec in self.suite.spec.banks.values())
        self.scorer = Scorer(
            load_tokenizer(tokenizer),
            batch_size=batch_size,
            max_new_tokens=max_new,
            token_budget=token_budget,
        )

    def _sandbox(self) -> Sandbox | None:
        """The suite's sandbox where it has code banks (refused here if it cannot isolate)."""
        if all(spec.mode != "code" for spec in self.suite.spec.banks.values()):
            return None
        config = self.suite.spec.sandbox
        return Sandbox(config.limits(), allow_network=config.network == "allow")

    def _parent_thetas(
        self, parents: Sequence[str | Path] | None, parent_thetas: np.ndarray | None
    ) -> np.ndarray | None:
        if parent_thetas is not None:
            return np.atleast_2d(np.asarray(parent_thetas, dtype=float))
        if parents:
            if self.calibration is None:
                raise ConfigError("parents= needs a calibration holding their abilities")
            for parent in parents:
                if Path(parent).is_dir():
                    self.calibration.check_subject(parent)
            return np.array([self.calibration.theta_of(p) for p in parents])
        if self.estimator in NEEDS_PARENTS:
            raise ConfigError(
                f"estimator {self.estimator!r} needs parents=[...] (calibration subject names or paths)"
            )
        return None

    def _score(self, model: Any, items: list[Item]) -> ScoreResult:
        where = next(model.parameters()).device
        if where.type != torch.device(self.device).type:
            raise ConfigError(
                f"the model is on {where} but the evaluator was made for device={self.device!r}"
            )
        normalization = {item.id: self.suite.bank_spec_of(item.id).normalization for item in items}
        modes = {item.id: self.suite.bank_spec_of(item.id).mode for item in items}
        generate = {item_id for item_id, mode in modes.items() if mode != "choice"}
        code = [item for item in items if modes[item.id] == "code"]
        stops = {item.id: STOP_SEQUENCES for item in code}  # decoding ends where the function does
        result = self.scorer.score(model, items, normalization, generate, stops)
        if code:  # pass@1 by running the greedy completion, not the scorer's exact match
            assert self.sandbox is not None  # made for every suite with a code bank
            completions = {item.id: cut_at_stop(result.generations[item.id]) for item in code}
            for verdict in run_completions(code, completions, self.sandbox):
                result.correct[verdict.id] = int(verdict.passed)
        return result

    def evaluate(self, model: Any) -> FitnessResult:
        """Score the anchors and estimate every task; CandidateError on NaN/inf scores."""
        start = time.perf_counter()
        answers = self._score(model, self._anchor_items).correct
        estimates = {task: float(value) for task, value in self._estimate(self.context, answers).items()}
        intervals = {task: interval(estimates[task], len(self.anchor_ids[task])) for task in self.suite.tasks}
        return FitnessResult(
            estimates={task: estimates[task] for task in self.suite.tasks},
            intervals=intervals,
            answers=answers,
            n_items=len(self._anchor_items),
            estimator=self.estimator,
            seconds=time.perf_counter() - start,
        )

    def score_items(self, model: Any, ids: Sequence[str]) -> dict[str, int]:
        """0/1 answers of the model on the given items of the suite (promotion rungs)."""
        unknown = [i for i in ids if i not in self.suite.items]
        if unknown:
            raise ConfigError(f"suite {self.suite.name!r} has no items {unknown[:3]}")
        return self._score(model, [self.suite.items[i] for i in ids]).correct

    def score_eval_split(self, model: Any) -> dict[str, int]:
        """0/1 answers of the model on every eval item of the suite (the selection pool)."""
        return self.score_split(model, "eval")

    def evaluate_full(self, model: Any, split: str = "eval") -> dict[str, float]:
        """Measured accuracy on every item of one split, per task (for audits and --verify)."""
        return accuracy(self.suite.split_ids(split), self.score_split(model, split))

    def score_split(self, model: Any, split: str = "eval") -> dict[str, int]:
        """0/1 answers of the model on every item of one split ("eval" or "test")."""
        ids = self.suite.split_ids(split)
        empty = [task for task, task_ids in ids.items() if not task_ids]
        if empty:
            raise ConfigError(
                f"suite {self.suite.name!r}: task(s) {empty} have no {split!r} items; "
                "choose another split or add items with that split to the banks"
            )
        items = [self.suite.items[i] for task_ids in ids.values() for i in task_ids]
        return self._score(model, items).correct


def accuracy(ids: dict[str, list[str]], answers: dict[str, int]) -> dict[str, float]:
    """Per-task mean of 0/1 answers over the given item ids."""
    return {task: float(np.mean([answers[i] for i in task_ids])) for task, task_ids in ids.items()}
