"""What a user reads: one accuracy unit in summary, tables, CSV and JSON; 80-column layouts that never
split a value; a progress bar whose ETA survives 80 columns; Ray's messages in the run log."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path

import pytest
from rich.console import Console
from runfixture import make_run
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.commands.search import RAY_LOG, print_summary, route_ray_logs
from evomerge.progress import progress_bar
from evomerge.runtime.driver import SearchSummary
from evomerge.runview import audit_key

TASKS = ["arithmetic", "logical_deduction"]  # long names: the tight case at 80 columns
runner = CliRunner()
VALUE = re.compile(r"\d+\.\d")  # an accuracy as people read it: percent, one decimal


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("units")
    study = make_run(root / "run", root / "base", [root / "p0", root / "p1"], TASKS, n_search=12, seed=4)
    estimates = study.get_trials()[5].user_attrs["estimates"]
    study.set_user_attr(audit_key(5), {t: estimates[t] + 0.1 for t in TASKS})
    return root / "run"


def cli(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def summary_text(summary: SearchSummary, width: int = 80) -> str:
    console = Console(file=io.StringIO(), width=width)
    print_summary(console, summary, None)
    return console.file.getvalue()


def test_one_unit_in_summary_table_csv_and_json(run_dir: Path) -> None:
    status = json.loads(cli("status", run_dir, "--format", "json"))
    front = json.loads(cli("front", run_dir, "--format", "json"))
    rows = list(csv.DictReader(io.StringIO(cli("front", run_dir, "--format", "csv"))))
    assert status["accuracy_unit"] == front["accuracy_unit"] == "fraction"
    best = {task: entry["value"] for task, entry in status["best"].items()}
    summary = summary_text(SearchSummary(run_dir, "s", "sqlite://", 12, 0, best, "budget", 0.9))
    status_table, front_table = cli("status", run_dir), cli("front", run_dir)
    assert "arithmetic %" in front_table and "best estimate %" in status_table
    for task, value in best.items():
        shown = f"{100 * value:.1f}"
        assert f"best {task}: {shown}%" in summary
        assert re.search(rf"│ {task}\s+│ {re.escape(shown)}\s+│", status_table)
    for record, row in zip(front["front"], rows, strict=True):
        for task in TASKS:
            fraction = record["estimates"][task]
            assert 0.0 <= fraction <= 1.0 and float(row[f"{task}_estimate_fraction"]) == fraction
            assert f"{100 * fraction:.1f} [" in front_table  # the same number, in percent


def test_tables_at_80_columns_keep_every_value_on_one_line(run_dir: Path) -> None:
    front_table = cli("front", run_dir)
    lines = front_table.splitlines()
    assert max(len(line) for line in lines) <= 80
    cells = re.findall(r"\d+\.\d \[\d+\.\d-\d+\.\d\]", front_table)
    assert len(cells) == 2 * len(json.loads(cli("front", run_dir, "--format", "json"))["front"])
    assert "measured " in front_table and not any(line.rstrip().endswith("[") for line in lines)
    status_table = cli("status", run_dir)
    assert max(len(line) for line in status_table.splitlines()) <= 80
    for line in status_table.splitlines():  # a value is never cut from its label at a line end
        assert not re.search(r"(\d+:|hypervolume|best|MAE)\s*$", line), line


def test_search_summary_at_80_columns_splits_no_value() -> None:
    best = {"arithmetic": 0.125, "logical_deduction": 0.25, "date_understanding": 0.3333}
    summary = SearchSummary(
        Path("runs/a-long-experiment-name"),
        "a-long-experiment-name-20261201-143524",
        "sqlite://",
        48,
        2,
        best,
        "budget",
        0.99,
    )
    text = summary_text(summary)
    assert "stopped: budget; worker utilization 99%" in text.splitlines()
    assert "  best date_understanding: 33.3%" in text.splitlines()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert not any(line.endswith(":") for line in text.splitlines())


def test_progress_bar_keeps_its_eta_at_80_columns() -> None:
    bar = progress_bar(Console(file=io.StringIO()))
    task = bar.add_task("search", total=50, info="2 failed, 2 running; best " + "arithmetic 12.5%, " * 6)
    bar.update(task, completed=10)
    out = Console(file=io.StringIO(), width=80)
    out.print(bar.make_tasks_table(bar.tasks))
    line = out.file.getvalue().splitlines()[0]
    assert len(line) <= 80 and "10/50" in line and line.endswith("…")
    assert re.search(r"10/50 (-:--:--|\d+:\d\d:\d\d) 2 failed", line), line  # the ETA, whole


@pytest.fixture
def ray_logger():
    """The "ray" logger's handlers, restored after the test."""
    import ray  # noqa: F401  (configures the logger, as in a search)

    logger = logging.getLogger("ray")
    saved = list(logger.handlers)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in saved:
        logger.addHandler(handler)


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_messages_go_to_the_run_log_and_to_the_terminal_only_when_verbose(
    tmp_path: Path, capfd: pytest.CaptureFixture, ray_logger: logging.Logger, verbose: bool
) -> None:
    route_ray_logs(tmp_path / RAY_LOG, verbose)
    logging.getLogger("ray._private.authentication.authentication_token_setup").warning(
        "Token authentication is enabled for this Ray cluster."
    )
    stderr = capfd.readouterr().err
    assert "Token authentication" in (tmp_path / RAY_LOG).read_text()
    assert ("Token authentication" in stderr) is verbose


def test_plots_read_accuracy_in_percent(run_dir: Path, tmp_path: Path) -> None:
    cli("plot", run_dir, "--out", tmp_path / "plots")
    page = (tmp_path / "plots" / "report.html").read_text()
    knee = json.loads(cli("front", run_dir, "--format", "json"))
    record = next(r for r in knee["front"] if r["number"] == knee["knee"])
    assert f"arithmetic: {100 * record['estimates']['arithmetic']:.1f}%" in page  # hover text
    assert '"tickformat":".0%"' in page  # axes in percent
