"""Resume continues exactly, for every optimizer: a run stopped (Ctrl-C) after k search trials and
resumed asks the very genomes an uninterrupted run of the same seed asks. The real driver, store
and checkpoints run; Ray is replaced by an in-process scheduler whose jobs end in submission order
and whose 'worker' scores a recipe analytically (no model is loaded), so a test takes seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from optuna.trial import TrialState
from searchfixture import write_experiment

import evomerge.errors
import evomerge.runtime.scheduler
from evomerge.experiment import Experiment
from evomerge.optimizers import OPTIMIZERS
from evomerge.runtime.driver import SearchDriver
from evomerge.runtime.work import WorkerResult
from evomerge.store import open_run

TASKS = ["arithmetic", "dates"]
N, K = 14, 6  # trials of the whole run; search trials done when the first session is stopped
OPTIMIZERS_SETTINGS = {
    "cma": {"popsize": 4},
    "optuna": {"population_size": 4},
    "optuna-tpe": {"sampler": "tpe"},
    "nevergrad": {"method": "DE", "budget": N, "num_workers": 2},
    "random": {},
}


def numbers(node: Any) -> list[float]:
    """Every number under a recipe's `models[].parameters` and `parameters`, in order."""
    if isinstance(node, bool):
        return []
    if isinstance(node, int | float):
        return [float(node)]
    if isinstance(node, dict):
        return [x for v in node.values() for x in numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in numbers(v)]
    return []


def score(recipe_yaml: str) -> WorkerResult:
    """A worker's result for a recipe: two conflicting analytic 'accuracies' of its coefficients."""
    recipe = yaml.safe_load(recipe_yaml)
    x = np.array(
        numbers([m.get("parameters", {}) for m in recipe["models"]]) + numbers(recipe.get("parameters"))
    )
    estimates = {
        "arithmetic": float(1 - np.mean((x - 0.3) ** 2)),
        "dates": float(1 - np.mean((x - 0.8) ** 2)),
    }
    return WorkerResult(
        ok=True,
        estimates=estimates,
        intervals={t: (v - 0.05, v + 0.05) for t, v in estimates.items()},
        timings={"merge": 0.0, "score": 0.0, "total": 0.001},
        worker="inline",
        n_items=16,
        estimator="mean",
    )


class InlineScheduler:
    """The Scheduler's interface without Ray: jobs end one at a time, oldest first."""

    def __init__(
        self, make_actor: Any, n_workers: int, evaluation_timeout: float | None = None, on_lost: Any = None
    ) -> None:
        self.n_workers = n_workers
        self._queue: list[tuple[Any, Any]] = []
        self._running: list[tuple[Any, Any]] = []
        self.busy_seconds = 0.0
        self.retries = 0

    @property
    def idle_workers(self) -> int:
        return max(0, self.n_workers - len(self._running) - len(self._queue))

    @property
    def outstanding(self) -> int:
        return len(self._running) + len(self._queue)

    def submit(self, key: Any, payload: Any) -> None:
        self._queue.append((key, payload))
        while self._queue and len(self._running) < self.n_workers:
            self._running.append(self._queue.pop(0))

    def wait(self, timeout: float | None = None) -> list[tuple[Any, WorkerResult]]:
        if not self._running:
            return []
        key, payload = self._running.pop(0)
        if self._queue:
            self._running.append(self._queue.pop(0))
        return [(key, self.evaluate(payload))]

    def evaluate(self, payload: Any) -> WorkerResult:
        return score(payload)

    def cancel_all(self) -> list[Any]:
        keys = [k for k, _ in self._running + self._queue]
        self._running, self._queue = [], []
        return keys

    def cancel_running(self) -> list[Any]:
        keys = [k for k, _ in self._running]
        self._running = []
        return keys

    def shutdown(self) -> None:
        pass


@pytest.fixture(autouse=True)
def inline_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evomerge.runtime.scheduler, "Scheduler", InlineScheduler)


