"""IRT commands: `evomerge irt fit|anchors|estimate` for your own response data, and `evomerge calibrate`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import typer

from evomerge.commands.inspect import QUIET_OPT, ScoreDtype, _show_progress
from evomerge.errors import ConfigError, EvomergeError

irt_app = typer.Typer(
    help="Fit IRT models, pick anchors, estimate accuracy from anchor answers.", no_args_is_help=True
)


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--dims {text!r}: give comma-separated integers, e.g. 1,2,3,5") from None
    if not dims or min(dims) < 1:
        raise ConfigError(f"--dims {text!r}: every dimension must be >= 1")
    return dims


@irt_app.command("fit")
def fit(
    responses: Path = typer.Argument(
        ..., help="CSV: column `subject`, then one column per item id (0/1/empty)."
    ),
    out: Path = typer.Option(..., "--out", help="Calibration file to write (JSON)."),
    items: Path | None = typer.Option(None, "--items", help="Bank JSONL mapping item ids to tasks."),
    dims: str = typer.Option(
        "1,2,3,5", "--dims", help="IRT dimensions to choose from (held-out likelihood)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split that chooses the IRT dimension."),
) -> None:
    """Fit a (multidimensional) 2PL model to a response matrix."""
    from evomerge.fitness.banks.items import file_sha256, load_bank
    from evomerge.fitness.irt.calibration import fit_calibration, read_responses_csv

    subjects, item_ids, matrix = read_responses_csv(responses)
    if items is None:
        tasks, groups, hashes = {"all": item_ids}, {}, {}
    else:
        bank = {item.id: item for item in load_bank(items)}
        unknown = [i for i in item_ids if i not in bank]
        if unknown:
            raise ConfigError(
                f"{responses} does not match bank {items}: {len(unknown)} item column(s) are not in the bank "
                f"(e.g. {unknown[0]!r}); give the bank the responses were collected on"
            )
        tasks = {}
        for item_id in item_ids:
            tasks.setdefault(bank[item_id].task, []).append(item_id)
        groups = {i: bank[i].group or "" for i in item_ids}
        hashes = {items.name: file_sha256(items)}
    calibration = fit_calibration(
        matrix,
        item_ids,
        tasks,
        [{"name": s} for s in subjects],
        dims=_dims(dims),
        groups=groups,
        bank_hashes=hashes,
        seed=seed,
    )
    calibration.save(out)
    typer.echo(
        f"{out}: {len(subjects)} subjects x {len(item_ids)} items, tasks {list(tasks)}, "
        f"IRT dimension {calibration.irt.dim}"
    )


@irt_app.command("anchors")
def anchors(
    calib: Path = typer.Argument(..., help="Calibration file (evomerge irt fit / evomerge calibrate)."),
    n: int = typer.Option(..., "-n", "--n", help="Anchors per task."),
    out: Path = typer.Option(..., "--out", help="Anchors file to write (JSON)."),
    method: str = typer.Option("irt", "--method", help="irt | responses (k-means) or random (stratified)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the clustering (or of the random draw)."),
) -> None:
    """Select n anchor items per task, with weights."""
    from evomerge.fitness.irt.anchors import cluster_anchors
    from evomerge.fitness.irt.calibration import Calibration

    chosen = cluster_anchors(Calibration.load(calib), n, method, seed)
    chosen.save(out)
    typer.echo(f"{out}: {n} anchors per task ({method}) for tasks {list(chosen.ids)}")


@irt_app.command("estimate")
def estimate(
    calib: Path = typer.Argument(..., help="Calibration file."),
    anchors_path: Path = typer.Argument(..., metavar="ANCHORS", help="Anchors file (evomerge irt anchors)."),
    responses: Path = typer.Option(
        ..., "--responses", help="CSV of the subjects' answers (subject, item ids...)."
    ),
    estimator: str = typer.Option(
        "auto",
        "--estimator",
        help="auto (the lowest leave-subjects-out error on the calibration at these anchors: mean, pirt or "
        "gpirt), mean, anchor, pirt, gpirt, mpirt, gmpirt.",
    ),
    parent: list[str] = typer.Option([], "--parent", help="Calibration subject that is a parent (mp-IRT)."),
) -> None:
    """Print JSON: per subject and task, estimate, interval (low, high), anchors_answered, estimator.

    Accuracies are fractions in [0, 1], as in every JSON evomerge writes.
    """
    import numpy as np

    from evomerge.fitness.irt.anchors import AnchorSet
    from evomerge.fitness.irt.calibration import Calibration, read_responses_csv
    from evomerge.fitness.irt.estimators import ESTIMATORS, EstimationContext, interval
    from evomerge.fitness.irt.fidelity import choose_estimator

    calibration = Calibration.load(calib)
    chosen = AnchorSet.load(anchors_path, calibration)
    if estimator == "auto":
        counts = {task: len(ids) for task, ids in chosen.ids.items()}
        estimator = choose_estimator(calibration, counts, chosen.seed).estimator
    estimate_fn = ESTIMATORS.get(estimator)
    subjects, item_ids, matrix = read_responses_csv(responses)
    unknown = [i for i in item_ids if i not in calibration.item_index]
    if unknown:
        raise ConfigError(
            f"{responses} does not match calibration {calib}: item(s) {unknown[:3]} are not calibrated"
        )
    thetas = np.array([calibration.theta_of(p) for p in parent]) if parent else None
    context = EstimationContext(calibration.tasks, chosen, calibration.irt, calibration.item_index, thetas)
    anchor_set = {i for ids in chosen.ids.values() for i in ids}
    output = {}
    for subject, row in zip(subjects, matrix, strict=True):
        answers = {
            i: int(v) for i, v in zip(item_ids, row, strict=True) if i in anchor_set and not np.isnan(v)
        }
        try:
            values = estimate_fn(context, answers)
        except EvomergeError as error:
            raise type(error)(f"subject {subject!r}: {error}") from None
        output[subject] = {
            task: {
                "estimate": value,
                "interval": list(interval(value, sum(i in answers for i in chosen.ids[task]))),
                "anchors_answered": sum(i in answers for i in chosen.ids[task]),
                "estimator": estimator,
            }
            for task, value in values.items()
        }
    typer.echo(json.dumps(output, indent=2))


def calibrate(
    ctx: typer.Context,
    suite: Path = typer.Argument(..., help="Fitness suite YAML (e.g. fitness/skills.yaml)."),
    subjects: list[Path] = typer.Option(
        ..., "--subjects", help="Model directories (base, parents, variants...)."
    ),
    out: Path = typer.Option(..., "--out", help="Calibration file to write (JSON)."),
    device: str = typer.Option("cpu", "--device", help="torch device the subjects are scored on, e.g. cuda."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Items scored per forward pass."),
    dims: str = typer.Option("1,2,3,5", "--dims", help="IRT dimensions to choose from."),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the --merges sample and of the split that chooses the IRT dimension."
    ),
    space: Path | None = typer.Option(
        None, "--space", help="Search space YAML the --merges are sampled from (its base and parents)."
    ),
    merges: int = typer.Option(
        0, "--merges", help="Also score N space-filling merges of --space (in memory, not saved)."
    ),
    dtype: ScoreDtype = typer.Option(
        ScoreDtype.float32,
        "--dtype",
        metavar="DTYPE",
        help="float32, bfloat16 or float16: dtype of the scoring.",
    ),
    answers: Path | None = typer.Option(
        None,
        "--answers",
        help="Directory keeping each subject's answers as it is scored, so a stopped or extended "
        "calibration scores only what is missing (default: the --out path with suffix .answers).",
    ),
    quiet: bool = QUIET_OPT,
) -> None:
    """Score every subject on the suite's full eval split, fit IRT, write the calibration."""
    from evomerge.fitness.banks.suite import FitnessSuite
    from evomerge.fitness.population import calibrate_suite
    from evomerge.fitness.scoring.answer_cache import AnswerCache
    from evomerge.progress import progress_bar
    from evomerge.space import SearchSpace

    if merges < 0:
        raise ConfigError(f"--merges {merges}: give a count >= 0")

    # `--subjects A B C`: the directories after the first arrive as extra arguments.
    all_subjects = [*subjects, *(Path(arg) for arg in ctx.args)]
    missing = [str(s) for s in all_subjects if not s.is_dir()]
    if missing:
        raise ConfigError(f"--subjects: {missing} are not directories; give Hugging Face model directories")
    total = len(all_subjects) + (merges if space is not None else 0)
    with progress_bar(disable=not _show_progress(quiet)) as bar:
        task = bar.add_task("calibrate", total=total, info="")
        done = itertools.count()

        def started(message: str) -> None:  # said as each subject starts: the ones before it are done
            bar.update(task, completed=next(done), info=message)
            if bar.disable and not quiet:  # no terminal (a log): the message as a line
                typer.echo(message, err=True)

        calibration = calibrate_suite(
            FitnessSuite.load(suite),
            all_subjects,
            device=device,
            batch_size=batch_size,
            dims=_dims(dims),
            seed=seed,
            progress=started,
            space=SearchSpace.load(space) if space is not None else None,
            merges=merges,
            dtype=dtype.value,
            answers=AnswerCache(answers or out.with_suffix(".answers")),
        )
        bar.update(task, completed=total, info="IRT fitted")
    calibration.save(out)
    typer.echo(
        f"{out}: {len(calibration.subjects)} subjects x {len(calibration.item_ids)} items, "
        f"IRT dimension {calibration.irt.dim}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(irt_app, name="irt")
    app.command("calibrate", context_settings={"allow_extra_args": True})(calibrate)
