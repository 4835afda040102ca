"""Inspect and export a run: status, front, plot, audit, export, dashboard."""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evomerge.atomic import write_atomic
from evomerge.errors import ConfigError
from evomerge.units import CSV_SUFFIX, JSON_UNIT, pct


class Format(str, Enum):
    """--format of a command that prints for people (table) or for scripts (json)."""

    table = "table"
    json = "json"


class FrontFormat(str, Enum):
    """`front --format`: also csv, one row per trial."""

    table = "table"
    json = "json"
    csv = "csv"


RUN_ARG = typer.Argument(None, help="Run directory (holds run.json); or give --storage and --study.")
STORAGE_OPT = typer.Option(
    None, "--storage", metavar="URL", help="Optuna storage URL (sqlite:///..., postgresql://...)."
)
STUDY_OPT = typer.Option(None, "--study", metavar="NAME", help="Study name inside --storage.")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars.")


class ScoreDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


TABLE_OR_JSON_OPT = typer.Option(
    Format.table, "--format", help="table (for people) or json (for scripts; accuracies as fractions)."
)
DEVICE_OPT = typer.Option("cpu", "--device", help="torch device to score on (audit, export --verify).")
SPLIT_OPT = typer.Option(
    None,
    "--split",
    help="test (held out from calibration, anchors and search; the default where every task has "
    "test items) or eval (the selection pool the search read).",
)
DTYPE_OPT = typer.Option(
    ScoreDtype.float32,
    "--dtype",
    metavar="DTYPE",
    help="float32, bfloat16 or float16: dtype of the model scored on the full split (merges are "
    "computed in float32); match the run's workers.dtype to audit what the search scored.",
)


def _open(run: Path | None, storage: str | None, study: str | None) -> tuple[Any, Any]:
    """The run's store and a RunView of it (read-only)."""
    from evomerge.runview import RunView
    from evomerge.store import open_run

    if run is None and storage is None:
        raise ConfigError("RUN: give a run directory, or --storage URL and --study NAME")
    store = open_run(run_dir=run, storage=storage, study=study)
    return store, RunView.from_store(store)


SUITE_OPT = typer.Option(
    None, "--suite", help="Fitness suite YAML the run was searched with (default: the run's experiment's)."
)


def _suite_for(store: Any, suite: Path | None) -> Path:
    """The fitness suite to measure on: --suite, else the one the run's experiment names.

    Runs record the suite's absolute path when they start. For older runs, whose experiment copy
    holds the path relative to the original file, it is tried beside the copy and under
    ./experiments (where `evomerge search` is run from).
    """
    if suite is not None:
        return suite
    import yaml

    recorded = store.read_study_attr("suite_path")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    named = (yaml.safe_load(store.experiment_yaml or "") or {}).get("suite")
    roots = [store.run_dir, Path("experiments")] if store.run_dir is not None else [Path("experiments")]
    for root in roots if named else []:
        if (root / named).is_file():
            return (root / named).resolve()
    raise ConfigError(
        f"--suite: the run's experiment names suite {named!r}, which is not found beside the run or under "
        "./experiments; pass --suite PATH (the suite the run was searched with)"
    )


def _show_progress(quiet: bool) -> bool:
    """Progress bars only for a person watching: not with --quiet, not when stderr is no terminal."""
    show = not quiet and sys.stderr.isatty()
    if not show:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the bars transformers draws while loading a model
    return show


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


# ----- status ---------------------------------------------------------------------------------
def status(
    run: Path | None = RUN_ARG,
    storage: str | None = STORAGE_OPT,
    study: str | None = STUDY_OPT,
    fmt: Format = TABLE_OR_JSON_OPT,
) -> None:
    """Trials done / failed / running, best per task, front size, hypervolume, estimator audit."""
    _, view = _open(run, storage, study)
    summary = view.summary()
    if fmt is Format.json:
        _print_json({**summary, **JSON_UNIT})
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
            task, *([pct(entry["value"]), str(entry["number"]), entry["label"]] if entry else ["-"] * 3)
        )
    console.print(best)
    history = summary["hypervolume_history"]
    console.print(f"Pareto front: {summary['front_size']} trials; hypervolume {summary['hypervolume']:.4f}")
    if history:
        # A few checkpoints of the history: enough to see whether the search still improves.
        marks = sorted({max(0, round(f * len(history)) - 1) for f in (0.25, 0.5, 0.75, 1.0)})
        steps = "  ".join(f"{history[i]['completed']}:{history[i]['hypervolume']:.4f}" for i in marks)
        console.print(f"hypervolume after N completed trials (N:hv): {steps}")
    audit = summary["audit"]
    if audit["n_trials"]:
        table = Table("task", "n", "MAE (pts)", "bias (pts)", "in interval %", title="Estimator audit")
        for task, row in audit["tasks"].items():
            table.add_row(task, str(row["n"]), pct(row["mae"]), pct(row["bias"]), pct(row["coverage"]))
        console.print(table)
        console.print(f"running MAE over {audit['n_trials']} audited trials: {pct(audit['mae'])} points")
    else:
        console.print("estimator audit: no trial audited yet (run `evomerge audit RUN --front`)")


