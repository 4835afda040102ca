"""`evomerge audit` and `export --verify`: full-split measurements of the scored recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from runfixture import make_run, write_suite
from typer.testing import CliRunner

from evomerge.audit import full_split_evaluator, live_merger_for, measure_model_dir
from evomerge.cli import app
from evomerge.errors import ConfigError
from evomerge.merge.io import merge_to_directory
from evomerge.recipe import MergeRecipe
from evomerge.runview import RunView

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def audited(tiny_family, tmp_path_factory: pytest.TempPathFactory):
    base, parents = tiny_family
    root = tmp_path_factory.mktemp("audit")
    suite, tasks = write_suite(root / "suite")
    study = make_run(root / "run", base, list(parents), tasks, n_search=6, seed=8)
    result = invoke("audit", root / "run", "--trials", "3,5", "--suite", suite, "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    return root, suite, tasks, study, json.loads(result.stdout)


def test_audit_measures_the_trials_model(audited) -> None:
    root, suite, tasks, study, payload = audited
    assert [t["number"] for t in payload["trials"]] == [3, 5]
    view = RunView.from_study(study, tasks)
    for number in (3, 5):
        # Independent path: the recipe materialized on disk, loaded back, scored on every eval item.
        recipe = MergeRecipe.from_yaml(view.trial(number).recipe)
        model_dir = merge_to_directory(recipe, root / f"model_{number}", progress=False)
        expected = measure_model_dir(model_dir, full_split_evaluator(suite, recipe, tasks))
        assert view.trial(number).audit == pytest.approx(expected)
        assert all(0.0 <= v <= 1.0 for v in expected.values())


def test_audit_in_bfloat16_scores_the_bfloat16_model(audited, tiny_family, tmp_path: Path) -> None:
    _, suite, tasks, _, _ = audited
    study = make_run(tmp_path / "run", *tiny_family, tasks, n_search=3, seed=9)
    result = invoke("audit", tmp_path / "run", "--trials", "4", "--suite", suite, "--dtype", "bfloat16", "-q")
    assert result.exit_code == 0, result.output
    measured = RunView.from_study(study, tasks).trial(4).audit
    recipe = MergeRecipe.from_yaml(RunView.from_study(study, tasks).trial(4).recipe)
    model_dir = merge_to_directory(recipe, tmp_path / "model", progress=False)
    evaluator = full_split_evaluator(suite, recipe, tasks)
    assert measured == pytest.approx(measure_model_dir(model_dir, evaluator, dtype="bfloat16"))
    assert live_merger_for([recipe], dtype="bfloat16").model.dtype == torch.bfloat16


def test_status_and_front_show_the_audit(audited) -> None:
    root, _, tasks, study, payload = audited
    view = RunView.from_study(study, tasks)
    errors = [abs(view.trial(n).estimates[t] - view.trial(n).audit[t]) for n in (3, 5) for t in tasks]
    status = json.loads(invoke("status", root / "run", "--format", "json").stdout)
    assert status["audit"]["n_trials"] == 2
    assert status["audit"]["mae"] == pytest.approx(sum(errors) / len(errors))
    assert payload["audit"]["mae"] == pytest.approx(status["audit"]["mae"])
    front = json.loads(invoke("front", root / "run", "--format", "json").stdout)["front"]
    for row in front:
        assert (row["audit"] is not None) == (row["number"] in (3, 5))


def test_export_verify_matches_the_audit(audited, tmp_path: Path) -> None:
    root, suite, _, _, payload = audited
    result = invoke(
        "export",
        root / "run",
        "--trial",
        3,
        "--out",
        tmp_path / "r.yaml",
        "--verify",
        "--suite",
        suite,
        "--format",
        "json",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)["measured"]
    # The exported model (disk) scores exactly what the audit measured on the live model (memory).
    assert measured == pytest.approx(payload["trials"][0]["measured"])
    text = invoke(
        "export",
        root / "run",
        "--trial",
        3,
        "--out",
        tmp_path / "r.yaml",
        "--force",
        "--verify",
        "--suite",
        suite,
        "--quiet",
    ).output
    assert "measured %" in text and "error (pts)" in text


def test_audit_bad_input(audited, tmp_path: Path) -> None:
    root, suite, _, study, _ = audited
    failed = next(t.number for t in study.get_trials() if t.state.name == "FAIL")
    cases = [
        (["--trials", str(failed), "--suite", suite], "FAIL"),
        (["--trials", "x,1", "--suite", suite], "--trials 'x,1'"),
        (["--suite", suite], "no trial selected"),
        (["--trials", "3"], "--suite"),
    ]
    other, _ = write_suite(tmp_path / "other")
    spec = yaml.safe_load(other.read_text())
    spec["tasks"]["calendar"] = spec["tasks"].pop("dates")
    other.write_text(yaml.safe_dump(spec))
    cases.append((["--trials", "3", "--suite", other], "are not the run's objectives"))
    for args, message in cases:
        result = invoke("audit", root / "run", *args)
        assert isinstance(result.exception, ConfigError), result.output
        assert message in str(result.exception)
