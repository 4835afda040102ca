"""CMA-ES (pycma) over the unit cube; separable CMA (diagonal covariance) in high dimension.

Separable CMA-ES (Ros & Hansen, PPSN 2008) learns only the diagonal of the covariance: O(n) per
sample instead of O(n^2), and it adapts far faster when n is in the hundreds (per-layer genomes),
so it is the default above `SEPARABLE_ABOVE` genes.

Asynchrony: candidates are handed out one at a time from the current generation's samples. When a
generation's samples are all out but not yet told, extra samples are drawn from the same
distribution, so no worker waits for the slowest candidate. A generation is told to CMA as soon
as `popsize` results have arrived (completion order). A result that arrives after its own generation
was told ("late") is told with the current generation instead, in place of one of its samples, as
an injected solution: pycma repairs its Mahalanobis length before the update (`check_points`; Hansen,
"Injecting external solutions into CMA-ES", arXiv:1110.4181, 2011), so an old sample far from the
new mean cannot derail the step size. Start points (`suggest`, e.g. a known recipe) are told the
same way. Every completed evaluation is told exactly once; a late *failure* carries no information
about the new distribution and is only counted (`late_failed`).

Restarts (IPOP-CMA-ES, Auger & Hansen, CEC 2005): when pycma signals a stop after a tell
(`es.stop()`: flat fitness, step size below tolerance, stagnation, ...), CMA starts again from a
uniformly drawn mean with the first sigma and twice the population, so a search that has
converged (or stalled on equal scores) explores again instead of asking the same point. Results
of the previous run arrive as late results of the new one. The restart count and the mean's
random generator are part of the pickled state, so a resumed search restarts exactly the same.
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
            # No selective mirrors (pycma's default below popsize 6): they are injected into the
            # next generation and assume it is told whole, which asynchronous telling breaks.
            "CMA_mirrors": 0,
        }
        if popsize is not None:
            options["popsize"] = popsize
        self.es = cma.CMAEvolutionStrategy(mean.tolist(), sigma0, options)
        self._sigma0 = sigma0
        self._options = options
        self._restart_rng = np.random.default_rng(seed)
        self.restarts = 0
        self.scalarizer = Scalarizer(n_objectives, scalarization, weights)
        self._generation = 0
        self._queue: list[np.ndarray] = []  # samples of the current generation not yet handed out
        self._born: dict[int, tuple[int, np.ndarray]] = {}  # id -> (generation, sample as CMA drew it)
        # results for the next tell: (sample, values or None, late: from an older generation)
        self._results: list[tuple[np.ndarray, list[float] | None, bool]] = []
        self.injected = 0  # late results and start points, told as injected solutions
        self.late_failed = 0  # late failures, not told

    @property
    def popsize(self) -> int:
        return int(self.es.popsize)

    def _restart(self) -> None:
        """IPOP: a fresh CMA from a uniform random mean, the first sigma, twice the population."""
        self.restarts += 1
        mean = self._restart_rng.uniform(0.0, 1.0, self.dim)
        options = {
            **self._options,
            "popsize": 2 * self.popsize,
            "seed": (self._options["seed"] + self.restarts) % (2**31 - 2) + 1,
        }
        self.es = cma.CMAEvolutionStrategy(mean.tolist(), self._sigma0, options)

    def _propose(self) -> Sequence[float]:
        if not self._queue:
            self._queue = [np.asarray(x, dtype=float) for x in self.es.ask()]
        sample = self._queue.pop(0)
        self._born[self._next_id] = (self._generation, sample)
        return sample

    def _propose_start(self, start: tuple[float, ...]) -> Sequence[float]:
        # A start point is no sample of CMA: it is told as an injected solution, like a late result.
        self._born[self._next_id] = (-1, np.asarray(start, dtype=float))
        return start

    def _observe(self, candidate: Candidate, values: list[float] | None) -> None:
        generation, sample = self._born.pop(candidate.id)
        if values is not None:
            self.scalarizer.observe(values)
        late = generation != self._generation
        if late and values is None:
            self.late_failed += 1
            return
        self.injected += late
        self._results.append((sample, values, late))
        if len(self._results) >= self.popsize:
            # Real results first, so a failure's penalty ranks below every result seen so far.
            real = {i: self.scalarizer.loss(v) for i, (_, v, _) in enumerate(self._results) if v is not None}
            losses = [real[i] if i in real else self.scalarizer.loss(None) for i in range(len(self._results))]
            injected = [i for i, (_, _, was_late) in enumerate(self._results) if was_late]
            self.es.tell([x for x, _, _ in self._results], losses, check_points=injected or None)
            self._generation += 1
            self._results = []
            if self.es.stop():
                self._restart()
            # Samples of the old distribution are not handed out any more; the new generation is
            # drawn at once (pycma wants an ask between two tells, and late results may fill it).
            self._queue = [np.asarray(x, dtype=float) for x in self.es.ask()]
