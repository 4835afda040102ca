"""Picks: the best lower confidence bound and the knee with task weights (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from runfixture import make_run
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ConfigError
from evomerge.runview import RunView

TASKS = ["a", "b"]


def _view(trials: list[tuple[tuple[float, float], list[tuple[float, float]] | None]]) -> RunView:
    study = optuna.create_study(directions=["maximize", "maximize"])
    for values, intervals in trials:
        attrs = {"estimates": dict(zip(TASKS, values, strict=True))}
        if intervals is not None:
            attrs["intervals"] = dict(zip(TASKS, map(list, intervals), strict=True))
        study.add_trial(optuna.trial.create_trial(values=list(values), user_attrs=attrs))
    return RunView.from_study(study, TASKS)


def test_best_lower_bound_is_not_fooled_by_a_lucky_estimate_on_few_items() -> None:
    view = _view(
        [
            ((0.80, 0.80), [(0.60, 1.00), (0.60, 1.00)]),  # best estimate on a, widest interval
            ((0.75, 0.75), [(0.70, 0.80), (0.70, 0.80)]),
            ((0.70, 0.90), [(0.65, 0.75), (0.88, 0.92)]),
            ((0.99, 0.99), None),  # no interval: never the lower-bound pick
        ]
    )
    assert view.best_lower_bound().number == 2  # lower bounds sum 1.53 against 1.4 and 1.2
    assert view.best_lower_bound({"a": 1.0}).number == 1  # 0.70 against 0.65 and 0.60
    assert view.weighted({"a": 1.0}).number == 3 and view.knee().number == 3
    with pytest.raises(ConfigError, match="no completed trial .* has an interval on every task"):
        _view([((0.5, 0.5), None)]).best_lower_bound()


def test_export_lcb_and_weighted_knee(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    study = make_run(tmp_path / "run", base, list(parents), ["arith", "logic"], n_search=10, seed=5)
    view = RunView.from_study(study, ["arith", "logic"])

    def pick(*args: str) -> int:
        out = CliRunner().invoke(
            app,
            ["export", str(tmp_path / "run"), *args, "--out", str(tmp_path / "r.yaml"), "--force", "-q"]
            + ["--format", "json"],
        )
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)["trial"]

    assert pick("--lcb") == view.best_lower_bound().number
    assert pick("--lcb", "--weights", "logic=1") == view.best_lower_bound({"logic": 1.0}).number
    assert pick("--knee", "--weights", "arith=5,logic=1") == view.knee({"arith": 5.0, "logic": 1.0}).number
    assert pick("--weights", "logic=1") == max(view.completed, key=lambda r: r.values[1]).number
    for args in (["--trial", "1", "--weights", "arith=1"], ["--knee", "--lcb"]):
        out = CliRunner().invoke(app, ["export", str(tmp_path / "run"), *args, "--out", str(tmp_path / "x")])
        assert isinstance(out.exception, ConfigError) and "choose exactly one of" in str(out.exception)
