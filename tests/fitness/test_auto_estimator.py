"""`estimator: auto`, the default of every suite: chosen by leave-subjects-out error on the
calibration, and on held-out 2PL populations no worse than the random-subsample mean of the same
size."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import make_population

from evomerge.fitness.irt.calibration import fit_calibration
from evomerge.fitness.irt.fidelity import AUTO_CANDIDATES, choose_estimator, evaluate_estimators

IDS = [f"q{k:03d}" for k in range(160)]
TASKS = {"alpha": IDS[:80], "beta": IDS[80:]}


@pytest.fixture(scope="module")
def population():
    return make_population(100, 160, dim=2, seed=5)


@pytest.fixture(scope="module")
def calibration(population):
    return fit_calibration(
        population.responses[:60], IDS, TASKS, [{"name": f"s{j}"} for j in range(60)], dims=(2,)
    )


def test_auto_picks_the_lowest_leave_subjects_out_error(calibration):
    n = {"alpha": 10, "beta": 10}
    choice = choose_estimator(calibration, n, seed=0)
    assert [row.estimator for row in choice.rows] == list(AUTO_CANDIDATES)
    assert choice.heldout == 60  # every subject held out once, over the folds
    assert choice.estimator == min(choice.rows, key=lambda r: r.mae).estimator
    assert choose_estimator(calibration, n, seed=0) == choice  # the same inputs, the same choice


def test_auto_is_the_default_of_suites_and_of_irt_estimate():
    from typer.main import get_command

    from evomerge.cli import app
    from evomerge.fitness.banks.suite import SuiteSpec

    assert SuiteSpec.model_fields["estimator"].default == "auto"
    estimate = get_command(app).commands["irt"].commands["estimate"]
    assert next(p for p in estimate.params if p.name == "estimator").default == "auto"


@pytest.mark.parametrize("seed", [5, 11, 23])
@pytest.mark.parametrize("n", [5, 10, 20])
def test_the_choice_does_not_lose_to_the_subsample_mean_on_held_out_subjects(seed, n):
    """A population of 100 2PL subjects: 60 calibrate, 40 are held out; the estimator auto chooses
    at n anchors per task against the mean of n random items per task, on the 40."""
    population = make_population(100, 160, dim=2, seed=seed)
    subjects = [{"name": f"s{j}"} for j in range(60)]
    calibration = fit_calibration(population.responses[:60], IDS, TASKS, subjects, dims=(2,))
    choice = choose_estimator(calibration, {"alpha": n, "beta": n}, seed=0)
    rows = evaluate_estimators(calibration, population.responses[60:], [n], list(AUTO_CANDIDATES))
    mae = {row.estimator: row.mae for row in rows}
    assert np.isfinite(list(mae.values())).all()
    assert mae[choice.estimator] <= mae["mean"], (choice.estimator, mae)
