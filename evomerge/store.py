"""A run's storage: one Optuna study (SQLite in the run directory by default, or any URL).

The run directory holds `run.json` ({"storage": url, "study": name}), `experiment.yaml` (a copy)
and, by default, `study.db`. Trial values are the per-task estimates in `objectives` order
(maximized); every trial carries the user attributes of the run contract (recipe, genome,
in_space, estimates, intervals, answers (anchor item id -> 0/1), timings, worker, n_items,
estimator, kind, label, fail_reason), plus
`candidate`, the optimizer's id of the genome, which a resumed search uses to re-tell results.

Storage calls retry with exponential backoff when the database is briefly unavailable (locked
SQLite file, PostgreSQL restarting); after the last retry they raise StorageError, and the search
stops cleanly: every finished trial is already committed.
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
from optuna.trial import TrialState

from evomerge.atomic import write_json_atomic
from evomerge.errors import ConfigError, RunNotFoundError, StorageError

if TYPE_CHECKING:
    from evomerge.runtime.work import WorkerResult

GENE_DISTRIBUTION = optuna.distributions.FloatDistribution(0.0, 1.0)  # a gene: a unit-cube coordinate


def gene_name(index: int) -> str:
    """The Optuna param name of gene `index` (its meaning: the space's gene list, `evomerge plan`)."""
    return f"g{index:04d}"


def _backend(study: optuna.Study) -> tuple[optuna.storages.BaseStorage, int]:
    """The study's storage and id. Optuna has no public call that writes a trial's attributes by its
    number, or creates a RUNNING trial, without running the study's sampler (`optuna.Trial` does on
    construction): those go through the storage, here and nowhere else."""
    return study._storage, study._study_id


def create_running_trial(study: optuna.Study, template: optuna.trial.FrozenTrial) -> int:
    """A new trial made from `template` (RUNNING), without the study's sampler; its number."""
    storage, study_id = _backend(study)
    trial_id = retry(lambda: storage.create_new_trial(study_id, template_trial=template), "creating a trial")
    return retry(lambda: storage.get_trial_number_from_id(trial_id), "creating a trial")


def trial_by_number(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    storage, study_id = _backend(study)
    return retry(
        lambda: storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number)),
        "reading a trial",
    )


def _set_metric_names(study: optuna.Study, names: Sequence[str]) -> None:
    """Name the objectives after the tasks (the dashboard's axes read "arith", not "Objective 0")."""
    with warnings.catch_warnings():  # set_metric_names is experimental
        warnings.simplefilter("ignore")
        study.set_metric_names(list(names))


T = TypeVar("T")
RUN_FILE = "run.json"
DB_FILE = "study.db"
CHECKPOINT_FILE = "optimizer.pkl"
CHECKPOINT_ATTR = "optimizer_checkpoint"  # a database server's run keeps its checkpoint in the study
SEARCH_SECONDS = "search_seconds"  # study attribute: the search time of every session so far
RETRIES = 6  # backoff 0.5 s doubling: about 30 s of unavailability survived


def _transient_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    return (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        optuna.exceptions.StorageInternalError,
    )


def retry(call: Callable[[], T], what: str, retries: int = RETRIES, first_wait: float = 0.5) -> T:
    """Run a storage call, retrying transient failures with exponential backoff."""
    wait = first_wait
    for attempt in range(retries + 1):
        try:
            return call()
        except _transient_errors() as error:
            if attempt == retries:
                raise StorageError(
                    f"storage unavailable while {what} after {retries} retries ({type(error).__name__}: "
                    f"{str(error).splitlines()[0][:200]}); "
                    "every finished trial is saved, resume when it is back"
                ) from error
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def storage_url(run_dir: Path, storage: str | None) -> str:
    """`storage`, or the run directory's own SQLite file (found from wherever the directory is)."""
    return storage or f"sqlite:///{(run_dir / DB_FILE).resolve()}"


def check_storage_url(url: str) -> None:
    """A ConfigError naming the accepted forms when `url` is no database URL."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        parsed = None
    if parsed is None or parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"--storage {url!r} is not a storage URL evomerge can use; use sqlite:///PATH/study.db or "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or leave it out for the run's own SQLite file)"
        )


def _storage(url: str) -> optuna.storages.BaseStorage:
    # A pool that checks connections before use survives a database restart (pool_pre_ping).
    if url.startswith(
        ("postgresql://", "postgres://")
    ):  # the driver we ship (SQLAlchemy 2.1 picks psycopg 3)
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds, not minutes
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
    if url.startswith("sqlite"):
        _fast_sqlite(storage.engine)
    return storage


def _fast_sqlite(engine: Any) -> None:
    """WAL journal + synchronous=NORMAL: one fsync per checkpoint instead of one per write. A killed
    process loses nothing committed (only a power cut can drop the last transactions), and readers
    such as `evomerge status` do not block the search's writes."""
    import sqlalchemy

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened before the listener get the pragmas when reopened


