"""Optuna samplers (NSGA-II by default, TPE) driven through ask/tell on the run's own study.

NSGA-II keeps its generations and parent populations in the study (trial and study system
attributes), and its random number generator in the sampler: the optimizer is pickled with its
sampler (the study is left out), so a resumed run reopens the study with the very sampler object of
the checkpoint and asks what an uninterrupted run would have asked. The gene of index i is the
study parameter `g{i:04d}` in [0, 1]; a candidate's id is its trial number.

The relative search space is the genes themselves. Optuna's default (the intersection of the
parameters of every completed trial) is empty in a run, because the parent and baseline trials have
no genes, and NSGA-II then silently degenerates to random sampling (no crossover at all). The
parent and baseline trials are created without the sampler (`RunStore.start_trial`), so they never
join a generation either.

Duplicates: NSGA-II's child of a parent crossed with itself (or not crossed) is that parent unless
a gene mutates (each with probability 1/n), and the fitness of a genome on the same anchors is the
same number. A child whose genes equal a completed trial's is not handed out: its trial is PRUNED
at once, marked `duplicate_of`, and NSGA-II, whose populations hold completed trials only, is asked
again. A resume that asks it again prunes it again, so the genomes asked stay those of an
uninterrupted run.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState

from evomerge.errors import ConfigError
from evomerge.optimizers.base import OPTIMIZERS, Candidate, Optimizer
from evomerge.store import create_running_trial, gene_name, trial_by_number

SAMPLERS = ("nsga2", "tpe")
MAX_DUPLICATES_IN_A_ROW = 100  # then the duplicate is evaluated: the sampler proposes nothing new


class _FixedGenes:
    """A sampler mixin whose relative search space is the fixed genes (see the module docstring)."""

    def __init__(self, genes: dict[str, BaseDistribution], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._genes = dict(genes)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, BaseDistribution]:
        return dict(self._genes)

    # Optuna >= 5.1 guards the GA samplers' generation cache with a threading.Lock, which does not
    # pickle: the checkpoint leaves every lock out and the unpickled sampler gets fresh ones.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock_names"] = [name for name, value in state.items() if isinstance(value, _LOCK_TYPE)]
        for name in state["_lock_names"]:
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for name in state.pop("_lock_names", []):
            state[name] = threading.Lock()
        self.__dict__.update(state)


_LOCK_TYPE = type(threading.Lock())


class GeneNSGAIISampler(_FixedGenes, optuna.samplers.NSGAIISampler):
    """NSGA-II over the fixed genes."""


class GeneTPESampler(_FixedGenes, optuna.samplers.TPESampler):
    """Multivariate TPE over the fixed genes (the intersection would be empty; see above)."""


@OPTIMIZERS.register("optuna")
class OptunaOptimizer(Optimizer):
    owns_trials: ClassVar[bool] = True

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
        self.distributions = {gene_name(i): FloatDistribution(0.0, 1.0) for i in range(dim)}
        self._sampler = self._make_sampler()
        self.study: optuna.Study | None = None

    def _make_sampler(self) -> optuna.samplers.BaseSampler:
        if self.sampler_name == "tpe":
            return GeneTPESampler(self.distributions, seed=self.seed, multivariate=True)
        return GeneNSGAIISampler(self.distributions, population_size=self.population_size, seed=self.seed)

    def sampler(self) -> optuna.samplers.BaseSampler:
        """The one sampler object of this optimizer (its random state is part of the checkpoint)."""
        return self._sampler

    def bind(self, study: Any) -> None:
        self.study = study

    def _ensure_study(self) -> optuna.Study:
        if self.study is None:  # used on its own (no run): an in-memory study
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self.study = optuna.create_study(
                directions=["maximize"] * self.n_objectives, sampler=self._sampler
            )
        return self.study

    def ask(self) -> Candidate:
        study = self._ensure_study()
        if self._starts:  # a start point: a fixed-parameter trial, in the current generation
            study.enqueue_trial({gene_name(i): g for i, g in enumerate(self._starts.pop(0))})
        for _ in range(MAX_DUPLICATES_IN_A_ROW):
            trial = study.ask(self.distributions)
            genome = tuple(float(trial.params[gene_name(i)]) for i in range(self.dim))
            original = self._completed_with(study, trial.params)
            if original is None:
                break
            trial.set_user_attr("duplicate_of", original.number)
            study.tell(trial, state=TrialState.PRUNED)
        candidate = Candidate(trial.number, genome)
        self._pending[candidate.id] = candidate
        return candidate

    @staticmethod
    def _completed_with(study: optuna.Study, params: dict[str, float]) -> optuna.trial.FrozenTrial | None:
        """The first completed trial with exactly these genes, if any."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if trial.params == params:
                return trial
        return None

    def renew(self, candidate: Candidate) -> Candidate:
        """A new RUNNING trial with the interrupted trial's genes and generation, made without the
        sampler (its random state stays where the uninterrupted run would have it)."""
        study = self._ensure_study()
        old = trial_by_number(study, candidate.id)
        # the sampler's own record of the trial (NSGA-II's generation, a GA's parents), as it was
        system_attrs = dict(old.system_attrs)
        template = optuna.trial.FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params=dict(old.params),
            distributions=dict(old.distributions),
            user_attrs={},
            system_attrs=system_attrs,
            intermediate_values={},
            trial_id=-1,
        )
        renewed = Candidate(create_running_trial(study, template), candidate.genome)
        del self._pending[candidate.id]
        self._pending[renewed.id] = renewed
        return renewed

    def _propose(self) -> Sequence[float]:
        raise NotImplementedError("OptunaOptimizer.ask creates the study trial directly")

    def _observe(self, candidate: Candidate, values: list[float] | None) -> None:
        # The run store tells the study first (with the trial's attributes); skip_if_finished
        # makes this a no-op then, and the real tell when the optimizer is used on its own.
        study = self._ensure_study()
        if values is None:
            study.tell(candidate.id, state=TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(candidate.id, values, skip_if_finished=True)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["study"] = None  # reopened from the storage on resume (`bind`)
        return state
