"""`audit` and `export --verify` measure on the held-out test split by default and say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runfixture import make_run, write_suite
from typer.testing import CliRunner

from evomerge.audit import full_split_evaluator, live_merger_for
from evomerge.cli import app
from evomerge.errors import ConfigError
from evomerge.recipe import MergeRecipe
from evomerge.runview import RunView


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_audit_and_verify_report_their_split(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    suite, tasks = write_suite(tmp_path / "suite", n_items=4, n_test=3)
    study = make_run(tmp_path / "run", base, list(parents), tasks, n_search=3, seed=11)
    recipe = MergeRecipe.from_yaml(RunView.from_study(study, tasks).trial(3).recipe)
    evaluator = full_split_evaluator(suite, recipe, tasks)
    model = live_merger_for([recipe]).apply(recipe)
    expected = {split: evaluator.evaluate_full(model, split) for split in ("test", "eval")}
    for args, split in (([], "test"), (["--split", "eval"], "eval")):
        out = invoke(
            "audit", tmp_path / "run", "--trials", "3", "--suite", suite, "-q", "--format", "json", *args
        )
        assert out.exit_code == 0, out.output
        payload = json.loads(out.stdout)
        assert payload["split"] == split
        assert payload["trials"][0]["measured"] == pytest.approx(expected[split])
    text = invoke("audit", tmp_path / "run", "--trials", "3", "--suite", suite, "-q").output
    assert "on the test split" in text
    verify = ["export", tmp_path / "run", "--trial", 3, "--verify", "--suite", suite, "-q", "--force"]
    out = invoke(*verify, "--out", tmp_path / "r.yaml", "--format", "json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["split"] == "test"
    assert json.loads(out.stdout)["measured"] == pytest.approx(expected["test"])
    assert "on the test split" in invoke(*verify, "--out", tmp_path / "r.yaml").output
    bad = invoke("audit", tmp_path / "run", "--trials", "3", "--suite", suite, "--split", "dev")
    assert isinstance(bad.exception, ConfigError) and "--split 'dev'" in str(bad.exception)


def test_audit_compares_trials_with_a_reference_on_the_same_items(tiny_family, tmp_path: Path) -> None:
    from evomerge.fitness.selection.paired import compare_answers

    base, parents = tiny_family
    suite, tasks = write_suite(tmp_path / "suite", n_items=2, n_test=4)
    study = make_run(tmp_path / "run", base, list(parents), tasks, n_search=4, seed=12)
    view = RunView.from_study(study, tasks)
    recipes = {n: MergeRecipe.from_yaml(view.trial(n).recipe) for n in (3, 4)}
    evaluator = full_split_evaluator(suite, recipes[3], tasks)
    merger = live_merger_for(list(recipes.values()))
    answers = {n: evaluator.score_split(merger.apply(r), "test") for n, r in recipes.items()}
    args = ["audit", tmp_path / "run", "--trials", "3", "--reference", "4", "--suite", suite, "-q"]
    out = invoke(*args, "--format", "json")
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert payload["reference"] == 4 and [t["number"] for t in payload["trials"]] == [3, 4]
    assert "vs_reference" not in payload["trials"][1]
    for task in tasks:
        expected = compare_answers(answers[3], answers[4], evaluator.suite.test_ids[task]).to_dict()
        assert payload["trials"][0]["vs_reference"][task] == pytest.approx(expected)
        assert expected["n"] == 4
    text = invoke(*args).output
    assert "trial 3 - trial 4: arithmetic" in text and "McNemar p=" in text
