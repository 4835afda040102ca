"""Opening a search: a new run (its study, optimizer and first checkpoint) or a resumed one (the run's
checkpoint, checked against the experiment), and what a session starts with (`reconcile`).

A new run's optimizer is checkpointed as soon as its study exists; a run stopped before that (its
study holds no trial yet and no checkpoint) resumes as the new run would have started. The run's
evaluation plan (fitness/selection/plan.py) is stored in its study; a resumed run scores on the stored one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError, StorageError
from evomerge.experiment import Experiment
from evomerge.fitness.selection.plan import EvaluationPlan
from evomerge.optimizers import OPTIMIZERS, Optimizer, load_checkpoint, make_optimizer, optimizer_from_bytes
from evomerge.runtime.recorder import INTERRUPTED, Checkpointer, Recorder, recipe_yaml
from evomerge.runtime.work import Job, TrialKind
from evomerge.space import SearchSpace
from evomerge.store import RUN_FILE, RunStore, TrialState, adopt_run, create_run, open_run


@dataclass
class OpenedRun:
    experiment: Experiment  # with the run's own seed when resumed
    optimizer: Optimizer
    store: RunStore
    checkpoint: Checkpointer
    messages: list[str] = field(default_factory=list)  # said to the user with the summary


def open_search(
    experiment: Experiment,
    space: SearchSpace,
    tasks: list[str],
    run_dir: Path,
    *,
    resume: bool,
    study: str | None = None,
    seed_override: int | None = None,
) -> OpenedRun:
    """Create the run in `run_dir`, or (`resume`) open it; `study`: a server's study to continue
    from a directory that holds no run yet."""
    exists = (run_dir / RUN_FILE).is_file()
    if not resume:
        fresh = new_optimizer(experiment, space, tasks)
        starts = start_points(experiment, space)  # checked before anything is written
        if exists:
            raise ConfigError(
                f"--run-dir {run_dir}: a run already exists there; add --resume to continue it, "
                "or choose another directory"
            )
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        store = create_run(
            run_dir,
            f"{experiment.name}-{stamp}",
            tasks,
            {
                "experiment": experiment.text,
                "suite_path": str(experiment.suite_path),  # audit/export find it from anywhere
                "space": space.to_yaml(),
                "seed": experiment.spec.seed,  # the effective one (--seed included)
                "optimizer": experiment.spec.optimizer.model_dump(mode="json"),
            },
            storage=experiment.spec.storage,
            sampler=fresh.sampler(),
        )
        (run_dir / "experiment.yaml").write_text(experiment.text)
        for genome in starts:
            fresh.suggest(genome)
        opened = OpenedRun(experiment, fresh, store, Checkpointer(store))
        opened.checkpoint.save(fresh)
    else:
        storage = experiment.spec.storage
        if not exists and study and storage:  # a server's study, resumed from this machine
            adopt_run(run_dir, storage, study)
        elif not exists:
            raise ConfigError(
                f"--resume: {run_dir} holds no run ({RUN_FILE} missing); drop --resume, or give "
                "--storage URL --study NAME to resume a study kept in a database server"
            )
        messages: list[str] = []
        optimizer = _resumed_optimizer(experiment, space, tasks, open_run(run_dir), messages)
        store = open_run(run_dir, sampler=optimizer.sampler())
        if store.objectives != tasks:
            raise ConfigError(
                f"--resume: the run's objectives {store.objectives} differ from the suite's tasks {tasks}"
            )
        experiment = _check_same_run(experiment, space, store, run_dir, seed_override)
        opened = OpenedRun(experiment, optimizer, store, Checkpointer(store), messages)
    opened.optimizer.bind(opened.store.study)
    return opened


def new_optimizer(experiment: Experiment, space: SearchSpace, tasks: list[str]) -> Optimizer:
    spec = experiment.spec
    settings = dict(spec.optimizer.settings)
    if spec.optimizer.name == "nevergrad":
        settings.setdefault("budget", spec.budget.trials)
        settings.setdefault("num_workers", spec.workers.count)
    return make_optimizer(spec.optimizer.name, space.dim, len(tasks), spec.seed, settings)


def _resumed_optimizer(
    experiment: Experiment, space: SearchSpace, tasks: list[str], store: RunStore, messages: list[str]
) -> Optimizer:
    name = store.study_name
    data = store.read_checkpoint() if store.checkpoint_path is None else None
    path = store.checkpoint_path
    if data is not None:  # a database server's run: the checkpoint is in the study
        return optimizer_from_bytes(data, f"in study {name!r}")
    if path is not None and path.exists():
        return load_checkpoint(path)
    if not store.trials():  # stopped while it was being created: start as the new run would have
        fresh = new_optimizer(experiment, space, tasks)
        for genome in start_points(experiment, space):
            fresh.suggest(genome)
        return fresh
    if path is None:
        raise StorageError(f"study {name!r} holds no optimizer checkpoint; it cannot resume")
    if OPTIMIZERS.get(experiment.spec.optimizer.name).owns_trials:
        # Runs made before 2026-11-24 kept no checkpoint for optuna, and their NSGA-II had an
        # empty search space (see optimizers/nsga2.py): the sampler starts again.
        messages.append(
            f"{path} is missing (a run from before optuna checkpoints): the sampler starts again "
            "(new random state; NSGA-II's generations start from the trials of this session)"
        )
        return new_optimizer(experiment, space, tasks)
    return load_checkpoint(path)  # its one-line error names the missing file


def _check_same_run(
    experiment: Experiment, space: SearchSpace, store: RunStore, run_dir: Path, seed_override: int | None
) -> Experiment:
    """A resumed run keeps the space, optimizer and seed it was started with (its workers score
    with the run's seed; a changed space would decode the checkpoint's genomes differently).
    The budget, workers and Ray settings may change between sessions. Returns the experiment
    with the run's seed."""
    stored = store.study_attrs()
    copy = run_dir / "experiment.yaml"
    if "space" in stored and stored["space"] != space.to_yaml():
        raise ConfigError(
            f"--resume: the search space {experiment.space_path} differs from the one the run "
            f"was started with; resume with that space (the run's experiment is copied in {copy})"
        )
    optimizer = experiment.spec.optimizer.model_dump(mode="json")
    if "optimizer" in stored and stored["optimizer"] != optimizer:
        raise ConfigError(
            f"--resume: optimizer {optimizer} differs from the run's {stored['optimizer']}; its state is "
            f"in the checkpoint: resume with the run's optimizer settings ({copy}), or start a new run"
        )
    if "seed" not in stored:
        return experiment
    if seed_override is not None and seed_override != stored["seed"]:
        raise ConfigError(
            f"--seed {seed_override}: the run was started with seed {stored['seed']}; "
            "drop --seed to resume it"
        )
    return experiment.with_overrides(seed=int(stored["seed"]))