# ----- front ----------------------------------------------------------------------------------
def front(
    run: Path | None = RUN_ARG,
    storage: str | None = STORAGE_OPT,
    study: str | None = STUDY_OPT,
    fmt: FrontFormat = typer.Option(
        FrontFormat.table,
        "--format",
        help="table (for people), json or csv (for scripts; accuracies as fractions).",
    ),
) -> None:
    """The non-dominated completed trials, with estimates, intervals and audited measurements."""
    _, view = _open(run, storage, study)
    records = view.front()
    knee = view.knee().number if records else None
    if fmt is FrontFormat.json:
        _print_json(
            {
                "study": view.name,
                "objectives": view.objectives,
                **JSON_UNIT,
                "knee": knee,
                "front": [r.to_dict(view.objectives) for r in records],
            }
        )
    elif fmt is FrontFormat.csv:
        typer.echo(_front_csv(view.objectives, records), nl=False)
    else:
        Console().print(_front_table(view, records, knee))


def _front_table(view: Any, records: list[Any], knee: int | None) -> Table:
    """Per task `estimate [low-high]`, one token per value so a narrow terminal never splits one;
    an audited trial's measurement on a second line of its cell."""
    promoted = any(r.rung for r in view.completed)
    notes = ["* the knee of the front"] if knee is not None else []
    if promoted:
        notes.append("rung: the promotion rung of the values (0: the anchors)")
    if view.incumbent is not None:
        notes.append(f"the incumbent: trial {view.incumbent}")
    table = Table(
        "trial",
        "kind",
        "label",
        *(["rung"] if promoted else []),
        title=escape(f"Pareto front of {view.name}: estimate [interval]"),
        caption="; ".join(notes) or None,
    )
    for task in view.objectives:
        table.add_column(f"{task} %", no_wrap=True)
    for r in records:
        cells = []
        for task in view.objectives:
            low, high = r.intervals.get(task, (None, None))
            cell = f"{pct(r.estimates.get(task))} [{pct(low)}-{pct(high)}]"
            if r.audit and task in r.audit:
                cell += f"\nmeasured {pct(r.audit[task])}"
            cells.append(cell)
        mark = "*" if r.number == knee else ""
        rung = [str(r.rung)] if promoted else []
        table.add_row(f"{r.number}{mark}", r.kind, escape(r.label), *rung, *map(escape, cells))
    return table


