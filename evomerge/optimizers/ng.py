"""Nevergrad optimizers by name (NGOpt, DE, TwoPointsDE, PSO, ...), scalarized when several tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nevergrad as ng
import numpy as np

from evomerge.errors import ConfigError
from evomerge.optimizers.base import OPTIMIZERS, Candidate, Optimizer, Scalarizer


@OPTIMIZERS.register("nevergrad")
class NevergradOptimizer(Optimizer):
    def __init__(
        self,
        dim: int,
        n_objectives: int,
        seed: int,
        method: str = "DE",
        budget: int | None = None,
        num_workers: int = 1,
        scalarization: str = "weighted",
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(dim, n_objectives, seed)
        if method not in ng.optimizers.registry:
            close = [n for n in sorted(ng.optimizers.registry) if n.lower().startswith(method.lower()[:3])][
                :8
            ]
            raise ConfigError(
                f"optimizer.settings.method: {method!r} is not a nevergrad optimizer; "
                f"try NGOpt, DE, TwoPointsDE, PSO{' or ' + ', '.join(close) if close else ''}"
            )
        parametrization = ng.p.Array(shape=(dim,), lower=0.0, upper=1.0)
        parametrization.random_state = np.random.RandomState(seed)
        self.optimizer = ng.optimizers.registry[method](
            parametrization=parametrization, budget=budget, num_workers=max(1, num_workers)
        )
        self.scalarizer = Scalarizer(n_objectives, scalarization, weights)
        self._asked: dict[int, Any] = {}  # id -> nevergrad's candidate object (needed by its tell)

    def _propose(self) -> Sequence[float]:
        candidate = self.optimizer.ask()
        self._asked[self._next_id] = candidate
        return candidate.value

    def _propose_start(self, start: tuple[float, ...]) -> Sequence[float]:
        self.optimizer.suggest(np.asarray(start, dtype=float))  # nevergrad's next ask returns it
        return self._propose()

    def _observe(self, candidate: Candidate, values: list[float] | None) -> None:
        if values is not None:
            self.scalarizer.observe(values)
        self.optimizer.tell(self._asked.pop(candidate.id), self.scalarizer.loss(values))