def start_points(experiment: Experiment, space: SearchSpace) -> list[list[float]]:
    """The genomes of `optimizer.start` (checked before the run is created)."""
    from evomerge.recipe import MergeRecipe

    points = []
    for entry in experiment.spec.optimizer.start:
        if entry == "uniform":
            points.append(space.uniform_genome())
            continue
        if entry == "baseline":
            recipe = space.decode_recipe(space.baseline_recipe()[1])
        else:
            path = (experiment.root / entry).resolve()
            if not path.is_file():
                raise ConfigError(
                    f"optimizer.start: {entry!r} does not exist (resolved to {path}); "
                    "give 'uniform', 'baseline' or a recipe YAML path relative to the experiment"
                )
            recipe = MergeRecipe.from_yaml(path.read_text())
        genome = space.try_encode(recipe)
        if genome is None:
            raise ConfigError(
                f"optimizer.start: {entry!r} ({recipe.merge_method}) is no point of the search space "
                f"({space.method.name}): it needs the space's method, its fixed parameters and "
                "values within the searched bounds; drop it or widen the space"
            )
        points.append(genome)
    return points


def reconcile(recorder: Recorder, space: SearchSpace) -> tuple[list[Job], int, int]:
    """A session's start: FAIL the trials a stopped driver left running, re-tell or re-issue the
    optimizer's pending candidates, and start the parents and baseline not yet done.

    Returns the jobs to run first, and the counts of finished search trials (done, failed)."""
    store, optimizer = recorder.store, recorder.optimizer
    store.mark_interrupted()
    finished = store.trials([TrialState.COMPLETE, TrialState.FAIL])
    real = [t for t in finished if not str(t.user_attrs.get("fail_reason", "")).startswith(INTERRUPTED)]
    for t in real:
        if t.state == TrialState.COMPLETE:
            recorder.update_best(t.values)
    search = [t for t in real if t.user_attrs.get("kind", TrialKind.SEARCH) == TrialKind.SEARCH]
    by_candidate = {t.user_attrs["candidate"]: t for t in search if "candidate" in t.user_attrs}
    jobs: list[Job] = []
    labels = {(t.user_attrs.get("kind"), t.user_attrs.get("label")) for t in real}
    for label, recipe in space.parent_recipes():
        if (TrialKind.PARENT, label) not in labels:
            jobs.append(recorder.start(TrialKind.PARENT, label, None, recipe_yaml(recipe)))
    label, recipe = space.baseline_recipe()
    if (TrialKind.BASELINE, label) not in labels:
        genome = space.try_encode(space.decode_recipe(recipe))  # None: not in the space
        jobs.append(recorder.start(TrialKind.BASELINE, label, genome, recipe_yaml(recipe)))
    reissue = []
    for candidate in optimizer.pending():
        trial = by_candidate.get(candidate.id)
        if trial is None:
            reissue.append(candidate)
        else:
            optimizer.tell(candidate.id, trial.values if trial.state == TrialState.COMPLETE else None)
    for candidate in reissue:
        jobs.append(recorder.start_candidate(optimizer.renew(candidate)))
    recorder.checkpoint()
    failed = sum(t.state == TrialState.FAIL for t in search)
    return jobs, len(search), failed


PLAN_ATTR = "evaluation_plan"  # the study attribute holding the run's EvaluationPlan


def run_plan(
    store: RunStore, experiment: Experiment, suite: Any, made: EvaluationPlan | None
) -> EvaluationPlan:
    """The run's evaluation plan: the stored one, checked against the suite, calibration and rungs
    given now; a new run's (`made`, by the driver's preflight) is stored. A run from before plans
    were stored gets one made now (on its seed, as its workers made it)."""
    from evomerge.fitness.irt.calibration import Calibration
    from evomerge.runtime.preflight import search_plan

    stored = store.read_study_attr(PLAN_ATTR)
    if stored is None:
        plan = made or search_plan(experiment, suite)
        store.write_study_attr(PLAN_ATTR, plan.model_dump(mode="json"))
        return plan
    plan = EvaluationPlan.model_validate(stored)
    path = experiment.calibration_path
    plan.check_inputs(suite, Calibration.load(path) if path else None, "--resume")
    promotion = experiment.spec.promotion
    rungs = tuple(promotion.rungs) if promotion is not None else None
    if plan.rung_spec is not None and rungs is not None and rungs != plan.rung_spec:
        raise ConfigError(
            f"--resume: the promotion rungs {list(rungs)} differ from the run's {list(plan.rung_spec)}; "
            "resume with the run's experiment (experiment.yaml in its directory)"
        )
    return plan
