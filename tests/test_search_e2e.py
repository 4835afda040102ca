"""End to end on tiny models and the quickstart bank, with a real local Ray (one session here):
parents and baseline first, every trial stored per the run contract, resume continues exactly."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import yaml
from optuna.trial import TrialState
from searchfixture import write_experiment

from evomerge.experiment import Experiment
from evomerge.runtime.driver import SearchDriver
from evomerge.space import SearchSpace
from evomerge.store import open_run


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def search_trials(store):
    return [t for t in store.trials() if t.user_attrs["kind"] == "search"]


def test_search_then_resume_on_local_ray(local_ray, tmp_path, tiny_family) -> None:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=4)
    run_dir = tmp_path / "run"
    seen = []
    summary = SearchDriver(Experiment.load(path), run_dir, on_progress=seen.append).run()
    assert summary.stopped == "budget" and summary.complete == 4 and summary.failed == 0
    assert seen and seen[-1].done == 4

    store = open_run(run_dir)
    assert store.objectives == ["arithmetic", "dates"]
    assert yaml.safe_load(store.study.user_attrs["space"])["method"] == "ties"
    trials = store.trials()
    kinds = [t.user_attrs["kind"] for t in trials]
    assert kinds[:3] == ["parent", "parent", "baseline"] and kinds.count("search") == 4
    assert [t.user_attrs["label"] for t in trials[:3]] == ["parent_0", "parent_1", "task_arithmetic"]
    space = SearchSpace.load(tmp_path / "exp" / "space.yaml")
    for t in trials:
        assert t.state == TrialState.COMPLETE
        a = t.user_attrs
        assert t.values == [a["estimates"]["arithmetic"], a["estimates"]["dates"]]
        assert set(a["intervals"]) == {"arithmetic", "dates"} and a["n_items"] == 16
        assert len(a["answers"]) == 16 and set(a["answers"].values()) <= {0, 1}  # the anchors used
        assert a["estimator"] == "mean" and a["worker"].startswith("worker-")
        assert a["timings"]["total"] > 0
        if a["kind"] == "search":
            genome = np.array(a["genome"])
            assert genome.shape == (space.dim,) and genome.min() >= 0 and genome.max() <= 1
            assert a["recipe"] == space.decode(genome).to_yaml()  # the trial's recipe is its genome's

    # Resume with a larger budget: parents/baseline are not redone, the optimizer continues.
    summary = SearchDriver(Experiment.load(path), run_dir, resume=True, max_trials=9).run()
    assert summary.complete == 9
    trials = open_run(run_dir).trials()
    assert [t.user_attrs["kind"] for t in trials].count("parent") == 2
    candidates = [t.user_attrs["candidate"] for t in trials if t.user_attrs["kind"] == "search"]
    assert candidates == list(range(9))  # no candidate repeated or lost
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_optuna_nsga2_runs_on_the_study_itself(local_ray, tmp_path, tiny_family) -> None:
    optimizer = {"name": "optuna", "settings": {"population_size": 4}}
    path = write_experiment(tmp_path / "exp", tiny_family, trials=5, optimizer=optimizer)
    summary = SearchDriver(Experiment.load(path), tmp_path / "run").run()
    assert summary.complete == 5
    store = open_run(tmp_path / "run")
    for t in search_trials(store):
        genes = [t.params[f"g{i:04d}"] for i in range(len(t.params))]
        assert genes == t.user_attrs["genome"] and t.user_attrs["candidate"] == t.number


def test_promotion_on_local_ray_rescores_on_real_workers(local_ray, tmp_path, tiny_family) -> None:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=8)
    spec = yaml.safe_load(path.read_text())
    spec["promotion"] = {"rungs": [8, 24], "eta": 2, "share": 0.6}
    path.write_text(yaml.safe_dump(spec))
    summary = SearchDriver(Experiment.load(path), tmp_path / "run").run()
    assert summary.stopped == "budget" and summary.complete == 8
    assert any(m.startswith("promotion: ") for m in summary.messages)
    store = open_run(tmp_path / "run")
    attrs = store.study_attrs()
    promoted = {k: v for k, v in attrs.items() if k.startswith("rungs.")}
    assert promoted, summary.messages
    for rungs in promoted.values():
        for rung, data in rungs.items():
            assert {t: len(bits) for t, bits in data["answers"].items()} == {
                "arithmetic": [8, 24][int(rung) - 1],
                "dates": [8, 24][int(rung) - 1],
            }
    scored = sum(t.user_attrs["n_items"] for t in store.trials() if t.state == TrialState.COMPLETE)
    assert summary.items > scored  # the promotions' items count too