def driver(path: Path, run_dir: Path, **kwargs: Any) -> SearchDriver:
    return SearchDriver(Experiment.load(path), run_dir, make_actor=lambda index: None, **kwargs)


def search_genomes(run_dir: Path) -> list[tuple[float, ...]]:
    """The genomes of the completed search trials, in the order they were asked."""
    trials = [t for t in open_run(run_dir).trials() if t.user_attrs.get("kind") == "search"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return [tuple(t.user_attrs["genome"]) for t in sorted(complete, key=lambda t: t.user_attrs["candidate"])]


def stop_after(k: int):
    def on_progress(progress: Any) -> None:
        if progress.done >= k:
            raise KeyboardInterrupt  # what Ctrl-C raises between two steps of the loop

    return on_progress


@pytest.mark.parametrize("name", [*OPTIMIZERS.names(), "optuna-tpe"])
def test_stopped_and_resumed_run_asks_what_an_uninterrupted_run_asks(tmp_path, tiny_family, name) -> None:
    optimizer = {"name": name.split("-")[0], "settings": OPTIMIZERS_SETTINGS[name]}
    path = write_experiment(tmp_path / "exp", tiny_family, trials=N, optimizer=optimizer, workers=2)
    whole = driver(path, tmp_path / "whole").run()
    assert whole.stopped == "budget" and whole.complete == N

    first = driver(path, tmp_path / "split", on_progress=stop_after(K)).run()
    assert first.stopped == "interrupted" and first.complete == K
    interrupted = [t for t in open_run(tmp_path / "split").trials() if t.state == TrialState.FAIL]
    assert len(interrupted) == 2  # both workers' candidates were cut short
    resumed = driver(path, tmp_path / "split", resume=True).run()
    assert (
        resumed.stopped == "budget" and resumed.complete == N and resumed.failed == 0
    )  # interrupted ones do not count

    expected, got = search_genomes(tmp_path / "whole"), search_genomes(tmp_path / "split")
    assert len(expected) == len(got) == N
    assert got == expected  # nothing lost, nothing repeated, the same continuation


def test_time_budget_counts_every_session_of_the_run(tmp_path, tiny_family) -> None:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=N, minutes=1.0)
    first = driver(path, tmp_path / "run", on_progress=stop_after(K)).run()
    assert first.stopped == "interrupted"
    store = open_run(tmp_path / "run")
    spent = store.search_seconds()
    assert 0 < spent < 60 and first.search_seconds == pytest.approx(spent, abs=0.01)

    store.set_search_seconds(61.0)  # as if the earlier sessions had used the whole minute
    resumed = driver(path, tmp_path / "run", resume=True).run()
    assert resumed.stopped == "time"
    assert resumed.complete == K + 2  # the two interrupted candidates ran again; nothing new was asked
    assert any("time budget of 1 min" in m and "budget.minutes" in m for m in resumed.messages)
    assert open_run(tmp_path / "run").search_seconds() >= 61.0


def test_baseline_outside_the_space_is_marked_and_inspected(tmp_path, tiny_family) -> None:
    """A TIES space: the task-arithmetic baseline (and each parent) is no point of it, so its genome
    is stored as null with `in_space` false; front, plot and export treat it as any trial."""
    import json

    from typer.testing import CliRunner

    from evomerge.cli import app

    path = write_experiment(tmp_path / "exp", tiny_family, trials=4)
    driver(path, tmp_path / "run").run()
    trials = open_run(tmp_path / "run").trials()
    by_kind = {t.user_attrs["kind"]: t for t in trials}
    for kind in ("baseline", "parent"):
        assert by_kind[kind].user_attrs["genome"] is None and by_kind[kind].user_attrs["in_space"] is False
    assert (
        by_kind["search"].user_attrs["in_space"] is True and len(by_kind["search"].user_attrs["genome"]) > 0
    )

    runner = CliRunner()
    front = runner.invoke(app, ["front", str(tmp_path / "run"), "--format", "json"])
    assert front.exit_code == 0, front.output
    rows = {r["number"]: r for r in json.loads(front.stdout)["front"]}
    assert all(
        (r["genome"] is None) == (r["kind"] != "search") for r in rows.values()
    )  # null exactly for the recipes outside the space
    baseline = by_kind["baseline"].number
    out = tmp_path / "baseline.yaml"
    export = runner.invoke(
        app, ["export", str(tmp_path / "run"), "--trial", str(baseline), "--out", str(out), "--quiet"]
    )
    assert export.exit_code == 0, export.output
    assert yaml.safe_load(out.read_text())["merge_method"] == "task_arithmetic"
    plot = runner.invoke(
        app, ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "plots"), "--trial", str(baseline)]
    )
    assert plot.exit_code == 0, plot.output


