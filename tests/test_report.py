"""The report data builder and its PNG / HTML renderers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread
from runfixture import N_LAYERS, make_run

from evomerge.report import build_report, coefficient_table, write_report
from evomerge.runview import RunView


def _view(tmp_path: Path, tasks: list[str]) -> RunView:
    study = make_run(
        tmp_path / "run", tmp_path / "base", [tmp_path / "p0", tmp_path / "p1"], tasks, n_search=15
    )
    return RunView.from_study(study, tasks)


def test_data_builder_matches_the_view(tmp_path: Path) -> None:
    view = _view(tmp_path, ["arith", "logic"])
    data = build_report(view)
    assert [p.number for p in data.points] == [r.number for r in view.completed]
    assert {p.number for p in data.points if p.on_front} == {r.number for r in view.front()}
    assert {p.label for p in data.points if p.kind == "parent"} == {"p0", "p1"}
    assert [p.label for p in data.points if p.kind == "baseline"] == ["task_arithmetic"]
    assert data.knee == view.knee().number
    np.testing.assert_allclose(data.hypervolume, view.hypervolume_history())
    # The heat-map of the knee shows the weights written in its recipe, row per parent.
    recipe = yaml.safe_load(view.trial(data.knee).recipe)
    assert data.heatmap.rows == ["p0.weight", "p1.weight"]
    np.testing.assert_allclose(data.heatmap.matrix, [m["parameters"]["weight"] for m in recipe["models"]])
    assert build_report(view, trial=4).heatmap.number == 4


def test_coefficient_table_spreads_gradients_and_filters() -> None:
    recipe = {
        "models": [
            {"model": "/m/a", "parameters": {"weight": [0.0, 1.0], "density": 0.5}},
            {
                "model": "/m/b",
                "parameters": {"weight": [{"filter": "mlp", "value": [1, 2, 3]}, {"value": 0.25}]},
            },
        ],
        "parameters": {"normalize": True, "t": [0.0, 0.5, 1.0]},
    }
    rows, matrix = coefficient_table(recipe)
    assert rows == ["a.weight", "a.density", "b.weight[mlp]", "b.weight[*]", "t"]
    np.testing.assert_allclose(
        matrix,
        [[0.0, 0.5, 1.0], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0], [0.25, 0.25, 0.25], [0.0, 0.5, 1.0]],
    )
    assert coefficient_table({"models": [{"model": "x"}]})[0] == []


@pytest.mark.parametrize("tasks", [["arith", "logic"], ["arith", "logic", "dates"]])
def test_renderers_write_readable_files(tmp_path: Path, tasks: list[str]) -> None:
    view = _view(tmp_path, tasks)
    paths = write_report(view, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["coefficients.png", "history.png", "pareto.png", "report.html"]
    for path in paths[:-1]:
        image = imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    page = (tmp_path / "plots" / "report.html").read_text()
    assert "<script src=" not in page  # self-contained: plotly.js is inlined, nothing fetched
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    assert ('"dimensions":[' in page) == (len(tasks) > 2)  # parallel coordinates trace
    for task in tasks:
        assert task in page
    assert view.trial(build_report(view).knee).label in page
    assert build_report(view).heatmap.matrix.shape[1] == N_LAYERS
