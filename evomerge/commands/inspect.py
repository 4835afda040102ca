"""Inspect and export a run: status, front, plot, audit, export, dashboard."""

from __future__ import annotations

import csv
import io
import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from evomerge.errors import ConfigError


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


RUN_ARG = typer.Argument(None, help="Run directory (holds run.json); or give --storage and --study.")
STORAGE_OPT = typer.Option(None, "--storage", help="Optuna storage URL (sqlite:///..., postgresql://...).")
STUDY_OPT = typer.Option(None, "--study", help="Study name inside --storage.")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def _open(run: Path | None, storage: str | None, study: str | None) -> tuple[Any, Any]:
    """The run's store and a RunView of it (read-only)."""
    from evomerge.runview import RunView
    from evomerge.store import open_run

    if run is None and storage is None:
        raise ConfigError("RUN: give a run directory, or --storage URL and --study NAME")
    store = open_run(run_dir=run, storage=storage, study=study)
    return store, RunView.from_study(store.study, store.objectives)


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def _check_format(fmt: Format, allowed: tuple[Format, ...]) -> None:
    if fmt not in allowed:
        names = "|".join(f.value for f in allowed)
        raise ConfigError(f"--format {fmt.value}: not available for this command; use {names}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


# ----- status ---------------------------------------------------------------------------------
def status(
    run: Path | None = RUN_ARG,
    storage: str | None = STORAGE_OPT,
    study: str | None = STUDY_OPT,
    fmt: Format = typer.Option(Format.table, "--format", help="table or json."),
) -> None:
    """Trials done / failed / running, best per task, front size, hypervolume, estimator audit."""
    _check_format(fmt, (Format.table, Format.json))
    _, view = _open(run, storage, study)
    summary = view.summary()
    if fmt is Format.json:
        _print_json(summary)
        return
    console = Console()
    t = summary["trials"]
    console.print(
        f"[bold]{summary['study']}[/]: {t['complete']} complete, {t['failed']} failed, "
        f"{t['running']} running"
        + (f", {t['other']} other" if t["other"] else "")
        + f" ({t['total']} trials)"
    )
    best = Table("task", "best estimate %", "trial", "label", title="Best per task")
    for task in summary["objectives"]:
        entry = summary["best"].get(task)
        best.add_row(
            task, *([_pct(entry["value"]), str(entry["number"]), entry["label"]] if entry else ["-"] * 3)
        )
    console.print(best)
    history = summary["hypervolume_history"]
    console.print(f"Pareto front: {summary['front_size']} trials; hypervolume {summary['hypervolume']:.4f}")
    if history:
        # A few checkpoints of the history: enough to see whether the search still improves.
        marks = sorted({max(0, round(f * len(history)) - 1) for f in (0.25, 0.5, 0.75, 1.0)})
        steps = ", ".join(f"{history[i]['completed']}: {history[i]['hypervolume']:.4f}" for i in marks)
        console.print(f"hypervolume after N completed trials: {steps}")
    audit = summary["audit"]
    if audit["n_trials"]:
        table = Table("task", "n", "MAE (pts)", "bias (pts)", "in interval %", title="Estimator audit")
        for task, row in audit["tasks"].items():
            table.add_row(task, str(row["n"]), _pct(row["mae"]), _pct(row["bias"]), _pct(row["coverage"]))
        console.print(table)
        console.print(f"running MAE over {audit['n_trials']} audited trials: {_pct(audit['mae'])} points")
    else:
        console.print("estimator audit: no trial audited yet (run `evomerge audit RUN --front`)")


# ----- front ----------------------------------------------------------------------------------
def front(
    run: Path | None = RUN_ARG,
    storage: str | None = STORAGE_OPT,
    study: str | None = STUDY_OPT,
    fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv."),
) -> None:
    """The non-dominated completed trials, with estimates, intervals and audited measurements."""
    _, view = _open(run, storage, study)
    records = view.front()
    knee = view.knee().number if records else None
    if fmt is Format.json:
        _print_json(
            {
                "study": view.name,
                "objectives": view.objectives,
                "knee": knee,
                "front": [r.to_dict(view.objectives) for r in records],
            }
        )
    elif fmt is Format.csv:
        typer.echo(_front_csv(view.objectives, records), nl=False)
    else:
        table = Table("trial", "kind", "label", title=f"Pareto front of {view.name} (estimate % [interval])")
        for task in view.objectives:
            table.add_column(task)
        for r in records:
            cells = []
            for task in view.objectives:
                low, high = r.intervals.get(task, (None, None))
                cell = f"{_pct(r.estimates.get(task))} [{_pct(low)}, {_pct(high)}]"
                if r.audit and task in r.audit:
                    cell += f" meas {_pct(r.audit[task])}"
                cells.append(cell)
            mark = " (knee)" if r.number == knee else ""
            table.add_row(f"{r.number}{mark}", r.kind, r.label, *cells)
        Console().print(table)


def _front_csv(objectives: list[str], records: list[Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["number", "kind", "label"]
        + [f"{t}_{col}" for t in objectives for col in ("estimate", "low", "high", "measured")]
    )
    for r in records:
        row: list[Any] = [r.number, r.kind, r.label]
        for task in objectives:
            low, high = r.intervals.get(task, ("", ""))
            row += [r.estimates.get(task, ""), low, high, (r.audit or {}).get(task, "")]
        writer.writerow(row)
    return buffer.getvalue()


# ----- plot -----------------------------------------------------------------------------------
def plot(
    run: Path | None = RUN_ARG,
    storage: str | None = STORAGE_OPT,
    study: str | None = STUDY_OPT,
    out: Path = typer.Option(Path("plots"), "--out", help="Directory for the PNGs and report.html."),
    trial: int | None = typer.Option(None, "--trial", help="Trial whose coefficients the heat-map shows."),
    fmt: Format = typer.Option(Format.table, "--format", help="table (paths, one a line) or json."),
) -> None:
    """Pareto front, best-so-far and hypervolume history, coefficient heat-map: PNG and HTML."""
    from evomerge.report import write_report

    _check_format(fmt, (Format.table, Format.json))
    _, view = _open(run, storage, study)
    paths = write_report(view, out, trial)
    if fmt is Format.json:
        _print_json({"files": [str(p) for p in paths]})
    else:
        for path in paths:
            typer.echo(str(path))


# ----- dashboard ------------------------------------------------------------------------------
def dashboard(
    run: Path | None = RUN_ARG,
    storage: str | None = STORAGE_OPT,
    study: str | None = STUDY_OPT,
    port: int = typer.Option(8080, "--port", help="Port to serve on."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind (0.0.0.0 exposes it to the network)."
    ),
) -> None:
    """Open the run in optuna-dashboard (the study's trials, Pareto front, history); Ctrl-C stops."""
    import optuna
    import optuna_dashboard

    store, view = _open(run, storage, study)
    backend = store.study._storage  # the study's own storage object: no second connection string to trust
    # Name the objectives after the tasks, so the dashboard's axes read "arith", not "Objective 0".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        store.study.set_metric_names(view.objectives)
    study_id = backend.get_study_id_from_name(view.name)
    typer.echo(f"optuna-dashboard for study {view.name!r}: http://{host}:{port}/dashboard/studies/{study_id}")
    optuna_dashboard.run_server(backend, host=host, port=port)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("front")(front)
    app.command("plot")(plot)
    app.command("dashboard")(dashboard)
