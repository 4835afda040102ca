"""Experiment YAML: validation with clear errors; the shipped experiments load."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.experiment import Experiment

ROOT = Path(__file__).parents[1]
GOOD = """
name: t
space: ../search_spaces/quickstart_demo.yaml
suite: ../fitness/quickstart.yaml
optimizer: {name: cma, settings: {popsize: 4}}
budget: {trials: 5}
"""


def load(text: str) -> Experiment:
    return Experiment.from_text(text, root=ROOT / "experiments", source="exp.yaml")


def test_shipped_quickstart_loads() -> None:
    exp = Experiment.load(ROOT / "experiments" / "quickstart.yaml")
    assert exp.suite_path == (ROOT / "fitness" / "demo.yaml").resolve()
    assert exp.spec.workers.count == 2 and exp.spec.budget.trials


def test_defaults_and_overrides() -> None:
    exp = load(GOOD)
    assert exp.spec.workers.count == 1 and exp.spec.seed == 0 and exp.spec.storage is None
    changed = exp.with_overrides(seed=5, trials=9, storage="postgresql://x/y")
    assert (changed.spec.seed, changed.spec.budget.trials, changed.spec.storage) == (5, 9, "postgresql://x/y")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (GOOD.replace("budget: {trials: 5}", "budget: {}"), "budget: .*set 'trials', 'minutes' and/or"),
        (GOOD.replace("name: cma", "name: adam"), "unknown optimizer 'adam'; available: cma, nevergrad"),
        (
            GOOD.replace("quickstart.yaml\noptimizer", "missing.yaml\noptimizer"),
            "suite: '../fitness/missing.yaml' does not exist",
        ),
        (GOOD + "workers: {count: 0}\n", "workers.count"),
        (GOOD + "colour: red\n", "colour: unknown key"),
        ("- a list\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_experiments(edit: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(edit)
