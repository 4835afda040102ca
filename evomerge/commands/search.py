"""`evomerge search EXPERIMENT.yaml`: run (or resume) a search with a live progress bar."""

from __future__ import annotations

import contextlib
import functools
import logging
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from evomerge.commands.inspect import QUIET_OPT, Format, _print_json, _show_progress
from evomerge.errors import StorageError, WorkerStartError
from evomerge.runtime.interrupt import StopRequest
from evomerge.units import JSON_UNIT, pct, pct_list

RAY_LOG = "ray.log"  # in the run directory: Ray's own messages (start-up, warnings)


def route_ray_logs(log_file: Path, verbose: bool) -> None:
    """Ray's messages (its start-up notes, its token-authentication warning) go to `log_file`;
    with `verbose` they are printed on stderr too. Ray puts its own stderr handler on the "ray"
    logger when imported, and `ray.init` keeps whatever handlers that logger then has."""
    import ray  # noqa: F401  (installs Ray's handler, which is replaced here)

    logger = logging.getLogger("ray")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.addHandler(logging.FileHandler(log_file, delay=True, encoding="utf-8"))
    if verbose:
        logger.addHandler(logging.StreamHandler())


def restores_sigint(command: Callable[..., None]) -> Callable[..., None]:
    """The process's Ctrl-C handler as it was before `command`, which takes it over, ran."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        previous = signal.getsignal(signal.SIGINT)
        try:
            command(*args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, previous)

    return run


@restores_sigint
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
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help=f"Also print Ray's own messages (always kept in RUN_DIR/{RAY_LOG})."
    ),
    fmt: Format = typer.Option(
        Format.table,
        "--format",
        help="table (a summary for people) or json (the summary on stdout; accuracies as fractions).",
    ),
) -> None:
    """Search merge recipes: parents and a baseline first, then the optimizer's candidates."""
    stop = StopRequest().install()  # first: a Ctrl-C at any moment from here ends in one line, exit 130
    from evomerge.experiment import Experiment
    from evomerge.progress import progress_bar
    from evomerge.runtime.driver import SearchDriver, SearchProgress

    loaded = Experiment.load(experiment)
    run_dir = run_dir or Path("runs") / loaded.name
    console = Console(stderr=True)
    resume_cmd = shlex.join(["evomerge", "search", str(experiment), "--run-dir", str(run_dir), "--resume"])
    with progress_bar(console, disable=not _show_progress(quiet)) as bar:
        task = bar.add_task("search", total=None, info="starting workers")

        started = False

        def show(p: SearchProgress) -> None:
            nonlocal started
            info = f"{p.failed} failed, {p.running} running; best {pct_list(p.best)}"
            if not started:  # the ETA's speed is measured from here, without a resumed run's past
                bar.reset(task, completed=p.done, total=p.budget, info=info)
                started = True
            bar.update(task, completed=p.done, total=p.budget, info=info)

        try:
            stop.check()  # pressed while loading
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
                stop=stop,
            )
        except KeyboardInterrupt:
            exit_interrupted(console, experiment, run_dir, resume_cmd)
        route_ray_logs(run_dir / RAY_LOG, verbose)  # the run directory exists from here on
        try:
            # Ray prints cluster events (a node's loss) on stdout, which holds the summary alone.
            with contextlib.redirect_stdout(sys.stderr):
                summary = driver.run()
        except StorageError as error:  # the run exists; everything finished is committed
            raise StorageError(f"{error}; resume with: {resume_cmd}") from error
        except WorkerStartError as error:
            raise WorkerStartError(f"{error}; fix it, then resume with: {resume_cmd}") from error
        except KeyboardInterrupt:
            exit_interrupted(console, experiment, run_dir, resume_cmd)
    # A search that measured nothing did not succeed: exit 1 (failures), with the reason printed.
    failed_run = summary.stopped == "failures" or (summary.complete == 0 and summary.failed > 0)
    interrupted = summary.stopped == "interrupted" or stop.requested  # (even while shutting down)
    stopped_early = interrupted or summary.stopped == "time"
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
                **JSON_UNIT,
            }
        )
    else:
        print_summary(console, summary, resume_cmd if stopped_early else None)
    if interrupted:
        raise typer.Exit(130)
    if failed_run:
        if fmt is Format.table and summary.complete == 0:
            console.print("no search trial completed: the search measured nothing", highlight=False)
        raise typer.Exit(1)


def exit_interrupted(console: Console, experiment: Path, run_dir: Path, resume_cmd: str) -> NoReturn:
    """Ctrl-C that cut the search short outside its loop (whose own stop prints the summary), e.g.
    while Ray starts: one line, exit 130. The run, if created, resumes (see runtime/opening.py)."""
    from evomerge.store import RUN_FILE

    if (run_dir / RUN_FILE).is_file():
        console.print(f"interrupted; resume with: {resume_cmd}", soft_wrap=True, highlight=False)
    else:
        again = shlex.join(["evomerge", "search", str(experiment), "--run-dir", str(run_dir)])
        console.print(f"interrupted before the run was created; start it with: {again}", soft_wrap=True)
    raise typer.Exit(130)


def print_summary(console: Console, summary: Any, resume_cmd: str | None) -> None:
    """The search's summary for people: one fact a line, so an 80-column terminal never splits a
    value; paths and messages are printed whole (soft wrap) for copying."""
    console.print(
        f"[bold]{summary.study}[/]: {summary.complete} complete, {summary.failed} failed search trials"
    )
    console.print(f"stopped: {summary.stopped}; worker utilization {100 * summary.utilization:.0f}%")
    for task, value in summary.best.items():
        console.print(f"  best {task}: {pct(value)}%", highlight=False)
    console.print(f"run: {summary.run_dir}", soft_wrap=True, highlight=False)
    console.print(
        f"inspect: evomerge status {shlex.quote(str(summary.run_dir))}", soft_wrap=True, highlight=False
    )
    for message in summary.messages:
        console.print(message, soft_wrap=True, highlight=False)
    if resume_cmd:
        console.print(f"resume with: {resume_cmd}", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("search")(search)
