"""A tiny real search (the quickstart experiment, 2 search trials), then every inspect command on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.commands.inspect import _suite_for
from evomerge.errors import ConfigError
from evomerge.recipe import MergeRecipe
from evomerge.store import open_run

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_inspect_a_real_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "EVOMERGE_CACHE": str(tmp_path / "cache")}
    search = subprocess.run(
        [
            sys.executable,
            "-m",
            "evomerge.cli",
            "search",
            "experiments/quickstart.yaml",
            "--run-dir",
            str(tmp_path / "run"),
            "--max-trials",
            "2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert search.returncode == 0, search.stderr[-2000:]
    run = tmp_path / "run"
    store = open_run(run)
    completed = [t for t in store.trials() if t.state.name == "COMPLETE"]

    status = json.loads(invoke("status", run, "--format", "json").stdout)
    assert status["trials"]["complete"] == len(completed) >= 3  # parents + baseline + search trials
    assert {t.user_attrs["kind"] for t in completed} >= {"parent", "baseline", "search"}

    front = json.loads(invoke("front", run, "--format", "json").stdout)
    values = {t.number: t.values for t in completed}
    beaten = {
        n
        for n, v in values.items()
        if any(
            all(x >= y for x, y in zip(o, v, strict=True)) and any(x > y for x, y in zip(o, v, strict=True))
            for o in values.values()
        )
    }
    assert {r["number"] for r in front["front"]} == set(values) - beaten

    files = json.loads(invoke("plot", run, "--out", tmp_path / "plots", "--format", "json").stdout)["files"]
    assert len(files) == 4 and all(Path(f).stat().st_size > 0 for f in files)

    # The run records its suite's absolute path: found from any directory.
    monkeypatch.chdir(tmp_path)
    assert _suite_for(store, None) == (REPO / "fitness" / "demo.yaml").resolve()
    # Runs from before that record: the experiment's relative path, tried under ./experiments.
    store.study.set_user_attr("suite_path", "")
    with pytest.raises(ConfigError, match="not found beside the run"):
        _suite_for(store, None)
    monkeypatch.chdir(REPO)
    assert _suite_for(store, None) == (REPO / "fitness" / "demo.yaml").resolve()

    suite = REPO / "fitness" / "demo.yaml"  # the run's own suite: 100 eval items a task, a quick audit
    audit = json.loads(invoke("audit", run, "--front", "--suite", suite, "--format", "json", "-q").stdout)
    assert audit["audit"]["n_trials"] == len(front["front"])

    knee = front["knee"]
    out = json.loads(
        invoke(
            "export",
            run,
            "--knee",
            "--out",
            tmp_path / "r.yaml",
            "--materialize",
            tmp_path / "model",
            "--verify",
            "--suite",
            suite,
            "--format",
            "json",
            "-q",
        ).stdout
    )
    assert out["trial"] == knee
    assert MergeRecipe.from_yaml((tmp_path / "r.yaml").read_text()) == MergeRecipe.from_yaml(
        store.study.trials[knee].user_attrs["recipe"]
    )
    measured = next(t["measured"] for t in audit["trials"] if t["number"] == knee)
    assert out["measured"] == pytest.approx(measured)
