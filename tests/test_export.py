"""`evomerge export`: the chosen trial's recipe, the materialized model, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from runfixture import make_run
from safetensors.torch import load_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ConfigError
from evomerge.recipe import MergeRecipe
from evomerge.runview import RunView

TASKS = ["arith", "logic"]
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tiny_family, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunView]:
    base, parents = tiny_family
    root = tmp_path_factory.mktemp("export")
    study = make_run(root / "run", base, list(parents), TASKS, n_search=10, seed=5)
    return root / "run", RunView.from_study(study, TASKS)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def exported(out: Path, *args) -> dict:
    result = invoke("export", *args, "--out", out, "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_export_writes_the_trials_recipe(run, tmp_path: Path) -> None:
    run_dir, view = run
    payload = exported(tmp_path / "r.yaml", run_dir, "--trial", 6)
    assert payload["trial"] == 6
    written = MergeRecipe.from_yaml((tmp_path / "r.yaml").read_text())
    assert written == MergeRecipe.from_yaml(view.trial(6).recipe)
    assert payload["estimates"] == view.trial(6).estimates


def test_knee_and_weights_choose_the_right_trial(run, tmp_path: Path) -> None:
    run_dir, view = run
    assert exported(tmp_path / "k.yaml", run_dir, "--knee")["trial"] == view.knee().number
    best = max(view.completed, key=lambda r: 3 * r.values[0] + r.values[1])
    assert exported(tmp_path / "w.yaml", run_dir, "--weights", "arith=3,logic=1")["trial"] == best.number
    best_logic = max(view.completed, key=lambda r: r.values[1])
    assert exported(tmp_path / "l.yaml", run_dir, "--weights", "logic=1")["trial"] == best_logic.number


def test_materialized_model_is_the_scored_model(run, tiny_family, tmp_path: Path) -> None:
    from evomerge.merge.live import LiveMerger

    run_dir, view = run
    base, parents = tiny_family
    payload = exported(tmp_path / "r.yaml", run_dir, "--trial", 8, "--materialize", tmp_path / "model")
    assert payload["model"] == str(tmp_path / "model")
    saved: dict[str, torch.Tensor] = {}
    for shard in sorted((tmp_path / "model").glob("*.safetensors")):
        saved.update(load_file(shard))
    # What the search scored: the same recipe written into the live model in memory.
    merger = LiveMerger(base, list(parents))
    merger.apply(MergeRecipe.from_yaml(view.trial(8).recipe))
    live = merger.model.state_dict()
    assert set(saved) == set(live)
    for name, tensor in live.items():
        assert torch.equal(saved[name], tensor.to(saved[name].dtype)), name


def test_export_refuses_bad_input_and_writes_nothing(run, tmp_path: Path) -> None:
    run_dir, view = run
    failed = next(r.number for r in view.trials if r.state == "FAIL")
    out = tmp_path / "r.yaml"
    cases = [
        (["--trial", 999], "--trial 999: no such trial"),
        (["--trial", failed], "FAIL"),
        (["--weights", "maths=1"], "unknown task 'maths'"),
        ([], "choose exactly one of"),
        (["--trial", 1, "--knee"], "choose exactly one of"),
    ]
    for args, message in cases:
        result = invoke("export", run_dir, *args, "--out", out)
        assert isinstance(result.exception, ConfigError), result.output
        assert message in str(result.exception)
        assert not out.exists()
    out.write_text("keep me")
    result = invoke("export", run_dir, "--trial", 1, "--out", out)
    assert isinstance(result.exception, ConfigError) and "--force" in str(result.exception)
    assert out.read_text() == "keep me"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "x").write_text("x")
    result = invoke(
        "export", run_dir, "--trial", 1, "--out", tmp_path / "new.yaml", "--materialize", tmp_path / "model"
    )
    assert isinstance(result.exception, ConfigError) and "--materialize" in str(result.exception)
    assert not (tmp_path / "new.yaml").exists()
    exported(out, run_dir, "--trial", 1, "--force")
    assert MergeRecipe.from_yaml(out.read_text()) == MergeRecipe.from_yaml(view.trial(1).recipe)


def test_an_unwritable_model_path_is_one_line_and_no_recipe_is_written(run, tmp_path: Path) -> None:
    """The recipe is written only once its model is: a failed --materialize leaves neither."""
    run_dir, _ = run
    result = invoke(
        "export", run_dir, "--trial", 6, "--out", tmp_path / "r.yaml", "--materialize", "/proc/evomerge-m"
    )
    assert isinstance(result.exception, ConfigError), result.output
    assert "cannot write the model to '/proc/evomerge-m'" in str(result.exception)
    assert not (tmp_path / "r.yaml").exists()
    bad_recipe = invoke("export", run_dir, "--trial", 6, "--out", "/proc/evomerge.yaml")
    assert isinstance(bad_recipe.exception, ConfigError) and "cannot write '/proc/evomerge.yaml'" in str(
        bad_recipe.exception
    )


def test_merge_into_an_unwritable_directory_is_one_line(run, tmp_path: Path) -> None:
    _, view = run
    recipe = tmp_path / "r.yaml"
    recipe.write_text(view.trial(6).recipe)
    result = invoke("merge", recipe, "/proc/evomerge-out", "--no-progress")
    assert isinstance(result.exception, ConfigError), result.output
    assert "cannot write the model to '/proc/evomerge-out'" in str(result.exception)


def test_the_dashboard_on_a_busy_port_is_one_line(run) -> None:
    import socket

    run_dir, _ = run
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = invoke("dashboard", run_dir, "--port", port)
    assert isinstance(result.exception, ConfigError), result.output
    assert f"cannot serve on 127.0.0.1:{port}" in str(result.exception) and "pass another --port" in str(
        result.exception
    )