def test_nsga2_crosses_over_in_a_run(tmp_path, tiny_family, monkeypatch) -> None:
    """In a run the parent and baseline trials have no genes; NSGA-II must still breed children
    (with optuna's default search space, the intersection over trials, it never did)."""
    from evomerge.optimizers.nsga2 import GeneNSGAIISampler

    children = []
    sample_relative = GeneNSGAIISampler.sample_relative

    def spy(self, study, trial, search_space):
        params = sample_relative(self, study, trial, search_space)
        children.append(bool(params))
        return params

    monkeypatch.setattr(GeneNSGAIISampler, "sample_relative", spy)
    optimizer = {"name": "optuna", "settings": {"population_size": 4}}
    path = write_experiment(tmp_path / "exp", tiny_family, trials=N, optimizer=optimizer)
    driver(path, tmp_path / "run").run()
    assert len(children) == N  # the sampler ran for the search trials only, not parents/baseline
    # every trial after the first generation is a child; the first holds the 4 of the population
    # plus those asked while it was still being evaluated (2 workers)
    assert sum(children) >= N - 4 - 2


def test_search_cli_json_summary(tmp_path, tiny_family, monkeypatch) -> None:
    """`evomerge search --format json --quiet`: the summary a script reads, on stdout."""
    import json

    from typer.testing import CliRunner

    import evomerge.runtime.driver
    from evomerge.cli import app

    monkeypatch.setattr(evomerge.runtime.driver, "_init_ray", lambda experiment, address: False)
    monkeypatch.setattr(
        evomerge.runtime.driver, "actor_factory", lambda experiment, space, plan: lambda i: None
    )
    path = write_experiment(tmp_path / "exp", tiny_family, trials=5)
    args = ["search", str(path), "--run-dir", str(tmp_path / "run"), "--format", "json", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["complete"] == 5 and summary["stopped"] == "budget" and summary["resume"] is None
    assert set(summary["best"]) == set(TASKS) and summary["search_seconds"] > 0


def test_known_recipes_start_the_search(tmp_path, tiny_family) -> None:
    """`optimizer.start`: known recipes are the first search candidates; one that is no point of
    the space is a clear error before anything is written."""
    from evomerge.errors import ConfigError
    from evomerge.space import SearchSpace

    optimizer = {"name": "cma", "settings": {"popsize": 4}, "start": ["start.yaml"]}
    path = write_experiment(tmp_path / "exp", tiny_family, trials=5, optimizer=optimizer)
    space = SearchSpace.load(tmp_path / "exp" / "space.yaml")
    genome = [round(float(g), 6) for g in np.linspace(0.0, 1.0, space.dim)]
    (tmp_path / "exp" / "start.yaml").write_text(space.decode(genome).to_yaml())
    driver(path, tmp_path / "run").run()
    first = search_genomes(tmp_path / "run")[0]
    assert first == pytest.approx(genome, abs=1e-6)

    optimizer["start"] = ["uniform", "start.yaml"]
    path = write_experiment(tmp_path / "exp", tiny_family, trials=5, optimizer=optimizer)
    driver(path, tmp_path / "run_u").run()
    asked = search_genomes(tmp_path / "run_u")
    assert asked[0] == pytest.approx(space.uniform_genome()) and asked[1] == pytest.approx(genome, abs=1e-6)

    optimizer["start"] = ["baseline"]  # uniform task arithmetic: no point of a TIES space
    path = write_experiment(tmp_path / "exp2", tiny_family, trials=5, optimizer=optimizer)
    with pytest.raises(ConfigError, match=r"optimizer.start: 'baseline' \(task_arithmetic\) is no point"):
        driver(path, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


def test_resume_keeps_the_runs_space_optimizer_and_seed(tmp_path, tiny_family) -> None:
    from evomerge.errors import ConfigError

    path = write_experiment(tmp_path / "exp", tiny_family, trials=4)
    driver(path, tmp_path / "run", seed=7).run()
    resumed = driver(path, tmp_path / "run", resume=True, max_trials=5)  # no --seed: the run's
    assert resumed.experiment.spec.seed == 7
    with pytest.raises(ConfigError, match="--seed 3: the run was started with seed 7; drop --seed"):
        driver(path, tmp_path / "run", resume=True, seed=3)
    other = write_experiment(tmp_path / "exp", tiny_family, trials=4, optimizer={"name": "random"})
    with pytest.raises(ConfigError, match="optimizer .* differs from the run's"):
        driver(other, tmp_path / "run", resume=True)
    path = write_experiment(tmp_path / "exp", tiny_family, trials=4)
    space = yaml.safe_load((tmp_path / "exp" / "space.yaml").read_text())
    space["granularity"] = "global"
    (tmp_path / "exp" / "space.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError, match="search space .* differs from the one the run was started with"):
        driver(path, tmp_path / "run", resume=True)


def test_failed_candidates_are_fail_trials_and_the_search_goes_on(tmp_path, tiny_family, monkeypatch) -> None:
    import sys

    module = sys.modules[__name__]
    real_score, calls = module.score, []

    def sometimes_nan(recipe_yaml: str) -> WorkerResult:
        calls.append(recipe_yaml)
        if len(calls) > 3 and len(calls) % 3 == 0:  # search candidates only (parents/baseline first)
            return WorkerResult.failure("CandidateError: non-finite estimates {'dates': nan}", "w")
        return real_score(recipe_yaml)

    monkeypatch.setattr(module, "score", sometimes_nan)
    path = write_experiment(tmp_path / "exp", tiny_family, trials=9)
    summary = driver(path, tmp_path / "run").run()
    assert summary.stopped == "budget" and summary.complete + summary.failed == 9 and summary.failed == 3
    failed = [t for t in open_run(tmp_path / "run").trials() if t.state == TrialState.FAIL]
    assert len(failed) == 3 and all("non-finite" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.values is None for t in failed)


def test_storage_outage_stops_cleanly_and_resumes(tmp_path, tiny_family, monkeypatch) -> None:
    """Storage still down after the retries: the search stops with the resume command; resumed,
    it completes the budget with every candidate evaluated to completion once."""
    from typer.testing import CliRunner

    import evomerge.runtime.driver
    from evomerge.cli import app
    from evomerge.errors import StorageError
    from evomerge.store import RunStore

    monkeypatch.setattr(evomerge.runtime.driver, "_init_ray", lambda experiment, address: False)
    monkeypatch.setattr(
        evomerge.runtime.driver, "actor_factory", lambda experiment, space, plan: lambda i: None
    )
    complete_trial, written = RunStore.complete_trial, []

    def outage_after_five(self, number, result):
        if len(written) == 5:
            raise StorageError(
                "storage unavailable while completing a trial after 6 retries (OperationalError)"
            )
        written.append(number)
        complete_trial(self, number, result)

    monkeypatch.setattr(RunStore, "complete_trial", outage_after_five)
    path = write_experiment(tmp_path / "exp", tiny_family, trials=8)
    args = ["search", str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, StorageError)
    assert "resume with: evomerge search" in str(result.exception) and "--resume" in str(result.exception)

    monkeypatch.setattr(RunStore, "complete_trial", complete_trial)  # the storage is back
    result = CliRunner().invoke(app, [*args, "--resume", "--format", "json"])
    assert result.exit_code == 0, result.output
    trials = open_run(tmp_path / "run").trials()
    done = [
        t.user_attrs["candidate"]
        for t in trials
        if t.state == TrialState.COMPLETE and "candidate" in t.user_attrs
    ]
    assert sorted(done) == list(range(8))


def test_optuna_run_without_a_checkpoint_still_resumes(tmp_path, tiny_family) -> None:
    """Runs made before optuna was checkpointed: resume says the sampler starts again, and goes on."""
    optimizer = {"name": "optuna", "settings": {"population_size": 4}}
    path = write_experiment(tmp_path / "exp", tiny_family, trials=4, optimizer=optimizer)
    driver(path, tmp_path / "run").run()
    (tmp_path / "run" / "optimizer.pkl").unlink()
    summary = driver(path, tmp_path / "run", resume=True, max_trials=6).run()
    assert summary.complete == 6 and any("the sampler starts again" in m for m in summary.messages)


@pytest.mark.parametrize("name", ["cma", "random", "optuna"])
def test_genes_are_optuna_params_so_optunas_analysis_works(tmp_path, tiny_family, name) -> None:
    """Every search trial carries its genes as Optuna params (g0000.. in [0, 1]); the parents and
    the baseline carry none; optuna.importance and optuna.visualization run on the study."""
    import optuna

    optimizer = {"name": name, "settings": OPTIMIZERS_SETTINGS[name]}
    path = write_experiment(tmp_path / "exp", tiny_family, trials=8, optimizer=optimizer, workers=2)
    driver(path, tmp_path / "run").run()
    study = open_run(tmp_path / "run").study
    search = [t for t in study.trials if t.user_attrs.get("kind") == "search"]
    others = [t for t in study.trials if t.user_attrs.get("kind") != "search"]
    assert len(search) == 8 and others
    for trial in search:
        genome = trial.user_attrs["genome"]
        assert [trial.params[f"g{i:04d}"] for i in range(len(genome))] == pytest.approx(genome)
    assert all(not t.params for t in others)
    importance = optuna.importance.get_param_importances(study, target=lambda t: t.values[0])
    assert set(importance) == set(search[0].params) and abs(sum(importance.values()) - 1) < 1e-6
    optuna.visualization.plot_parallel_coordinate(study, target=lambda t: t.values[0])


@pytest.mark.postgres
@pytest.mark.parametrize("name", ["cma", "optuna"])
def test_a_database_servers_run_resumes_exactly_from_another_machine(
    tmp_path, tiny_family, postgres_url, name
):
    """The optimizer checkpoint lives in the PostgreSQL study: a run stopped on one machine resumes
    from an empty directory elsewhere (`--storage URL --study NAME --resume`), exactly."""
    optimizer = {"name": name, "settings": OPTIMIZERS_SETTINGS[name]}
    path = write_experiment(tmp_path / "exp", tiny_family, trials=N, optimizer=optimizer, workers=2)
    whole = driver(path, tmp_path / "whole").run()
    first = driver(path, tmp_path / "machine_a", storage=postgres_url, on_progress=stop_after(K)).run()
    assert first.stopped == "interrupted"
    assert not list((tmp_path / "machine_a").glob("*.pkl"))  # no checkpoint file: it is in the study
    with pytest.raises(evomerge.errors.ConfigError, match="--storage URL --study NAME"):
        driver(path, tmp_path / "machine_b", storage=postgres_url, resume=True)
    resumed = driver(path, tmp_path / "machine_b", storage=postgres_url, resume=True, study=first.study).run()
    assert resumed.stopped == "budget" and resumed.complete == N and whole.complete == N
    assert search_genomes(tmp_path / "machine_b") == search_genomes(tmp_path / "whole")