@dataclass
class RunStore:
    study: optuna.Study
    objectives: list[str]
    run_dir: Path | None
    storage: str

    @property
    def study_name(self) -> str:
        return self.study.study_name

    @property
    def backend(self) -> optuna.storages.BaseStorage:
        """The study's own storage object (optuna-dashboard serves it: no second connection)."""
        return _backend(self.study)[0]

    @property
    def study_id(self) -> int:
        return _backend(self.study)[1]

    @property
    def directions(self) -> list[str]:
        return [d.name.lower() for d in self.study.directions]

    @property
    def experiment_yaml(self) -> str:
        return str(self.study.user_attrs.get("experiment", ""))

    @property
    def checkpoint_path(self) -> Path | None:
        """The optimizer checkpoint file of a run in its own SQLite file; None for a database
        server's run, whose checkpoint lives in the study (so any machine can resume it)."""
        own = self.storage.startswith("sqlite") and self.run_dir is not None
        return self.run_dir / CHECKPOINT_FILE if own else None

    def write_checkpoint(self, data: bytes) -> None:
        """The optimizer checkpoint into the study itself (base64 in a study attribute)."""
        self.write_study_attr(CHECKPOINT_ATTR, base64.b64encode(data).decode("ascii"))

    def read_checkpoint(self) -> bytes | None:
        encoded = self.read_study_attr(CHECKPOINT_ATTR)
        return None if encoded is None else base64.b64decode(encoded)

    # ----- the run's search time, over all its sessions ------------------------------------
    def search_seconds(self) -> float:
        """Seconds the run's search sessions have spent so far (`budget.minutes` counts these)."""
        return float(self.read_study_attr(SEARCH_SECONDS) or 0.0)

    def set_search_seconds(self, seconds: float) -> None:
        self.write_study_attr(SEARCH_SECONDS, round(float(seconds), 3))

    # ----- the study's attributes (the driver lease, audits, the run's settings) ----------
    def study_attrs(self) -> dict[str, Any]:
        return retry(lambda: self.study.user_attrs, "reading the study")

    def read_study_attr(self, key: str) -> Any:
        return self.study_attrs().get(key)

    def write_study_attr(self, key: str, value: Any) -> None:
        retry(lambda: self.study.set_user_attr(key, value), "writing the study")

    def set_metric_names(self, names: Sequence[str]) -> None:
        retry(lambda: _set_metric_names(self.study, names), "writing the study")

    # ----- trials --------------------------------------------------------------------------
    def start_trial(
        self,
        genome: Sequence[float] | None,
        recipe_yaml: str,
        kind: str,
        label: str = "",
        candidate: int | None = None,
        trial_number: int | None = None,
    ) -> int:
        """Create (or adopt, when an optimizer made it) a RUNNING trial with its recipe; its number.

        A trial this store creates bypasses the study's sampler: the parents and the baseline must
        not join a genetic sampler's generations nor draw from its random state. `genome` is None
        for a recipe that is no point of the search space (the parents; a baseline of another
        method): it is stored as null, with `in_space` false. A new trial is written with its
        attributes in one transaction, so a killed driver never leaves a trial without them."""
        attrs: dict[str, Any] = {
            "recipe": recipe_yaml,
            "genome": None if genome is None else [float(g) for g in genome],
            "in_space": genome is not None,
            "kind": str(kind),  # a TrialKind's value
            "label": label,
        }
        if candidate is not None:
            attrs["candidate"] = candidate
        if trial_number is not None:
            self._set_attrs(trial_number, attrs)
            return trial_number
        params, distributions = {}, {}
        if kind == "search" and genome is not None:
            # The genes as Optuna params (the names and [0, 1] cube the optuna optimizer's own
            # trials carry), so Optuna's importance, slice and parallel-coordinate views and
            # optuna-dashboard work on every run; search trials only, so no sampler sees the parents.
            params = {gene_name(i): min(1.0, max(0.0, float(g))) for i, g in enumerate(genome)}
            distributions = {name: GENE_DISTRIBUTION for name in params}
        template = optuna.trial.create_trial(
            state=TrialState.RUNNING, params=params, distributions=distributions, user_attrs=attrs
        )
        return create_running_trial(self.study, template)

    def complete_trial(self, number: int, result: WorkerResult) -> None:
        """Record a worker's result (estimates, intervals, timings, worker, ...) and COMPLETE it."""
        self._set_attrs(number, result.trial_attrs())
        values = [float(result.estimates[task]) for task in self.objectives]
        retry(lambda: self.study.tell(number, values, skip_if_finished=True), "completing a trial")

    def fail_trial(self, number: int, reason: str, extra: dict[str, Any] | None = None) -> None:
        self._set_attrs(number, {"fail_reason": reason, **(extra or {})})
        retry(
            lambda: self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True), "failing a trial"
        )

    def trials(self, states: Sequence[TrialState] | None = None) -> list[optuna.trial.FrozenTrial]:
        return retry(lambda: self.study.get_trials(deepcopy=False, states=states), "reading trials")

    def mark_interrupted(self) -> list[optuna.trial.FrozenTrial]:
        """RUNNING trials left by a killed driver become FAIL 'interrupted'; returns them as they were."""
        running = self.trials([TrialState.RUNNING])
        for trial in running:
            self.fail_trial(trial.number, "interrupted: the search driver stopped during its evaluation")
        return running

    def _set_attrs(self, number: int, attrs: dict[str, Any]) -> None:
        # Straight to the storage: an `optuna.Trial` handle would run the sampler on construction.
        storage, study_id = _backend(self.study)
        trial_id = retry(
            lambda: storage.get_trial_id_from_study_id_trial_number(study_id, number), "finding a trial"
        )
        for key, value in attrs.items():
            retry(lambda k=key, v=value: storage.set_trial_user_attr(trial_id, k, v), "writing a trial")


