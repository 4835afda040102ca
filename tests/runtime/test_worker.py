"""The worker, in process: a real merge + score; any failure of a candidate is a FAIL with its reason."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from evomerge.errors import CandidateError
from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.fitness.selection.plan import make_plan
from evomerge.runtime.work import Rescore, WorkerResult
from evomerge.runtime.worker import Worker, WorkerSpec
from evomerge.space import SearchSpace

SUITE = Path(__file__).parents[2] / "fitness" / "quickstart.yaml"


@pytest.fixture(scope="module")
def worker_and_space(tiny_family):
    base, parents = tiny_family
    space = SearchSpace.from_dict(
        {"base": str(base), "parents": [str(p) for p in parents], "method": "ties", "search": {"weight": {}}}
    )
    plan = make_plan(FitnessSuite.load(SUITE))
    spec = WorkerSpec(space.base, space.parents, str(SUITE), plan, batch_size=8)
    return Worker("w0", spec), space


def test_evaluate_returns_estimates_answers_and_timings(worker_and_space) -> None:
    worker, space = worker_and_space
    result = worker.evaluate(space.decode(np.full(space.dim, 0.5)).to_yaml())
    assert isinstance(result, WorkerResult) and result.ok is True, result
    assert set(result.estimates) == {"arithmetic", "dates"}
    assert all(0.0 <= v <= 1.0 for v in result.estimates.values())
    assert result.n_items == 16 and len(result.answers) == 16
    assert set(result.answers.values()) <= {0, 1}
    assert result.timings["total"] >= result.timings["merge"] > 0
    assert result.worker.startswith("w0@") and result.reason == ""
    # same recipe, same anchors: the same answers (paired design, deterministic)
    assert worker.evaluate(space.decode(np.full(space.dim, 0.5)).to_yaml()).answers == result.answers


def test_a_promotion_scores_exactly_its_items_with_the_trials_own_answers(worker_and_space) -> None:
    worker, space = worker_and_space
    recipe = space.decode(np.full(space.dim, 0.5)).to_yaml()
    searched = worker.evaluate(recipe)
    anchors = list(searched.answers)
    pool = [i for ids in worker.evaluator.suite.eval_ids.values() for i in ids if i not in searched.answers]
    items = tuple(pool[:5] + anchors[:3])
    result = worker.evaluate(Rescore(recipe, items))
    assert result.ok and result.n_items == len(items) and set(result.answers) == set(items)
    assert not result.estimates  # a rung's estimate is computed by the promoter
    assert {i: result.answers[i] for i in anchors[:3]} == {i: searched.answers[i] for i in anchors[:3]}
    bad = worker.evaluate(Rescore(recipe, ("no/such/item",)))
    assert bad.ok is False and "no/such/item" in bad.reason


def test_failures_come_back_as_fail_with_reason(worker_and_space, monkeypatch) -> None:
    worker, space = worker_and_space
    bad = worker.evaluate("merge_method: ties\nmodels: []\n")
    assert bad.ok is False and "ConfigError" in bad.reason and "Traceback" in bad.traceback
    recipe = space.decode(np.full(space.dim, 0.5)).to_yaml()

    def nan_scores(model):
        raise CandidateError("the model gives NaN scores")

    monkeypatch.setattr(worker.evaluator, "evaluate", nan_scores)
    failed = worker.evaluate(recipe)
    assert failed.ok is False and not failed.estimates and "NaN" in failed.reason

    real = type(worker.evaluator).evaluate

    def inf_estimate(model):
        result = real(worker.evaluator, model)
        result.estimates["dates"] = math.inf
        return result

    monkeypatch.setattr(worker.evaluator, "evaluate", inf_estimate)
    inf = worker.evaluate(recipe)
    assert inf.ok is False and "non-finite" in inf.reason
