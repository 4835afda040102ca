"""`evomerge search EXPERIMENT.yaml`: run (or resume) a search with a live progress bar."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.console import Console

from evomerge.commands.inspect import QUIET_OPT, Format, _check_format, _print_json, _show_progress
from evomerge.errors import StorageError, WorkerStartError


def search(
    experiment: Path = typer.Argument(..., help="Experiment YAML (see experiments/)."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory (default runs/<experiment name>)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --run-dir exactly where it stopped."
    ),
    storage: str | None = typer.Option(None, "--storage", help="Optuna storage URL (e.g. postgresql://...)."),
    study: str | None = typer.Option(
        None, "--study", help="With --storage and --resume: continue this study (from any machine)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Join a running Ray cluster (or set RAY_ADDRESS); default: a local Ray."
    ),
    max_trials: int | None = typer.Option(
        None, "--max-trials", min=1, help="Search-trial budget (overrides)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed (overrides the experiment's)."),
    quiet: bool = QUIET_OPT,
    fmt: Format = typer.Option(
        Format.table, "--format", help="table (a summary for people) or json (the summary on stdout)."
    ),
) -> None:
    """Search merge recipes: parents and a baseline first, then the optimizer's candidates."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from evomerge.experiment import Experiment
    from evomerge.runtime.driver import SearchDriver, SearchProgress

    _check_format(fmt, (Format.table, Format.json))
    loaded = Experiment.load(experiment)
    run_dir = run_dir or Path("runs") / loaded.name
    console = Console(stderr=True)
    resume_cmd = shlex.join(["evomerge", "search", str(experiment), "--run-dir", str(run_dir), "--resume"])
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not _show_progress(quiet),
    ) as bar:
        task = bar.add_task("search", total=None, info="starting workers")

        started = False

        def show(p: SearchProgress) -> None:
            nonlocal started
            best = " ".join(f"{t}={v:.3f}" for t, v in p.best.items()) or "-"
            info = f"failed {p.failed} | running {p.running} | best {best}"
            if not started:  # the ETA's speed is measured from here, without a resumed run's past
                bar.reset(task, completed=p.done, total=p.budget, info=info)
                started = True
            bar.update(task, completed=p.done, total=p.budget, info=info)

        driver = SearchDriver(
            loaded,
            run_dir,
            resume=resume,
            storage=storage,
            ray_address=ray_address,
            max_trials=max_trials,
            seed=seed,
            on_progress=show,
            study=study,
        )
        try:
            summary = driver.run()
        except StorageError as error:  # the run exists; everything finished is committed
            raise StorageError(f"{error}; resume with: {resume_cmd}") from error
        except WorkerStartError as error:
            raise WorkerStartError(f"{error}; fix it, then resume with: {resume_cmd}") from error
    # A search that measured nothing did not succeed: exit 1 (failures), with the reason printed.
    failed_run = summary.stopped == "failures" or (summary.complete == 0 and summary.failed > 0)
    stopped_early = summary.stopped in ("interrupted", "time")
    if fmt is Format.json:
        _print_json(
            {
                "run_dir": str(run_dir),
                "study": summary.study,
                "storage": summary.storage,
                "complete": summary.complete,
                "failed": summary.failed,
                "best": summary.best,
                "stopped": summary.stopped,
                "utilization": summary.utilization,
                "retries": summary.retries,
                "search_seconds": summary.search_seconds,
                "messages": summary.messages,
                "resume": resume_cmd if stopped_early else None,
            }
        )
        if summary.stopped == "interrupted":
            raise typer.Exit(130)
        if failed_run:
            raise typer.Exit(1)
        return
    console.print(
        f"[bold]{summary.study}[/]: {summary.complete} complete, {summary.failed} failed search trials; "
        f"stopped: {summary.stopped}; worker utilization {100 * summary.utilization:.0f}%"
    )
    for t, v in summary.best.items():
        console.print(f"  best {t}: {v:.3f}")
    console.print(f"run: {run_dir}  (inspect: evomerge status {shlex.quote(str(run_dir))})")
    for message in summary.messages:
        console.print(message, soft_wrap=True, highlight=False)
    if stopped_early:
        console.print(f"resume with: {resume_cmd}", soft_wrap=True, highlight=False)
        if summary.stopped == "interrupted":
            raise typer.Exit(130)
    if failed_run:
        if summary.complete == 0:
            console.print("no search trial completed: the search measured nothing", highlight=False)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("search")(search)
