"""Optuna samplers (NSGA-II by default, TPE) driven through ask/tell on the run's own study.

The sampler reads the study's trials to build each generation, so this optimizer holds no state of
its own: a resumed run reopens the study and continues from its trials. The gene of index i is the
study parameter `g{i:04d}` in [0, 1]; a candidate's id is its trial number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import optuna

from evomerge.errors import ConfigError
from evomerge.optimizers.base import OPTIMIZERS, Candidate, Optimizer

SAMPLERS = ("nsga2", "tpe")


def gene_name(index: int) -> str:
    return f"g{index:04d}"


@OPTIMIZERS.register("optuna")
class OptunaOptimizer(Optimizer):
    state_in_storage: ClassVar[bool] = True

    def __init__(
        self,
        dim: int,
        n_objectives: int,
        seed: int,
        sampler: str = "nsga2",
        population_size: int = 20,
    ) -> None:
        super().__init__(dim, n_objectives, seed)
        if sampler not in SAMPLERS:
            raise ConfigError(f"optimizer.settings.sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
        if population_size < 2:
            raise ConfigError(f"optimizer.settings.population_size: {population_size} must be at least 2")
        self.sampler_name = sampler
        self.population_size = population_size
        self.distributions = {
            gene_name(i): optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(dim)
        }
        self.study: optuna.Study | None = None
        self._trials: dict[int, optuna.Trial] = {}

    def sampler(self) -> optuna.samplers.BaseSampler:
        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed, multivariate=True)
        return optuna.samplers.NSGAIISampler(population_size=self.population_size, seed=self.seed)

    def bind(self, study: Any) -> None:
        self.study = study

    def _ensure_study(self) -> optuna.Study:
        if self.study is None:  # used on its own (no run): an in-memory study
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self.study = optuna.create_study(
                directions=["maximize"] * self.n_objectives, sampler=self.sampler()
            )
        return self.study

    def ask(self) -> Candidate:
        trial = self._ensure_study().ask(self.distributions)
        genome = tuple(float(trial.params[gene_name(i)]) for i in range(self.dim))
        candidate = Candidate(trial.number, genome)
        self._trials[trial.number] = trial
        self._pending[candidate.id] = candidate
        return candidate

    def _propose(self) -> Sequence[float]:
        raise NotImplementedError("OptunaOptimizer.ask creates the study trial directly")

    def _observe(self, candidate: Candidate, values: list[float] | None) -> None:
        # The run store tells the study first (with the trial's attributes); skip_if_finished
        # makes this a no-op then, and the real tell when the optimizer is used on its own.
        trial = self._trials.pop(candidate.id)
        if values is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            self.study.tell(trial, values, skip_if_finished=True)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("OptunaOptimizer keeps its state in the study; it is never pickled")
