"""Uniform random search: the baseline every other optimizer must beat."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evomerge.optimizers.base import OPTIMIZERS, Candidate, Optimizer


@OPTIMIZERS.register("random")
class RandomSearch(Optimizer):
    def __init__(self, dim: int, n_objectives: int, seed: int) -> None:
        super().__init__(dim, n_objectives, seed)
        self._rng = np.random.default_rng(seed)

    def _propose(self) -> Sequence[float]:
        return self._rng.random(self.dim)

    def _observe(self, candidate: Candidate, values: list[float] | None) -> None:
        """Random search learns nothing."""
