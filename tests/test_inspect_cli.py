"""`evomerge status / front / plot` on a fixture run, and their errors on bad input."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from runfixture import make_run
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ConfigError, RunNotFoundError
from evomerge.runview import audit_key

TASKS = ["arith", "logic"]
runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    study = make_run(root / "run", root / "base", [root / "p0", root / "p1"], TASKS, n_search=30, seed=4)
    # Two audited trials, stored the way `evomerge audit` stores them.
    for number, shift in ((5, 0.1), (9, -0.02)):
        estimates = study.get_trials()[number].user_attrs["estimates"]
        study.set_user_attr(audit_key(number), {t: estimates[t] + shift for t in TASKS})
    return root / "run"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def beats(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def stored_trials(run_dir: Path) -> list[dict]:
    """The completed trials read back with plain optuna, independently of evomerge's reader."""
    import optuna

    info = json.loads((run_dir / "run.json").read_text())
    study = optuna.load_study(study_name=info["study"], storage=info["storage"])
    return [
        {"number": t.number, "values": t.values, "kind": t.user_attrs["kind"]}
        for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    ]


def test_front_json_is_the_brute_force_front(run_dir: Path) -> None:
    result = invoke("front", run_dir, "--format", "json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    trials = stored_trials(run_dir)
    expected = sorted(t["number"] for t in trials if not any(beats(o["values"], t["values"]) for o in trials))
    assert sorted(r["number"] for r in payload["front"]) == expected
    assert payload["knee"] in expected
    for row in payload["front"]:
        values = next(t["values"] for t in trials if t["number"] == row["number"])
        assert [row["estimates"][t] for t in TASKS] == values
        for task in TASKS:
            low, high = row["intervals"][task]
            assert low <= row["estimates"][task] <= high


def test_front_csv_and_table(run_dir: Path) -> None:
    result = invoke("front", run_dir, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    payload = json.loads(invoke("front", run_dir, "--format", "json").stdout)
    assert [int(r["number"]) for r in rows] == [r["number"] for r in payload["front"]]
    estimates = [r["estimates"]["arith"] for r in payload["front"]]
    assert [float(r["arith_estimate_fraction"]) for r in rows] == estimates
    table = invoke("front", run_dir).output
    assert f"{payload['knee']}*" in table and "the knee of the front" in table and "Pareto front" in table


def test_status_reports_counts_best_and_audit(run_dir: Path) -> None:
    result = invoke("status", run_dir, "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["trials"] == {"total": 36, "complete": 33, "failed": 2, "running": 1, "other": 0}
    trials = stored_trials(run_dir)
    for j, task in enumerate(TASKS):
        assert summary["best"][task]["value"] == max(t["values"][j] for t in trials)
    assert len(summary["hypervolume_history"]) == 33
    audit = summary["audit"]
    assert audit["n_trials"] == 2
    assert audit["mae"] == pytest.approx((0.1 + 0.02) / 2)
    assert audit["tasks"]["arith"]["bias"] == pytest.approx((-0.1 + 0.02) / 2)
    text = invoke("status", run_dir).output
    assert "33 complete, 2 failed, 1 running" in text
    assert "running MAE over 2 audited trials: 6.0 points" in text


def test_status_by_storage_and_study(run_dir: Path) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    result = invoke("status", "--storage", info["storage"], "--study", info["study"], "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["study"] == info["study"]


def test_plot_writes_png_and_html(run_dir: Path, tmp_path: Path) -> None:
    result = invoke("plot", run_dir, "--out", tmp_path / "plots", "--trial", 7, "--format", "json")
    assert result.exit_code == 0, result.output
    files = [Path(p) for p in json.loads(result.stdout)["files"]]
    assert {p.name for p in files} == {"pareto.png", "history.png", "coefficients.png", "report.html"}
    assert all(p.stat().st_size > 10_000 for p in files)
    assert "Merge coefficients of trial #7" in (tmp_path / "plots" / "report.html").read_text()


def test_bad_input(run_dir: Path, tmp_path: Path) -> None:
    result = invoke("status", tmp_path / "nowhere")
    assert isinstance(result.exception, RunNotFoundError)
    info = json.loads((run_dir / "run.json").read_text())
    result = invoke("front", "--storage", info["storage"], "--study", "no-such-study")
    assert isinstance(result.exception, RunNotFoundError)
    result = invoke("status")
    assert isinstance(result.exception, ConfigError) and "RUN" in str(result.exception)
    result = invoke("status", run_dir, "--format", "csv")  # refused by click: only front writes csv
    assert result.exit_code == 2 and "Invalid value for '--format'" in result.output
    result = invoke("plot", run_dir, "--out", tmp_path / "p", "--trial", 34)  # a FAIL trial
    assert isinstance(result.exception, ConfigError) and "FAIL" in str(result.exception)


def test_cli_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "evomerge.cli", "status", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2
    assert process.stderr.startswith("error:") and str(tmp_path / "nowhere") in process.stderr


WRITER = """
import os, sys, time, optuna
sys.path.insert(0, {tests!r})
from runfixture import recipe_yaml
import numpy as np
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name={study!r}, storage={storage!r})
rng = np.random.default_rng(0)
for i in range(40):
    if i == 20:  # hold mid-search until the reader has seen a partial count (no race on a fast machine)
        deadline = time.monotonic() + 60
        while not os.path.exists({go!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
    trial = study.ask()  # RUNNING while it is "evaluated", as a search does
    time.sleep(0.02)
    values = [float(v) for v in rng.uniform(0.2, 0.9, 2)]
    trial.set_user_attr("kind", "search")
    trial.set_user_attr("recipe", recipe_yaml("b", ["p0"], rng.uniform(0, 1, (1, 4))))
    study.tell(trial, values)
"""


def test_status_while_a_search_writes(tmp_path: Path) -> None:
    root = tmp_path
    make_run(root / "run", root / "base", [root / "p0"], TASKS, n_search=2, n_failed=0, n_running=0, seed=2)
    info = json.loads((root / "run" / "run.json").read_text())
    go = root / "reader-saw-a-partial-count"
    script = WRITER.format(
        tests=str(Path(__file__).parent), study=info["study"], storage=info["storage"], go=str(go)
    )
    before = json.loads(invoke("status", root / "run", "--format", "json").stdout)["trials"]["complete"]
    writer = subprocess.Popen([sys.executable, "-c", script])
    seen = []
    try:
        while writer.poll() is None:
            result = invoke("status", root / "run", "--format", "json")
            assert result.exit_code == 0, result.output
            seen.append(json.loads(result.stdout)["trials"]["complete"])
            if before < seen[-1] < before + 40:
                go.touch()
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert any(before < n < before + 40 for n in seen)  # some reads happened mid-search
    assert seen == sorted(seen)  # and the counts never went backwards
    final = json.loads(invoke("status", root / "run", "--format", "json").stdout)
    assert final["trials"]["complete"] == before + 40 and final["trials"]["running"] == 0


def test_a_run_with_no_completed_trial(tmp_path: Path) -> None:
    """Right after a search starts: only RUNNING trials. Reading works; choosing a trial is an error."""
    make_run(tmp_path / "run", tmp_path / "b", [], TASKS, n_search=0, n_failed=1, n_running=1)
    summary = json.loads(invoke("status", tmp_path / "run", "--format", "json").stdout)
    assert summary["trials"]["complete"] == 0 and summary["front_size"] == 0 and summary["hypervolume"] == 0.0
    assert json.loads(invoke("front", tmp_path / "run", "--format", "json").stdout)["front"] == []
    result = invoke("plot", tmp_path / "run", "--out", tmp_path / "plots")
    assert result.exit_code == 0 and (tmp_path / "plots" / "pareto.png").stat().st_size > 0
    result = invoke("export", tmp_path / "run", "--knee", "--out", tmp_path / "r.yaml")
    assert isinstance(result.exception, ConfigError) and "no completed trial" in str(result.exception)


@pytest.mark.postgres
def test_status_and_front_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    # The fixture writes through optuna directly, with the psycopg2 driver named; users give the plain URL.
    driver_url = "postgresql+psycopg2://" + postgres_url.split("://", 1)[1]
    study = make_run(
        tmp_path / "run", tmp_path / "b", [tmp_path / "p0"], TASKS, n_search=8, storage=driver_url
    )
    args = ["--storage", postgres_url, "--study", study.study_name, "--format", "json"]
    summary = json.loads(invoke("status", *args).stdout)
    assert summary["trials"]["complete"] == 10 and summary["study"] == study.study_name
    front = json.loads(invoke("front", *args).stdout)["front"]
    values = {t.number: t.values for t in study.get_trials() if t.state.name == "COMPLETE"}
    expected = {n for n, v in values.items() if not any(beats(o, v) for o in values.values())}
    assert {r["number"] for r in front} == expected
