"""RunView on fixture runs: counts, front, knee, weighted choice, errors, audit summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from runfixture import make_run

from evomerge.errors import ConfigError
from evomerge.runview import RunView, audit_key

TASKS = ["arith", "logic", "dates"]


@pytest.fixture()
def view(tmp_path: Path) -> RunView:
    study = make_run(
        tmp_path / "run", tmp_path / "base", [tmp_path / "p0", tmp_path / "p1"], TASKS, n_search=25
    )
    return RunView.from_study(study, TASKS)


def test_counts_and_kinds(view: RunView) -> None:
    assert view.counts() == {"COMPLETE": 28, "FAIL": 2, "RUNNING": 1}
    kinds = [r.kind for r in view.completed]
    assert kinds.count("parent") == 2 and kinds.count("baseline") == 1
    summary = view.summary()
    assert summary["trials"] == {"total": 31, "complete": 28, "failed": 2, "running": 1, "other": 0}


def test_front_is_the_maximizing_non_dominated_set(view: RunView) -> None:
    # Written against the raw maximized values, independently of pareto.py's minimize convention.
    def beats(a, b) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(
            x > y for x, y in zip(a, b, strict=True)
        )

    expected = {
        r.number for r in view.completed if not any(beats(o.values, r.values) for o in view.completed)
    }
    assert {r.number for r in view.front()} == expected
    assert view.summary()["front_size"] == len(expected)
    assert view.knee().number in expected


def test_best_and_history(view: RunView) -> None:
    for j, task in enumerate(TASKS):
        top = max(view.completed, key=lambda r: r.values[j])
        assert view.best()[task]["value"] == top.values[j]
        assert view.best()[task]["number"] == top.number
        assert view.best_so_far()[-1, j] == top.values[j]
    history = view.hypervolume_history()
    assert len(history) == len(view.completed)
    assert history[-1] == pytest.approx(view.hypervolume())


def test_weighted_choice_is_the_best_weighted_sum(view: RunView) -> None:
    weights = view.parse_weights("arith=2, dates=0.5")
    assert weights == {"arith": 2.0, "dates": 0.5}
    chosen = view.weighted(weights)
    best = max(view.completed, key=lambda r: 2 * r.values[0] + 0.5 * r.values[2])
    assert chosen.number == best.number


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("maths=1", "unknown task 'maths'; the run's tasks are arith, logic, dates"),
        ("arith", "is not TASK=WEIGHT"),
        ("arith=x", "is not a number"),
        ("arith=-1", "finite number >= 0"),
        ("arith=0", "at least one positive weight"),
    ],
)
def test_bad_weights(view: RunView, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        view.parse_weights(text)


def test_trial_selection_errors(view: RunView) -> None:
    failed = next(r for r in view.trials if r.state == "FAIL")
    running = next(r for r in view.trials if r.state == "RUNNING")
    with pytest.raises(ConfigError, match=r"--trial 999: no such trial .* numbered 0\.\.30"):
        view.trial(999)
    with pytest.raises(ConfigError, match=r"FAIL \(CandidateError: NaN scores\), not COMPLETE"):
        view.trial(failed.number)
    with pytest.raises(ConfigError, match="RUNNING"):
        view.trial(running.number)
    assert view.trial(3).number == 3


def test_audit_summary_hand_computed(tmp_path: Path) -> None:
    study = make_run(tmp_path / "run", tmp_path / "b", [tmp_path / "p0"], ["a", "b"], n_search=3, seed=1)
    trials = study.get_trials()
    # Trial 1 estimates +-0.05 intervals; measured values chosen so errors are known exactly.
    first, second = trials[1], trials[2]
    est1, est2 = first.user_attrs["estimates"], second.user_attrs["estimates"]
    study.set_user_attr(audit_key(first.number), {"a": est1["a"] - 0.1, "b": est1["b"] + 0.02})
    study.set_user_attr(audit_key(second.number), {"a": est2["a"] + 0.04, "b": est2["b"]})
    view = RunView.from_study(study, ["a", "b"])
    assert view.trial(first.number).audit == {"a": est1["a"] - 0.1, "b": est1["b"] + 0.02}
    summary = view.audit_summary()
    assert summary["n_trials"] == 2
    assert summary["tasks"]["a"]["mae"] == pytest.approx(0.07)
    assert summary["tasks"]["a"]["bias"] == pytest.approx((0.1 - 0.04) / 2)
    assert summary["tasks"]["a"]["coverage"] == pytest.approx(0.5)  # 0.1 is outside the +-0.05 interval
    assert summary["tasks"]["b"]["mae"] == pytest.approx(0.01)
    assert summary["mae"] == pytest.approx((0.1 + 0.04 + 0.02 + 0.0) / 4)
