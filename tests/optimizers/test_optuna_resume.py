"""The optuna optimizer owns its study's trials: trials it created after the last checkpoint are
failed on resume, and the restored optimizer (sampler state included) asks their points again."""

from __future__ import annotations

import pickle

import numpy as np
import optuna
from optuna.trial import TrialState

from evomerge.optimizers import make_optimizer


def values(genome) -> list[float]:
    x = np.array(genome)
    return [float(1 - np.mean((x - 0.2) ** 2)), float(1 - np.mean((x - 0.8) ** 2))]


def test_trials_created_after_the_checkpoint_are_asked_again(tmp_path) -> None:
    optimizer = make_optimizer("optuna", 6, 2, 4, {"population_size": 4})
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'run.db'}", directions=["maximize"] * 2, sampler=optimizer.sampler()
    )
    optimizer.bind(study)
    for _ in range(10):
        c = optimizer.ask()
        optimizer.tell(c.id, values(c.genome))
    checkpoint = pickle.dumps(optimizer)
    lost = [optimizer.ask() for _ in range(2)]  # then the driver dies: RUNNING, unknown to the checkpoint

    for trial in study.get_trials(states=[TrialState.RUNNING]):  # what resume does first
        study.tell(trial.number, state=TrialState.FAIL)
    restored = pickle.loads(checkpoint)
    restored.bind(
        optuna.load_study(study_name=study.study_name, storage=study._storage, sampler=restored.sampler())
    )
    assert restored.pending() == []
    again = [restored.ask() for _ in range(2)]
    assert [c.genome for c in again] == [c.genome for c in lost]
    assert min(c.id for c in again) > max(c.id for c in lost)  # new trials (duplicates pruned between)