def _front_csv(objectives: list[str], records: list[Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["number", "kind", "label", "rung"]
        + [f"{t}_{col}{CSV_SUFFIX}" for t in objectives for col in ("estimate", "low", "high", "measured")]
    )
    for r in records:
        row: list[Any] = [r.number, r.kind, r.label, r.rung]
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

    _, view = _open(run, storage, study)
    paths = write_report(view, out, trial)
    if fmt is Format.json:
        _print_json({"files": [str(p) for p in paths]})
    else:
        for path in paths:
            typer.echo(str(path))


# ----- audit ----------------------------------------------------------------------------------
def _parse_trials(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--trials {text!r}: expected trial numbers separated by commas, e.g. 3,7,12"
        ) from None


def audit(
    run: Path | None = RUN_ARG,
    storage: str | None = STORAGE_OPT,
    study: str | None = STUDY_OPT,
    on_front: bool = typer.Option(False, "--front", help="Audit every trial on the Pareto front."),
    trials: str | None = typer.Option(None, "--trials", help="Audit these trials, e.g. 3,7,12."),
    reference: int | None = typer.Option(
        None,
        "--reference",
        help="Also audit this trial and compare every other one with it on the same items: "
        "difference ± paired SE and McNemar's p.",
    ),
    suite: Path | None = SUITE_OPT,
    split: str | None = SPLIT_OPT,
    device: str = DEVICE_OPT,
    dtype: ScoreDtype = DTYPE_OPT,
    quiet: bool = QUIET_OPT,
    fmt: Format = TABLE_OR_JSON_OPT,
) -> None:
    """Re-score chosen trials on a full split (test by default); store measured beside estimated."""
    from evomerge.audit import audit_trials, compare_to_reference, full_split_evaluator, resolve_split
    from evomerge.progress import progress_bar
    from evomerge.recipe import MergeRecipe
    from evomerge.runview import RunView

    store, view = _open(run, storage, study)
    chosen = {r.number: r for r in view.front()} if on_front else {}
    for number in _parse_trials(trials) if trials else []:
        chosen[number] = view.trial(number)
    if reference is not None:
        chosen[reference] = view.trial(reference)
    if not chosen:
        raise ConfigError("audit: no trial selected; pass --front and/or --trials N,M,...")
    records = [chosen[n] for n in sorted(chosen)]

    evaluator = full_split_evaluator(
        _suite_for(store, suite), MergeRecipe.from_yaml(records[0].recipe), view.objectives, device
    )
    split = resolve_split(evaluator.suite, split)
    with progress_bar(disable=not _show_progress(quiet), transient=True) as bar:
        task = bar.add_task("audit", total=len(records), info=f"scoring trials on the full {split} split")
        measured, answers = audit_trials(
            store,
            view,
            records,
            evaluator,
            lambda done, _: bar.update(task, completed=done),
            device=device,
            dtype=dtype.value,
            split=split,
        )
    summary = RunView.from_store(store).audit_summary()
    paired = {} if reference is None else compare_to_reference(evaluator.suite, split, answers, reference)
    if fmt is Format.json:
        rows = [
            {"number": r.number, "estimates": r.estimates, "measured": measured[r.number]}
            | ({"vs_reference": paired[r.number]} if r.number in paired else {})
            for r in records
        ]
        _print_json({"trials": rows, "audit": summary, "split": split, "reference": reference, **JSON_UNIT})
        return
    table = Table("trial", title="Estimated / measured")
    for task in view.objectives:
        table.add_column(f"{task} %", no_wrap=True)
    for r in records:
        cells = [f"{pct(r.estimates.get(t))}/{pct(measured[r.number][t])}" for t in view.objectives]
        table.add_row(str(r.number), *cells)
    console = Console()
    console.print(table)
    console.print(f"measured on the {split} split", soft_wrap=True)
    for number, tasks in paired.items():
        cells = [
            f"{task} {c['diff'] * 100:+.1f} ± {pct(c['se'])} pts (McNemar p={c['p_value']:.3g})"
            for task, c in tasks.items()
        ]
        console.print(f"trial {number} - trial {reference}: " + ", ".join(cells), soft_wrap=True)
    console.print(f"running MAE over {summary['n_trials']} audited trials: {pct(summary['mae'])} points")


# ----- export ---------------------------------------------------------------------------------
def _choose(
    view: Any, trial: int | None, knee: bool, lcb: bool, weights: str | None, incumbent: bool = False
) -> Any:
    """One trial: by number, promotion's incumbent, the knee or the best lower bound (either with
    optional --weights), or the best weighted sum (--weights alone). Knee, lcb and weights choose
    among the trials at the highest promotion rung (`RunView.pick_pool`)."""
    flags = (("--trial", trial is not None), ("--incumbent", incumbent), ("--knee", knee), ("--lcb", lcb))
    given = [name for name, on in flags if on]
    exclusive = (trial is not None or incumbent) and weights is not None
    if len(given) > 1 or (not given and weights is None) or exclusive:
        raise ConfigError(
            "export: choose exactly one of --trial N, --incumbent, --knee, --lcb, --weights task=w,... "
            "(--knee and --lcb take --weights as task weights) "
            f"(got {', '.join(given + (['--weights'] if weights else [])) or 'none'})"
        )
    parsed = view.parse_weights(weights) if weights is not None else None
    if trial is not None:
        return view.trial(trial)
    if incumbent:
        return view.incumbent_record()
    if knee:
        return view.knee(parsed)
    if lcb:
        return view.best_lower_bound(parsed)
    return view.weighted(parsed)


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary sibling and rename: a reader never sees half a recipe."""
    try:
        write_atomic(path, text)
    except OSError as error:
        raise ConfigError(f"cannot write {str(path)!r} ({error.strerror}); choose a writable path") from None


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"cannot serve on {host}:{port} ({error.strerror}); pass another --port (or --host)"
            ) from None


def export(
    run: Path | None = RUN_ARG,
    storage: str | None = STORAGE_OPT,
    study: str | None = STUDY_OPT,
    trial: int | None = typer.Option(None, "--trial", help="Export this completed trial."),
    incumbent: bool = typer.Option(
        False,
        "--incumbent",
        help="Export promotion's incumbent: the trial that won the paired tests at the top rung.",
    ),
    knee: bool = typer.Option(
        False, "--knee", help="Export the knee of the Pareto front (nearest the ideal in accuracy points)."
    ),
    lcb: bool = typer.Option(
        False, "--lcb", help="Export the trial with the best weighted sum of its intervals' lower bounds."
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="Task weights, e.g. arith=2,logic=1: alone, export the best weighted sum; with --knee "
        "or --lcb, weigh the tasks there.",
    ),
    out: Path = typer.Option(..., "--out", help="Recipe YAML to write (mergekit-compatible)."),
    materialize: Path | None = typer.Option(
        None, "--materialize", help="Also write the merged HF model here."
    ),
    verify: bool = typer.Option(
        False, "--verify", help="Score the exported model on a full split (--split; test by default)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite --out / --materialize if they exist."),
    suite: Path | None = SUITE_OPT,
    split: str | None = SPLIT_OPT,
    device: str = DEVICE_OPT,
    dtype: ScoreDtype = DTYPE_OPT,
    quiet: bool = QUIET_OPT,
    fmt: Format = TABLE_OR_JSON_OPT,
) -> None:
    """Write a trial's recipe (and optionally the merged model, verified on a full split)."""
    import tempfile

    from evomerge.recipe import MergeRecipe

    store, view = _open(run, storage, study)
    record = _choose(view, trial, knee, lcb, weights, incumbent)
    recipe = MergeRecipe.from_yaml(record.recipe)
    # Every target is checked before anything is written: a refused export leaves no file behind.
    if out.exists() and not force:
        raise ConfigError(f"--out {out}: already exists; pass --force to overwrite it")
    if materialize is not None and materialize.exists() and not force:
        raise ConfigError(f"--materialize {materialize}: already exists; pass --force to overwrite it")
    evaluator = None
    if verify:
        from evomerge.audit import full_split_evaluator, resolve_split

        evaluator = full_split_evaluator(_suite_for(store, suite), recipe, view.objectives, device)
        split = resolve_split(evaluator.suite, split)
    result: dict[str, Any] = {
        "trial": record.number,
        "kind": record.kind,
        "label": record.label,
        "recipe": str(out),
        "estimates": {t: record.estimates.get(t) for t in view.objectives},
        **JSON_UNIT,
    }
    with tempfile.TemporaryDirectory(prefix="evomerge-verify-") as scratch:
        model_dir = materialize
        if model_dir is None and verify:
            model_dir = Path(scratch) / "model"  # --verify alone: materialize, score, discard
        if model_dir is not None:
            from evomerge.merge.io import merge_to_directory

            merge_to_directory(recipe, model_dir, force=force, progress=_show_progress(quiet))
            if materialize is not None:
                result["model"] = str(materialize)
        if evaluator is not None:
            from evomerge.audit import measure_model_dir

            result["measured"] = measure_model_dir(
                model_dir, evaluator, device=device, dtype=dtype.value, split=split
            )
            result["split"] = split
    _write_atomic(out, recipe.to_yaml())  # last: a recipe on disk means its model was written too
    if fmt is Format.json:
        _print_json(result)
        return
    console = Console()
    console.print(f"trial #{record.number} ({record.kind} {record.label}) -> {out}", soft_wrap=True)
    if materialize is not None:
        console.print(f"merged model -> {materialize}", soft_wrap=True)
    table = Table("task", "estimate %", *(["measured %", "error (pts)"] if "measured" in result else []))
    for task in view.objectives:
        estimate = record.estimates.get(task)
        cells = [task, pct(estimate)]
        if "measured" in result:
            measured = result["measured"][task]
            cells += [pct(measured), pct(None if estimate is None else estimate - measured)]
        table.add_row(*cells)
    console.print(table)
    if "measured" in result:
        console.print(f"measured on the {result['split']} split", soft_wrap=True)


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
    import optuna_dashboard

    store, view = _open(run, storage, study)
    store.set_metric_names(view.objectives)
    study_id = store.study_id
    _check_port_free(host, port)
    typer.echo(f"optuna-dashboard for study {view.name!r}: http://{host}:{port}/dashboard/studies/{study_id}")
    optuna_dashboard.run_server(store.backend, host=host, port=port)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("front")(front)
    app.command("plot")(plot)
    app.command("audit")(audit)
    app.command("export")(export)
    app.command("dashboard")(dashboard)
