"""CMA-ES (pycma) over the unit cube; separable CMA (diagonal covariance) in high dimension.

Separable CMA-ES (Ros & Hansen, PPSN 2008) learns only the diagonal of the covariance: O(n) per
sample instead of O(n^2), and it adapts far faster when n is in the hundreds (per-layer genomes),
so it is the default above `SEPARABLE_ABOVE` genes.

Asynchrony: candidates are handed out one at a time from the current generation's samples. When a
generation's samples are all out but not yet told, extra samples are drawn from the same
distribution, so no worker waits for the slowest candidate. The generation is told to CMA as soon
as `popsize` of its candidates have results (completion order); results that arrive after their
generation was told are stale and are not told (they still count in the run's Pareto front).
"""

from __future__ import annotations

from collections.abc import Sequence

import cma
import numpy as np

from evomerge.errors import ConfigError
from evomerge.optimizers.base import OPTIMIZERS, Candidate, Optimizer, Scalarizer

SEPARABLE_ABOVE = 50


@OPTIMIZERS.register("cma")
class CMAOptimizer(Optimizer):
    def __init__(
        self,
        dim: int,
        n_objectives: int,
        seed: int,
        sigma0: float = 0.25,
        popsize: int | None = None,
        separable: bool | None = None,
        scalarization: str = "weighted",
        weights: Sequence[float] | None = None,
        x0: Sequence[float] | None = None,
    ) -> None:
        super().__init__(dim, n_objectives, seed)
        if not 0.0 < sigma0 <= 1.0:
            raise ConfigError(
                f"optimizer.settings.sigma0: {sigma0} must be in (0, 1] (the cube's width is 1)"
            )
        if popsize is not None and popsize < 2:
            raise ConfigError(f"optimizer.settings.popsize: {popsize} must be at least 2")
        mean = np.full(dim, 0.5) if x0 is None else np.clip(np.asarray(x0, dtype=float), 0.0, 1.0)
        if mean.shape != (dim,):
            raise ConfigError(f"optimizer.settings.x0: has {mean.size} numbers; the space has {dim} genes")
        self.separable = dim > SEPARABLE_ABOVE if separable is None else bool(separable)
        options = {
            "bounds": [0.0, 1.0],
            "seed": seed % (2**31 - 2) + 1,  # pycma takes seed 0 to mean "from the clock"
            "verbose": -9,
            "CMA_diagonal": self.separable,
        }
        if popsize is not None:
            options["popsize"] = popsize
        self.es = cma.CMAEvolutionStrategy(mean.tolist(), sigma0, options)
        self.scalarizer = Scalarizer(n_objectives, scalarization, weights)
        self._generation = 0
        self._queue: list[np.ndarray] = []  # samples of the current generation not yet handed out
        self._born: dict[int, tuple[int, np.ndarray]] = {}  # id -> (generation, sample as CMA drew it)
        self._results: list[tuple[np.ndarray, list[float] | None]] = []
        self.stale = 0

    @property
    def popsize(self) -> int:
        return int(self.es.popsize)

    def _propose(self) -> Sequence[float]:
        if not self._queue:
            self._queue = [np.asarray(x, dtype=float) for x in self.es.ask()]
        sample = self._queue.pop(0)
        self._born[self._next_id] = (self._generation, sample)
        return sample

    def _observe(self, candidate: Candidate, values: list[float] | None) -> None:
        generation, sample = self._born.pop(candidate.id)
        if values is not None:
            self.scalarizer.observe(values)
        if generation != self._generation:
            self.stale += 1
            return
        self._results.append((sample, values))
        if len(self._results) >= self.popsize:
            # Real results first, so a failure's penalty ranks below every result seen so far.
            real = {i: self.scalarizer.loss(v) for i, (_, v) in enumerate(self._results) if v is not None}
            losses = [real[i] if i in real else self.scalarizer.loss(None) for i in range(len(self._results))]
            self.es.tell([x for x, _ in self._results], losses)
            self._generation += 1
            self._results = []
            self._queue = []  # samples drawn from the old distribution are not handed out any more