def create_run(
    run_dir: Path,
    study_name: str,
    objectives: list[str],
    attrs: dict[str, Any],
    storage: str | None = None,
    sampler: Any = None,
) -> RunStore:
    """A new run: the study, its attributes, `run.json`; an existing study of that name is an error."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is not None:
        check_storage_url(storage)
    made = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"--run-dir {str(run_dir)!r} cannot be created ({error.strerror}); choose another"
        ) from None
    url = storage_url(run_dir, storage)
    try:
        study = optuna.create_study(
            storage=_storage(url),
            study_name=study_name,
            sampler=sampler,
            directions=["maximize"] * len(objectives),
        )
        study.set_user_attr("objectives", list(objectives))
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        _set_metric_names(study, objectives)
    except optuna.exceptions.DuplicatedStudyError:
        _remove_new(run_dir, made)
        raise StorageError(
            f"study {study_name!r} already exists in {_redacted(url)}; resume it with --resume, or choose "
            "another --run-dir"
        ) from None
    except _transient_errors() as error:  # not there at the start: a setup error, not an outage to wait out
        _remove_new(run_dir, made)
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise StorageError(
            f"cannot reach the storage {_redacted(url)} ({type(error).__name__}: {detail}); check the URL "
            "and that the database server is running"
        ) from None
    except BaseException:
        _remove_new(run_dir, made)
        raise
    # The run's own SQLite file is recorded as null: the run directory can be moved or copied and
    # still finds (only) its own database. A given URL is kept as it is.
    write_json_atomic({"storage": storage, "study": study_name}, run_dir / RUN_FILE, indent=2)
    return RunStore(study, list(objectives), run_dir, url)


def adopt_run(run_dir: Path, storage: str, study: str) -> None:
    """A run directory on this machine for a study in a database server (resuming it from another
    machine): the study must exist; `run.json` then names it. Nothing is written when it does not."""
    check_storage_url(storage)
    open_run(storage=storage, study=study)  # RunNotFoundError / StorageError before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(json.dumps({"storage": storage, "study": study}, indent=2))


def _remove_new(run_dir: Path, made: bool) -> None:
    """Leave nothing behind of a run that could not be created."""
    import shutil

    if made:
        shutil.rmtree(run_dir, ignore_errors=True)


def _redacted(url: str) -> str:
    """The URL without its password (errors are printed and logged)."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def _run_storage(directory: Path, recorded: str | None) -> str:
    """The storage a run directory names: its own study.db when recorded as null, and also for runs
    written before runs were relocatable (an absolute sqlite URL to a study.db) when the directory
    holds its own copy, so a moved or copied run never reads another directory's database."""
    own = directory / DB_FILE
    if recorded is None or (
        recorded.startswith("sqlite:///") and recorded.endswith(f"/{DB_FILE}") and own.is_file()
    ):
        return storage_url(directory, None)
    return recorded


def open_run(
    run_dir: str | Path | None = None,
    storage: str | None = None,
    study: str | None = None,
    sampler: Any = None,
) -> RunStore:
    """Open an existing run by directory (its run.json), or by storage URL and study name."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directory = Path(run_dir) if run_dir is not None else None
    if directory is not None:
        meta_path = directory / RUN_FILE
        if not meta_path.is_file():
            raise RunNotFoundError(
                f"run directory {str(directory)!r} has no {RUN_FILE}; "
                "pass the --run-dir of an `evomerge search`"
            )
        meta = json.loads(meta_path.read_text())
        storage = storage or _run_storage(directory, meta.get("storage"))
        study = study or meta["study"]
    if storage is None or study is None:
        raise RunNotFoundError("no run given: pass a run directory, or --storage URL and --study NAME")
    try:
        loaded = retry(
            lambda: optuna.load_study(study_name=study, storage=_storage(storage), sampler=sampler),
            "opening the study",
        )
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(_storage(storage))]
        raise RunNotFoundError(
            f"study {study!r} not found in {storage}; studies there: {', '.join(names) or '(none)'}"
        ) from None
    objectives = list(
        loaded.user_attrs.get("objectives") or [f"objective_{i}" for i in range(len(loaded.directions))]
    )
    return RunStore(loaded, objectives, directory, storage)
