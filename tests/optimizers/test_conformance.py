"""Every registered optimizer, run asynchronously on a cheap analytic two-task problem, beats random
search at equal budget (seeded), and survives failures and a pickle round trip."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

from evomerge import pareto
from evomerge.errors import ConfigError
from evomerge.optimizers import OPTIMIZERS, Optimizer, make_optimizer

DIM, BUDGET, WORKERS = 12, 240, 4
SETTINGS = {
    "cma": {},
    "optuna": {"population_size": 24},
    "nevergrad": {"method": "DE", "budget": BUDGET, "num_workers": WORKERS},
}


def tasks(x: np.ndarray) -> list[float]:
    """Two conflicting 'accuracies' in [0, 1]: closeness to two optima of a shifted sphere."""
    a, b = np.full(DIM, 0.2), np.linspace(0.3, 0.9, DIM)
    return [float(1 - np.mean((x - a) ** 2)), float(1 - np.mean((x - b) ** 2))]


def run(optimizer: Optimizer, fail_every: int = 0) -> np.ndarray:
    """`WORKERS` asks outstanding at a time, told out of order (as an asynchronous pool does)."""
    rng = np.random.default_rng(1)
    outstanding, seen = [], []
    for step in range(BUDGET):
        while len(outstanding) < WORKERS:
            outstanding.append(optimizer.ask())
        done = outstanding.pop(int(rng.integers(len(outstanding))))
        if fail_every and step % fail_every == 0:
            optimizer.tell(done.id, None)
            continue
        values = tasks(np.array(done.genome))
        seen.append(values)
        optimizer.tell(done.id, values)
    return np.array(seen)


def hypervolume(values: np.ndarray) -> float:
    return pareto.hypervolume(pareto.to_minimize(values, ["maximize"] * 2), [0.0, 0.0])


def make(name: str, seed: int = 0) -> Optimizer:
    return make_optimizer(name, DIM, 2, seed, dict(SETTINGS.get(name, {})))


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS.names() if n != "random"])
def test_beats_random_at_equal_budget(name: str) -> None:
    random_hv = hypervolume(run(make("random")))
    found = run(make(name))
    assert len(found) == BUDGET
    assert np.all((np.array([c for c in found.ravel()]) >= 0) & (found.ravel() <= 1))
    assert hypervolume(found) > random_hv, f"{name}: {hypervolume(found):.4f} <= random {random_hv:.4f}"
    # and its best equal-weight result beats random's best
    assert found.mean(axis=1).max() > run(make("random")).mean(axis=1).max()


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_genomes_stay_in_the_unit_cube_and_failures_do_not_stop_it(name: str) -> None:
    optimizer = make(name)
    found = run(optimizer, fail_every=5)
    assert len(found) == BUDGET - BUDGET // 5
    for _ in range(20):
        genome = np.array(optimizer.ask().genome)
        assert genome.shape == (DIM,) and genome.min() >= 0.0 and genome.max() <= 1.0


def on_disk_study(optimizer: Optimizer, db: Path) -> None:
    """An optimizer that owns its trials works on a study in `db` (as in a run)."""
    study = optuna.create_study(
        storage=f"sqlite:///{db}", directions=["maximize"] * 2, sampler=optimizer.sampler()
    )
    optimizer.bind(study)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_pickled_optimizer_continues_exactly(name: str, tmp_path: Path) -> None:
    """A checkpoint taken mid-run, reloaded, asks the same genomes the original asks next (an
    optimizer on the run's study reopens a copy of the study as it was at the checkpoint)."""
    optimizer = make(name, seed=3)
    if optimizer.owns_trials:
        on_disk_study(optimizer, tmp_path / "run.db")
    run_partial = [optimizer.ask() for _ in range(30)]
    for c in run_partial[:25]:
        optimizer.tell(c.id, tasks(np.array(c.genome)))
    clone = pickle.loads(pickle.dumps(optimizer))
    if optimizer.owns_trials:
        shutil.copy(tmp_path / "run.db", tmp_path / "copy.db")
        study = optuna.load_study(
            study_name=optimizer.study.study_name, storage=f"sqlite:///{tmp_path / 'copy.db'}",
            sampler=clone.sampler(),
        )  # fmt: skip
        clone.bind(study)
    assert [c.id for c in clone.pending()] == [c.id for c in run_partial[25:]]
    for c in run_partial[25:]:
        optimizer.tell(c.id, tasks(np.array(c.genome)))
        clone.tell(c.id, tasks(np.array(c.genome)))
    assert [optimizer.ask().genome for _ in range(15)] == [clone.ask().genome for _ in range(15)]


def test_tell_rejects_unknown_ids_and_bad_values() -> None:
    optimizer = make("cma")
    c = optimizer.ask()
    with pytest.raises(ValueError, match="expected 2 finite"):
        optimizer.tell(c.id, [0.5, float("nan")])
    optimizer.tell(c.id, [0.5, 0.5])
    with pytest.raises(ValueError, match="already told"):
        optimizer.tell(c.id, [0.5, 0.5])


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_start_points_are_asked_first_and_learned_from(name: str) -> None:
    optimizer = make(name, seed=2)
    starts = [tuple(float(x) for x in np.linspace(0.1, 0.9, DIM)), (0.25,) * DIM]
    for point in starts:
        optimizer.suggest(point)
    asked = [optimizer.ask() for _ in range(3)]
    assert [c.genome for c in asked[:2]] == starts and asked[2].genome not in starts
    for c in asked:
        optimizer.tell(c.id, tasks(np.array(c.genome)))
    if name == "cma":
        assert optimizer.injected == 2 and len(optimizer._results) == 3  # told with its first generation
    found = run(optimizer)  # and it goes on as usual
    assert len(found) == BUDGET
    with pytest.raises(ConfigError, match="needs 12 genes in"):
        optimizer.suggest([0.5, 1.5])
